"""What every peft-based method shares: wrapping a model in a peft config, with a clear error."""

from __future__ import annotations

from memlens.errors import MemlensError


def wrap(model, config):
    """``get_peft_model(model, config)``; a config the architecture cannot take is a :class:`MemlensError`."""
    from peft import get_peft_model

    if getattr(model, "is_quantized", False):  # QLoRA: norms in fp32, inputs that carry gradients
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as err:
        raise MemlensError(f"peft cannot apply {config.peft_type.value} to {type(model).__name__}: {err}") from None
