"""What every peft-based method shares: wrapping a model in a peft config, with a clear error."""

from __future__ import annotations

from memlens.errors import MemlensError


def wrap(model, config):
    """``get_peft_model(model, config)``; a config the architecture cannot take is a :class:`MemlensError`."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as err:
        raise MemlensError(f"peft cannot apply {config.peft_type.value} to {type(model).__name__}: {err}") from None
