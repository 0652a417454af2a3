"""Prompt-based methods through ``peft``: prefix tuning (Li & Liang 2021), prompt tuning (Lester et al. 2021)
and P-tuning (Liu et al. 2021). Each trains virtual tokens that ``peft`` prepends to every input; memlens
scores and generates only the real text tokens."""

from __future__ import annotations

from memlens.config import TuningConfig
from memlens.errors import MemlensError
from memlens.tuning.adapters import wrap


def apply_prefix(model, cfg: TuningConfig):
    """Trainable key/value prefixes in every attention layer: peft's random ones, or (``prefix_init = "text"``)
    the model's own keys and values over ``prompt_init_text`` (:func:`prefix_from_text`)."""
    from peft import PrefixTuningConfig

    pcfg = PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM")
    peft_model = wrap(model, pcfg)
    info: dict = {"virtual_tokens": cfg.virtual_tokens}
    if cfg.prefix_init == "text":
        prefix_from_text(peft_model, cfg.prompt_init_text)
        info["init"] = "text"
    return peft_model, info


def prefix_from_text(peft_model, text: str) -> None:
    """Set a prefix-tuning model's prefixes to the keys and values the pre-trained model computes over
    ``text`` (its tokens after memlens's start token, repeated to fill the virtual tokens): the prefixed model
    then predicts like the pre-trained one after that text, rather than after random vectors. Checked against
    peft's own reading of the prefixes; a layout it cannot match is a :class:`MemlensError`."""
    import torch
    from transformers import AutoTokenizer

    from memlens.tokens import encode

    config = peft_model.active_peft_config
    n = config.num_virtual_tokens
    base = peft_model.get_base_model()
    tok = AutoTokenizer.from_pretrained(base.name_or_path, trust_remote_code=False)
    ids = encode(tok, [text], 10**9).ids[0]
    ids = (list(ids) * (n // len(ids) + 1))[:n]  # (n,)
    weight = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight  # (n, layers·2·heads·head_dim)
    with torch.no_grad():
        out = base(input_ids=torch.tensor([ids], device=weight.device), use_cache=True)
        kv = _layers(out.past_key_values)  # per layer: key, value (1, heads, n, head_dim)
        flat = torch.stack([t[0] for pair in kv for t in pair])  # (layers·2, heads, n, head_dim)
        flat = flat.permute(2, 0, 1, 3).reshape(n, -1)  # peft's layout: (n, layers·2·heads·head_dim)
        if flat.shape != weight.shape:
            raise MemlensError(
                f"prefix_init = 'text': peft's prefixes are {tuple(weight.shape)}, the model's "
                f"keys and values {tuple(flat.shape)}; use prefix_init = 'random' with this model"
            )
        weight.copy_(flat.to(weight.dtype))
        first = _layers(peft_model.get_prompt(batch_size=1))[0][0]  # layer 0's key as peft will use it
        if not torch.allclose(first.float(), kv[0][0].float(), atol=1e-3, rtol=1e-3):
            raise MemlensError(
                "prefix_init = 'text': peft reads the prefixes in another layout for this model; "
                "use prefix_init = 'random'"
            )


def _layers(cache) -> list:
    """``[(key, value), …]`` per layer of a transformers cache or a legacy tuple of pairs."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(pair[0], pair[1]) for pair in cache]


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
