"""Prompt-based methods through ``peft``: prefix tuning (Li & Liang 2021), prompt tuning (Lester et al. 2021)
and P-tuning (Liu et al. 2021). Each trains virtual tokens that ``peft`` prepends to every input; memlens
scores and generates only the real text tokens."""

from __future__ import annotations

from memlens.config import TuningConfig
from memlens.errors import MemlensError
from memlens.tuning.adapters import wrap


def apply_prefix(model, cfg: TuningConfig, tokenizer=None):
    """Trainable key/value prefixes in every attention layer: peft's random ones, or (``prefix_init = "text"``)
    the model's own keys and values over ``prompt_init_text`` (:func:`prefix_from_text`)."""
    from peft import PrefixTuningConfig

    pcfg = PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM")
    peft_model = wrap(model, pcfg)
    info: dict = {"virtual_tokens": cfg.virtual_tokens}
    if cfg.prefix_init == "text":
        if tokenizer is None:
            raise MemlensError("prefix_init = 'text' needs the model's tokenizer (apply_method(..., tokenizer=tok))")
        prefix_from_text(peft_model, cfg.prompt_init_text, tokenizer)
        info["init"] = "text"
    return peft_model, info


def prefix_from_text(peft_model, text: str, tokenizer) -> None:
    """Set a prefix-tuning model's prefixes to the keys and values the pre-trained model computes over
    ``text`` (its tokens after memlens's start token, cut or repeated to fill the virtual tokens): the prefixed
    model then predicts as the pre-trained one does after those tokens, rather than after random vectors.
    Every layer is checked against peft's own reading of the prefixes; a layout it cannot match is a
    :class:`MemlensError`."""
    import torch

    from memlens.tokens import encode

    n = peft_model.active_peft_config.num_virtual_tokens
    base = peft_model.get_base_model()
    ids = encode(tokenizer, [text], 10**9).ids[0]
    ids = (list(ids) * (n // len(ids) + 1))[:n]  # (n,)
    weight = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight  # (n, layers·2·heads·head_dim)
    refuse = "prefix_init = 'text' cannot set this model's prefixes ({}); use prefix_init = 'random'"
    try:
        with torch.no_grad():
            out = base(input_ids=torch.tensor([ids], device=weight.device), use_cache=True)
            kv = _layers(out.past_key_values)  # per layer: key, value (1, heads, n, head_dim)
            flat = torch.stack([t[0] for pair in kv for t in pair])  # (layers·2, heads, n, head_dim)
            flat = flat.permute(2, 0, 1, 3).reshape(n, -1)  # peft's layout: (n, layers·2·heads·head_dim)
            if flat.shape != weight.shape:
                raise MemlensError(
                    refuse.format(f"peft's are {tuple(weight.shape)}, its keys and values {tuple(flat.shape)}")
                )
            weight.copy_(flat.to(weight.dtype))
            read = _layers(peft_model.get_prompt(batch_size=1))  # as peft will use them
            same = len(read) == len(kv) and all(
                a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-3)
                for pair_a, pair_b in zip(read, kv, strict=True)
                for a, b in zip(pair_a, pair_b, strict=True)
            )
    except RuntimeError as err:  # e.g. a cache whose layers differ in length (sliding windows)
        raise MemlensError(refuse.format(str(err).splitlines()[0])) from None
    if not same:
        raise MemlensError(refuse.format("peft reads them in another layout"))


def _layers(cache) -> list:
    """``[(key, value), …]`` per layer of a transformers cache or a legacy tuple of pairs."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(pair[0], pair[1]) for pair in cache]


def apply_prompt(model, cfg: TuningConfig, tokenizer=None):
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


def apply_ptuning(model, cfg: TuningConfig, tokenizer=None):
    """Soft prompts produced by a small trainable encoder (MLP)."""
    from peft import PromptEncoderConfig

    pcfg = PromptEncoderConfig(
        num_virtual_tokens=cfg.virtual_tokens, encoder_hidden_size=cfg.encoder_hidden, task_type="CAUSAL_LM"
    )
    return wrap(model, pcfg), {"virtual_tokens": cfg.virtual_tokens, "encoder_hidden": cfg.encoder_hidden}
