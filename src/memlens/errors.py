"""The one exception type a user is meant to see."""


class MemlensError(Exception):
    """A problem with the user's input or environment.

    The CLI prints it as a single ``error: ...`` line and exits with status 2; nothing else is caught.
    """
