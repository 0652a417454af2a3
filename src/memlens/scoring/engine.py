"""The scoring pass: one batched forward pass per model gives every per-token statistic.

Texts are packed several to a row of the batch (position ids restart at every text, so ``transformers``
builds a block-diagonal causal mask and no text sees another): almost no compute goes to padding. Only
architectures verified to build that mask are packed (:data:`PACKABLE`; OPT and BLOOM, for one, let packed
texts attend to each other), and the first packed call of each architecture in a process is checked against
the padded path; a mismatch falls back to padding with a warning. Where a
pass cannot be packed (a shared prefix, a prompt-learning adapter, left padding) texts are sorted by length,
padded with EOS and masked. The output head runs only where a text token is predicted and, for a plain
linear head, one vocabulary slice at a time, with the softmax statistics (ℓ, μ, σ) merged across slices:
no batch×seq×vocab tensor ever exists, nothing loops over tokens in Python and nothing is copied to the CPU
but three floats a token.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from memlens import progress
from memlens.scoring.stats import TokenStats
from memlens.tokens import encode, ensure_pad_token, pad_batch, sorted_batches

CHUNK_TOKENS = 64  # positions reduced over the full vocabulary at once where the head is not sliced (cache-sized)
VOCAB_SLICE = 2048  # vocabulary entries per slice of the output head (fastest measured on a 2-core CPU)
# (positions, vocabulary entries) per tile of the sliced head: a (rows, vocab) fp32 tile of logits at a time
# (CPU: 8 MB, cache-sized; CUDA: 512 MB, large enough to keep the GPU's matmul units busy)
HEAD_TILES = {"cpu": (1024, VOCAB_SLICE), "cuda": (8192, 16384)}
PACK_WIDTH = 128  # tokens per packed row (at least the longest text)
# architectures whose attention mask restarts with the position ids (tested: packed == padded); others are padded
PACKABLE = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "phi3"}
PACK_TOLERANCE = {"float32": 1e-4, "float64": 1e-8}  # the self-check's max |Δℓ| per token (leak probe: 0 in half)
# Half precision rounds every logit (bf16: ~0.4%): two padded passes of different batch sizes already differ by
# up to 0.37 nats on a token, packed and padded by 0.0002 nats per token on average (SmolLM2, bf16, CPU, 32 PHEE
# texts: benchmarks/bf16_packing.py) and by 0.021 on the 16 shortest texts the self-check packs. There the leak
# probe stays exact and packed-vs-padded is held to this mean |Δℓ| per token, which wrong positions would exceed.
HALF_PACK_TOLERANCE = 0.1
_pack_verified: dict[tuple[str, str], bool] = {}  # (architecture class, dtype) -> packed equals padded
# architectures whose logits are exactly ``lm_head(hidden)``, so the head can be sliced; others use their own head
SLICEABLE_HEADS = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2", "gpt2"}


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
    fingerprint = cache.weights_fingerprint(model, identity)
    key = cache.cache_key(fingerprint, ids, prefix=kw.get("prefix", ()), starts=kw.get("starts"), extra=extra)
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
    starts: Sequence[int] | None = None,
    padding_side: str = "right",
    pack: bool = True,
    desc: str = "scoring",
    _check: bool = True,
) -> TokenStats:
    """Score pre-tokenised sequences (see :func:`score_texts`).

    ``starts[i]`` (default 1) is the first token of sequence ``i`` that is scored: a chat or instruction record's
    prompt is context, and only its completion (tokens ``starts[i]..n−1``) is kept.

    With ``prefix`` (which starts with its own start token, e.g. ReCaLL's non-member context), the prefix takes
    the place of each sequence's first (start) token: token 1 is predicted from the prefix's last token, and only
    the sequence's tokens 1..n−1 are kept, so the result lines up with the unprefixed statistics.
    ``padding_side = "left"`` pads on the left with explicit position ids (same results; for models or
    pipelines that need it); it does not combine with ``prefix``. ``pack = False`` pads every text to its
    batch's longest instead of packing (same results; slower); packing also needs an architecture in
    :data:`PACKABLE` that passes the self-check (:func:`packing_verified`). ``batch_size`` is in texts; packed batches
    hold about as many tokens as ``batch_size`` average texts.
    """
    import torch

    if padding_side not in ("right", "left") or (padding_side == "left" and prefix):
        raise ValueError(f"padding_side must be 'right' or 'left' (left without a prefix), got {padding_side!r}")
    if prefix:  # the prefix's last token stands in for each sequence's start token; the rest is shared context
        ids = [[prefix[-1], *s[1:]] if len(s) else [] for s in ids]
        prefix = prefix[:-1]
    starts = _starts(ids, starts)
    lengths = np.array([max(len(s) - k, 0) for s, k in zip(ids, starts, strict=True)], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    out = {k: np.full((len(ids), width), np.nan, dtype=np.float32) for k in ("logprob", "mu", "sigma")}
    device = next(model.parameters()).device
    prompt_learning = _is_prompt_learning(model)
    packed = pack and not prefix and not prompt_learning and padding_side == "right"
    packed = packed and (not _check or packing_verified(model, ids, pad_id, batch_size, starts))
    was_training = model.training
    model.eval()
    adapters_off = model.disable_adapter() if disable_adapters else contextlib.nullcontext()
    try:
        with torch.inference_mode(), adapters_off, progress.bar(desc, int(lengths.sum()), "tokens") as bar:
            prefix_cache = None if prompt_learning else _prefix_cache(model, prefix, device)
            if prefix_cache is not None:
                batches = _kv_prefix_batches(model, ids, starts, lengths, pad_id, batch_size, prefix_cache, len(prefix))
            elif padding_side == "left":
                batches = _left_padded_batches(ids, starts, lengths, pad_id, batch_size)
            elif packed:
                batches = _packed_batches(ids, starts, lengths, pad_id, batch_size)
            else:
                batches = _padded_batches(ids, starts, lengths, pad_id, batch_size, prefix)
            with _deferred_head(model) as head:
                for batch in batches:
                    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
                    hidden = model(**inputs).logits  # hidden states where the head is deferred, else logits
                    where = torch.as_tensor(batch.rows * hidden.shape[1] + batch.cols, device=device)
                    targets = torch.as_tensor(batch.targets, device=device)
                    stats = head(hidden.reshape(-1, hidden.shape[-1]), where, targets)
                    del hidden
                    for key, value in zip(("logprob", "mu", "sigma"), stats, strict=True):
                        out[key][batch.texts, batch.positions] = value.float().cpu().numpy()
                    bar.advance(len(batch.texts))
    finally:
        model.train(was_training)
    return TokenStats(out["logprob"], out["mu"], out["sigma"], lengths)


@dataclass
class _Batch:
    """One model call and where its scored tokens go.

    Token ``positions[k] + 1`` of text ``texts[k]`` is predicted by the model's output at
    ``(rows[k], cols[k])``; its id is ``targets[k]``.
    """

    inputs: dict
    texts: np.ndarray
    positions: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    targets: np.ndarray


def _starts(ids: Sequence[Sequence[int]], starts: Sequence[int] | None) -> list[int]:
    if starts is None:
        return [1] * len(ids)
    if len(starts) != len(ids) or any(k < 1 for k in starts):
        raise ValueError("starts needs one first scored position (≥ 1) per sequence")
    return [int(k) for k in starts]


def _batch(inputs: dict, placed: list[tuple[int, int, int, Sequence[int], int]]) -> _Batch:
    """A :class:`_Batch` from ``(text index, row, column of its token 0, token ids, first scored token)`` per
    text: token ``j ≥ start`` is predicted by the output at column ``col + j − 1``."""
    counts = [max(len(s) - k, 0) for *_, s, k in placed]
    steps = np.concatenate([np.arange(n) for n in counts]) if placed else np.zeros(0, np.int64)
    texts, rows, cols = (np.repeat([p[k] for p in placed], counts).astype(np.int64) for k in range(3))
    first = np.repeat([p[4] for p in placed], counts).astype(np.int64)
    targets = np.concatenate([np.asarray(s[k:], dtype=np.int64) for *_, s, k in placed]) if placed else steps
    return _Batch(inputs, texts, steps, rows, cols + first - 1 + steps, targets)


def _packed_batches(ids, starts, lengths, pad_id, batch_size) -> Iterator[_Batch]:
    """Texts packed into rows (best-fit decreasing), position ids restarting at every text; a row's unused
    tail is one more dummy 'text' of EOS tokens that nothing reads."""
    import torch

    scored = np.flatnonzero(lengths > 0)
    if not len(scored):
        return
    sizes = np.array([len(ids[i]) for i in scored], dtype=np.int64)
    width = max(PACK_WIDTH, int(sizes.max()))
    rows = best_fit(sizes, width)
    per_batch = max(1, round(batch_size * float(sizes.mean()) / width))
    for start in range(0, len(rows), per_batch):
        group = [[int(scored[i]) for i in row] for row in rows[start : start + per_batch]]
        used = max(sum(len(ids[i]) for i in row) for row in group)
        input_ids = torch.full((len(group), used), pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(group), used), dtype=torch.long)
        placed = []
        for r, row in enumerate(group):
            col = 0
            for i in row:
                n = len(ids[i])
                input_ids[r, col : col + n] = torch.as_tensor(ids[i])
                position_ids[r, col : col + n] = torch.arange(n)
                placed.append((i, r, col, ids[i], starts[i]))
                col += n
            position_ids[r, col:] = torch.arange(used - col)
        yield _batch({"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}, placed)


def best_fit(sizes: np.ndarray, width: int) -> list[list[int]]:
    """Indices of ``sizes`` grouped into bins of ``width`` (best-fit decreasing), fullest bins first."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted
    for i in np.argsort(-sizes, kind="stable"):
        size = int(sizes[i])
        k = bisect.bisect_left(free, (size, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(int(i))
        else:
            room, b = width, len(bins)
            bins.append([int(i)])
        if room - size >= 2:  # a text needs two tokens to have one scored
            bisect.insort(free, (room - size, b))
    return bins


def _padded_batches(ids, starts, lengths, pad_id, batch_size, prefix) -> Iterator[_Batch]:
    """Right-padded batches of similar length; a prefix is prepended to every row (the output head runs
    only on the text's positions, which also drops a prompt-learning adapter's virtual tokens)."""
    for rows in sorted_batches(lengths, batch_size):
        input_ids, mask = pad_batch([[*prefix, *ids[i]] for i in rows], pad_id)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "logits_to_keep": input_ids.shape[1] - len(prefix)}
        yield _batch(inputs, [(int(i), r, 0, ids[i], starts[i]) for r, i in enumerate(rows)])


def _left_padded_batches(ids, starts, lengths, pad_id, batch_size) -> Iterator[_Batch]:
    for rows in sorted_batches(lengths, batch_size):
        input_ids, mask = pad_batch([ids[i] for i in rows], pad_id, side="left")
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        w = input_ids.shape[1]
        yield _batch(inputs, [(int(i), r, w - len(ids[i]), ids[i], starts[i]) for r, i in enumerate(rows)])


def _kv_prefix_batches(model, ids, starts, lengths, pad_id, batch_size, prefix_cache, n_prefix) -> Iterator[_Batch]:
    """Right-padded batches that run after the prefix's keys/values (computed once, copied per batch)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    for rows in sorted_batches(lengths, batch_size):
        input_ids, mask = pad_batch([ids[i] for i in rows], pad_id)
        kv = copy.deepcopy(prefix_cache)
        kv.batch_repeat_interleave(len(rows))
        full_mask = torch.cat([mask.new_ones(len(rows), n_prefix), mask], dim=1)
        inputs = {"input_ids": input_ids, "attention_mask": full_mask, cache_arg: kv}
        yield _batch(inputs, [(int(i), r, 0, ids[i], starts[i]) for r, i in enumerate(rows)])


def packing_verified(
    model, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int, starts: Sequence[int] | None = None
) -> bool:
    """Whether ``model`` may score packed rows: its architecture is in :data:`PACKABLE` and, once per
    architecture and dtype in this process, two checks on the shortest texts (packed several to a row) pass:

    - no leak: the texts at odd places score identically when every token of the texts at even places is
      replaced by the next token id (same lengths, so the same layout and the same arithmetic: any difference
      means a text sees its row's other texts — exact in every precision);
    - packed equals padded within :data:`PACK_TOLERANCE` on every token, or in half precision within
      :data:`HALF_PACK_TOLERANCE` on average (rounding moves single tokens by more).

    Otherwise a warning, and the padded path. Data whose texts can never share a row are not checked (nothing
    is packed) and the verdict is not kept."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    arch = getattr(base.config, "model_type", None)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    key = (type(base).__name__, f"torch.{dtype}")
    if arch not in PACKABLE:
        return False
    if key in _pack_verified:
        return _pack_verified[key]
    starts = _starts(ids, starts)
    scored = [i for i, (s, k) in enumerate(zip(ids, starts, strict=True)) if len(s) > k]
    if len(scored) < 2:
        return True
    which = sorted(scored, key=lambda i: len(ids[i]))[:16]  # the shortest: several share a row
    width = max(PACK_WIDTH, max(len(ids[i]) for i in scored))
    if len(ids[which[0]]) + len(ids[which[1]]) > width:
        return True  # no two texts of these data fit one row: packed rows are padded rows
    sample, sample_starts = [ids[i] for i in which], [starts[i] for i in which]
    vocab = int(model.get_input_embeddings().weight.shape[0])
    probe = [s if j % 2 else [(int(t) + 1) % vocab for t in s] for j, s in enumerate(sample)]  # other tokens
    n = len(sample)

    def score(seqs, size: int, pack: bool) -> np.ndarray:  # (n, T) log-probabilities, NaN past each text
        return score_ids(model, seqs, pad_id, batch_size=size, starts=sample_starts, pack=pack, _check=False).logprob

    with progress.quiet():
        packed, padded, probed = score(sample, n, True), score(sample, n, False), score(probe, n, True)
    leak = np.abs(probed[1::2] - packed[1::2])
    diff = np.abs(packed - padded)
    problem = None
    if not (np.array_equal(np.isnan(packed), np.isnan(padded)) and np.isfinite(padded[~np.isnan(padded)]).all()):
        problem = "scores NaN or infinite tokens that padded scoring does not"
    elif np.nanmax(leak, initial=0.0) > PACK_TOLERANCE.get(dtype, 0.0):
        problem = f"lets packed texts see each other (a neighbour's tokens move a text's by {np.nanmax(leak):.2g} nats)"
    elif dtype in PACK_TOLERANCE and np.nanmax(diff) > PACK_TOLERANCE[dtype]:
        problem = f"differs from padded scoring by {np.nanmax(diff):.2g} nats on a token (> {PACK_TOLERANCE[dtype]:g})"
    elif dtype not in PACK_TOLERANCE and not float(np.nanmean(diff)) <= HALF_PACK_TOLERANCE:
        problem = f"differs from padded scoring by {np.nanmean(diff):.2g} nats per token (> {HALF_PACK_TOLERANCE:g})"
    _pack_verified[key] = problem is None
    if problem:
        progress.warn(f"packed scoring of {key[0]} {problem}: scoring it padded")
    return _pack_verified[key]


def packing_verdicts() -> dict[str, bool]:
    """The packing self-check's verdicts so far in this process, e.g. ``{"LlamaForCausalLM float32": True}``
    (True: that architecture in that dtype is scored packed; False: padded)."""
    return {f"{cls} {dtype.removeprefix('torch.')}": ok for (cls, dtype), ok in sorted(_pack_verified.items())}


def _is_prompt_learning(model) -> bool:
    peft_cfg = getattr(model, "active_peft_config", None)
    return bool(peft_cfg is not None and peft_cfg.is_prompt_learning)


def _prefix_cache(model, prefix: Sequence[int], device):
    """Keys/values of a shared prefix, computed once (``None`` when there is no prefix or the cache type
    cannot be repeated over a batch)."""
    import torch

    if not prefix:
        return None
    out = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1)
    kv = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return kv if hasattr(kv, "batch_repeat_interleave") else None


Reducer = Callable[..., tuple]


@contextlib.contextmanager
def _deferred_head(model) -> Iterator[Reducer]:
    """Yield ``reduce(outputs, where, targets) -> (ℓ, μ, σ)`` for the flattened model outputs.

    For an architecture whose logits are exactly ``lm_head(hidden)`` with a plain linear head, the head is
    bypassed during the model call (it returns hidden states) and applied here, to the scored positions
    only and one vocabulary slice at a time; otherwise the model's own logits are reduced.
    """
    import functools

    import torch

    head, cfg = model.get_output_embeddings(), model.config
    sliceable = (
        type(head) is torch.nn.Linear
        and getattr(cfg, "model_type", None) in SLICEABLE_HEADS
        and getattr(cfg, "final_logit_softcapping", None) is None
    )
    if not sliceable:
        yield _reduce_logits
        return
    own = head.__dict__.get("forward")  # e.g. an accelerate hook; restored afterwards
    head.forward = _identity
    try:
        yield functools.partial(_reduce_sliced, weight=head.weight, bias=head.bias)
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _identity(hidden):
    return hidden


def _reduce_logits(logits, where, targets):
    """``(ℓ, μ, σ)`` of the rows ``where`` of flattened logits, ``CHUNK_TOKENS`` positions at a time."""
    import torch

    n = where.shape[0]
    ll, mu, sd = (torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(3))
    for s in range(0, n, CHUNK_TOKENS):
        sl = slice(s, s + CHUNK_TOKENS)
        logp = torch.log_softmax(logits[where[sl]].float(), dim=-1)
        ll[sl] = logp.gather(-1, targets[sl, None]).squeeze(-1)
        prob = logp.exp()
        m = (prob * logp).sum(-1)
        mu[sl] = m
        logp -= m[:, None]  # in place: (ℓ_v − μ), two-pass variance without E[l²] − μ² cancellation
        sd[sl] = (prob * logp.square_()).sum(-1).sqrt()
        del logp, prob
    return ll, mu, sd


def _reduce_sliced(hidden, where, targets, *, weight, bias, tiles: tuple[int, int] | None = None):
    """``(ℓ, μ, σ)`` from hidden states and a linear head applied one vocabulary slice at a time.

    Per slice: its max, softmax weight, weighted mean of the logits and weighted sum of squared deviations
    (two passes over the slice, which stays in cache); slices are merged with the pairwise update of Chan
    et al., rescaled to a common max. Then log Z = max + log Σ, μ = E_p[z] − log Z, σ² = Var_p[z].
    ``tiles``: (positions, vocabulary entries) per tile; default :data:`HEAD_TILES` of the device.
    """
    import torch

    rows, vocab = tiles or HEAD_TILES.get(hidden.device.type, HEAD_TILES["cpu"])
    h_all = hidden[where]
    n = where.shape[0]
    ll, mu, sd = (torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(3))
    for s in range(0, n, rows):
        h, t = h_all[s : s + rows], targets[s : s + rows]
        top = torch.full((h.shape[0],), float("-inf"), device=h.device)
        mass, mean, m2, target_logit = (torch.zeros(h.shape[0], device=h.device) for _ in range(4))
        for a in range(0, weight.shape[0], vocab):
            z = torch.nn.functional.linear(h, weight[a : a + vocab], None if bias is None else bias[a : a + vocab])
            z = z.float()
            hit = (t >= a) & (t < a + z.shape[1])
            got = z.gather(1, (t - a).clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)
            target_logit = torch.where(hit, got, target_logit)
            top_c = z.amax(-1)
            e = torch.exp(z - top_c[:, None])
            mass_c = e.sum(-1)
            mean_c = (e * z).sum(-1) / mass_c
            m2_c = (e * z.sub_(mean_c[:, None]).square_()).sum(-1)
            new_top = torch.maximum(top, top_c)
            old_scale, c_scale = torch.exp(top - new_top), torch.exp(top_c - new_top)
            w_old, w_c = mass * old_scale, mass_c * c_scale
            total = w_old + w_c
            delta = mean_c - mean
            mean = mean + delta * (w_c / total)
            m2 = m2 * old_scale + m2_c * c_scale + delta.square() * (w_old * w_c / total)
            mass, top = total, new_top
        log_z = top + mass.log()
        sl = slice(s, s + h.shape[0])
        ll[sl], mu[sl], sd[sl] = target_logit - log_z, mean - log_z, (m2 / mass).sqrt()
    return ll, mu, sd
