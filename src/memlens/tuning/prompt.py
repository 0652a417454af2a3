"""Prompt-based methods through ``peft``: prefix tuning (Li & Liang 2021), prompt tuning (Lester et al. 2021)
and P-tuning (Liu et al. 2021). Each trains virtual tokens that ``peft`` prepends to every input; memlens
scores and generates only the real text tokens."""

from __future__ import annotations

from memlens.config import TuningConfig
from memlens.tuning.adapters import wrap


def apply_prefix(model, cfg: TuningConfig):
    """Trainable key/value prefixes in every attention layer."""
    from peft import PrefixTuningConfig

    pcfg = PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM")
    return wrap(model, pcfg), {"virtual_tokens": cfg.virtual_tokens}


def apply_prompt(model, cfg: TuningConfig):
    """A trainable soft prompt before the input embeddings (random or initialised from a text)."""
    from peft import PromptTuningConfig, PromptTuningInit

    kw = {}
    if cfg.prompt_init == "text":
        kw = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": cfg.prompt_init_text,
            "tokenizer_name_or_path": model.name_or_path,
        }
    pcfg = PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM", **kw)
    return wrap(model, pcfg), {"virtual_tokens": cfg.virtual_tokens, "init": cfg.prompt_init}


def apply_ptuning(model, cfg: TuningConfig):
    """Soft prompts produced by a small trainable encoder (MLP)."""
    from peft import PromptEncoderConfig

    pcfg = PromptEncoderConfig(
        num_virtual_tokens=cfg.virtual_tokens, encoder_hidden_size=cfg.encoder_hidden, task_type="CAUSAL_LM"
    )
    return wrap(model, pcfg), {"virtual_tokens": cfg.virtual_tokens, "encoder_hidden": cfg.encoder_hidden}
