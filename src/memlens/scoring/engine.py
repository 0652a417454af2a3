"""The scoring pass: one batched forward pass per model gives every per-token statistic.

Texts are sorted by length and cut into batches (little padding, right-padded with EOS and masked).
Only the scored positions' logits are reduced, in chunks, to (ℓ, μ, σ); no batch×seq×vocab tensor outlives
its batch, nothing loops over tokens in Python and nothing is copied to the CPU but three floats a token.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from memlens import progress
from memlens.scoring.stats import TokenStats
from memlens.tokens import encode, ensure_pad_token, pad_batch, sorted_batches

CHUNK_TOKENS = 64  # positions reduced over the vocabulary at once: small enough to stay in cache (measured fastest)


def score_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_tokens: int = 128,
    batch_size: int = 16,
    disable_adapters: bool = False,
    desc: str = "scoring",
) -> TokenStats:
    """Score ``texts`` under ``model``; ``disable_adapters`` scores a peft model's base weights instead."""
    enc = encode(tokenizer, texts, max_tokens)
    return score_ids(
        model, enc.ids, ensure_pad_token(tokenizer), batch_size=batch_size, disable_adapters=disable_adapters, desc=desc
    )


def score_cached(
    model,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    identity: str = "",
    use_cache: bool = True,
    **kw,
) -> tuple[TokenStats, bool]:
    """:func:`score_ids` through the on-disk cache; returns ``(stats, hit)``. ``identity`` names the weights'
    origin (``LoadedModel.info["identity"]``); a fingerprint of the current parameters is added to it."""
    from memlens.scoring import cache

    if not use_cache:
        return score_ids(model, ids, pad_id, **kw), False
    dev = next(model.parameters())
    extra = f"{dev.dtype}|{dev.device.type}|adapters_off={kw.get('disable_adapters', False)}"
    key = cache.cache_key(cache.weights_fingerprint(model, identity), ids, prefix=kw.get("prefix", ()), extra=extra)
    hit = cache.load(key)
    if hit is not None:
        return hit, True
    stats = score_ids(model, ids, pad_id, **kw)
    cache.store(key, stats)
    return stats, False


def score_ids(
    model,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    batch_size: int = 16,
    disable_adapters: bool = False,
    prefix: Sequence[int] = (),
    padding_side: str = "right",
    desc: str = "scoring",
) -> TokenStats:
    """Score pre-tokenised sequences (see :func:`score_texts`).

    With ``prefix``, every sequence is scored after those tokens (e.g. ReCaLL's non-member context), yet only
    the sequence's own tokens 1..n−1 are kept, so the result lines up with the unprefixed statistics.
    ``padding_side = "left"`` pads on the left with explicit position ids (same results; for models or
    pipelines that need it); it does not combine with ``prefix``.
    """
    import contextlib

    import torch

    if padding_side not in ("right", "left") or (padding_side == "left" and prefix):
        raise ValueError(f"padding_side must be 'right' or 'left' (left without a prefix), got {padding_side!r}")
    lengths = np.array([max(len(s) - 1, 0) for s in ids], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    out = {k: np.full((len(ids), width), np.nan, dtype=np.float32) for k in ("logprob", "mu", "sigma")}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    adapters_off = model.disable_adapter() if disable_adapters else contextlib.nullcontext()
    try:
        with torch.inference_mode(), adapters_off, progress.bar(desc, int(lengths.sum()), "tokens") as bar:
            prefix_cache = _prefix_cache(model, prefix, device)
            for rows in sorted_batches(lengths, batch_size):
                if prefix_cache is not None:  # the prefix's keys/values were computed once; only the text runs
                    batch_ids, mask = pad_batch([ids[i] for i in rows], pad_id)
                    batch_ids, mask = batch_ids.to(device), mask.to(device)
                    kv = copy.deepcopy(prefix_cache)
                    kv.batch_repeat_interleave(len(rows))
                    full_mask = torch.cat([mask.new_ones(len(rows), len(prefix)), mask], dim=1)
                    logits = model(input_ids=batch_ids, attention_mask=full_mask, past_key_values=kv).logits
                    p = 0
                elif padding_side == "left":
                    batch_ids, mask = pad_batch([ids[i] for i in rows], pad_id, side="left")
                    batch_ids, mask = batch_ids.to(device), mask.to(device)
                    positions = (mask.cumsum(-1) - 1).clamp_min(0)
                    logits = model(input_ids=batch_ids, attention_mask=mask, position_ids=positions).logits
                    p = 0
                else:
                    batch_ids, mask = pad_batch([[*prefix, *ids[i]] for i in rows], pad_id)
                    batch_ids, mask = batch_ids.to(device), mask.to(device)
                    p = len(prefix)
                    # the output head runs only where a text token is predicted (not over the prefix)
                    logits = model(
                        input_ids=batch_ids, attention_mask=mask, logits_to_keep=batch_ids.shape[1] - p
                    ).logits
                valid = mask[:, p + 1 :].bool() & mask[:, p:-1].bool()  # a real token predicted from a real one
                stats = _reduce(logits[:, :-1], batch_ids[:, p + 1 :], valid)
                del logits
                cols = stats[0].shape[1]
                for key, value in zip(("logprob", "mu", "sigma"), stats, strict=True):
                    out[key][rows, :cols] = value
                bar.advance(int(lengths[rows].sum()))
    finally:
        model.train(was_training)
    return TokenStats(out["logprob"], out["mu"], out["sigma"], lengths)


def _prefix_cache(model, prefix: Sequence[int], device):
    """Keys/values of a shared prefix, computed once (``None`` when there is no prefix or the model's own
    prompt learning already uses the key/value cache, as peft's prefix tuning does)."""
    import torch

    peft_cfg = getattr(model, "active_peft_config", None)
    if not prefix or (peft_cfg is not None and peft_cfg.is_prompt_learning):
        return None
    out = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1)
    kv = out.past_key_values
    return kv if hasattr(kv, "batch_repeat_interleave") else None


def _reduce(logits, targets, valid):
    """``(ℓ, μ, σ)`` as ``(B, T)`` float32 numpy arrays, NaN where ``valid`` is False.

    Scored positions are gathered ``CHUNK_TOKENS`` at a time, so no second copy of the logits is made.
    """
    import torch

    vocab = logits.shape[-1]
    where = valid.reshape(-1).nonzero().squeeze(-1)
    flat_logits = logits.reshape(-1, vocab)
    flat_targets = targets.reshape(-1)[where]
    n = where.shape[0]
    ll, mu, sd = (torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(3))
    for s in range(0, n, CHUNK_TOKENS):
        sl = slice(s, s + CHUNK_TOKENS)
        logp = torch.log_softmax(flat_logits[where[sl]].float(), dim=-1)
        ll[sl] = logp.gather(-1, flat_targets[sl, None]).squeeze(-1)
        prob = logp.exp()
        m = (prob * logp).sum(-1)
        mu[sl] = m
        logp -= m[:, None]  # in place: (ℓ_v − μ), two-pass variance without E[l²] − μ² cancellation
        sd[sl] = (prob * logp.square_()).sum(-1).sqrt()
        del logp, prob
    # scored tokens go to the left of each output row (column j = token j+1), whichever side was padded
    aligned = torch.arange(valid.shape[1], device=valid.device) < valid.sum(1, keepdim=True)
    result = []
    for flat in (ll, mu, sd):
        full = torch.full(valid.shape, float("nan"), dtype=torch.float32, device=logits.device)
        full[aligned] = flat
        result.append(full.cpu().numpy())
    return result
