"""The one exception type a user is meant to see."""


class MemlensError(Exception):
    """A problem with the user's input or environment.

    The CLI prints it as a single ``error: ...`` line and exits with status 2; nothing else is caught.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that unfinished work is cleaned up the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
