"""The extraction attack: prompt the model with the start of a training text and compare its continuation with
the true rest (Study B: split at the token midpoint, generate as many tokens as the true suffix has).

Conventions:

- Texts are tokenised with :func:`memlens.tokens.encode_records`: every prompt begins with the start token (a
  chat or instruction record: with its own prompt), which is not counted. ``prefix`` is a count (int ≥ 1) or a
  fraction in (0, 1) of the text's own tokens (a record's completion), rounded down. A text whose split leaves
  an empty prefix or suffix is an error for :func:`split_prefix`; :func:`extract` skips such texts and reports
  their indices and count.
- Every generation is exactly as long as its true suffix: ``generate`` runs with ``min_new_tokens =
  max_new_tokens``, which masks EOS until then, so generation never stops early (and never emits EOS; a true
  suffix ending in an EOS that the tokenizer appends cannot match on that token).
- Batches are left-padded with EOS (masked out) and cut from prompts sorted by (prefix length, suffix length),
  so padding and over-generation (a batch generates its longest suffix; shorter ones are cut) stay small.
- Prompt-based ``peft`` models (prompt tuning, P-tuning, prefix tuning) get their virtual tokens passed
  explicitly to the base model's ``generate`` (as input embeddings, or as a pre-filled key/value cache for
  prefix tuning), with position ids from the attention mask. ``peft``'s own ``generate`` cannot be trusted here
  (peft 0.21, transformers 5): it ignores prefix tuning's prefix, and for prompt tuning and P-tuning it departs
  from ``peft``'s forward pass after the first new token. Generations hold only real token ids.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from memlens import progress
from memlens.data.sources import as_records
from memlens.errors import MemlensError
from memlens.extraction.metrics import METRICS, aggregate, score_pair
from memlens.metrics import clopper_pearson
from memlens.tokens import encode_records, ensure_pad_token, pad_batch, sorted_batches

NP_THRESHOLD = 0.5  # a text is (n, p)-extractable when P(extracted in n samples) ≥ p


@dataclass(frozen=True)
class Decoding:
    """How continuations are decoded. ``greedy`` gives one generation per prefix; ``sample`` draws
    ``num_samples`` with ``temperature``, nucleus ``top_p`` (1 = off) and ``top_k`` (0 = off)."""

    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample"):
            raise MemlensError(f"decoding strategy must be 'greedy' or 'sample', got {self.strategy!r}")
        if self.strategy == "greedy" and self.num_samples != 1:
            raise MemlensError("greedy decoding gives one generation per prefix; num_samples > 1 needs 'sample'")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.top_k >= 0 and self.num_samples >= 1):
            raise MemlensError(f"invalid {self}: need temperature > 0, 0 < top_p ≤ 1, top_k ≥ 0, num_samples ≥ 1")


GREEDY = Decoding()


def _check_prefix(prefix: int | float) -> None:
    is_count = isinstance(prefix, numbers.Integral) and not isinstance(prefix, bool) and prefix >= 1
    if not (is_count or (isinstance(prefix, float) and 0 < prefix < 1)):
        raise MemlensError(f"prefix must be a token count ≥ 1 or a fraction in (0, 1), got {prefix!r}")


def split_prefix(ids: Sequence[int], prefix: int | float) -> tuple[list[int], list[int]]:
    """``(prefix_ids, suffix_ids)``: the first ``prefix`` tokens (int) or ``floor(prefix × len)`` tokens (float in
    (0, 1); 0.5 = Study B's midpoint), and the rest. Both must be non-empty, else :class:`MemlensError`."""
    _check_prefix(prefix)
    k = int(prefix) if isinstance(prefix, numbers.Integral) else int(len(ids) * prefix)
    if not 0 < k < len(ids):
        raise MemlensError(
            f"a text of {len(ids)} tokens cannot be split at prefix={prefix}: prefix and suffix must both be non-empty"
        )
    return list(ids[:k]), list(ids[k:])


def _generation_config(decoding: Decoding, length: int, pad_id: int):
    """Exactly ``length`` new tokens. Penalties and samplers a model's own ``generation_config`` may set are pinned
    to neutral values: extraction measures the model's distribution as it is."""
    from transformers import GenerationConfig

    knobs: dict = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    if decoding.strategy == "sample":
        knobs |= {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": decoding.top_k}
        knobs |= {"typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
    return GenerationConfig(
        max_new_tokens=length,
        min_new_tokens=length,
        do_sample=decoding.strategy == "sample",
        num_beams=1,
        pad_token_id=pad_id,
        **knobs,
    )


def _generate(model, ids, mask, config):
    """New tokens ``(B, max_new_tokens)`` for left-padded ``ids``; prompt-based peft models' virtual tokens are
    given to the base model explicitly (see the module docstring)."""
    import torch

    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is None or not peft_cfg.is_prompt_learning:
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1] :]
    from peft import PeftType

    base, n_virtual, batch = model.get_base_model(), peft_cfg.num_virtual_tokens, ids.shape[0]
    mask = torch.cat([mask.new_ones(batch, n_virtual), mask], dim=1)
    if peft_cfg.peft_type == PeftType.PREFIX_TUNING:
        # the cache holds the virtual positions; their input ids are placeholders that are never read
        ids = torch.cat([ids.new_full((batch, n_virtual), config.pad_token_id), ids], dim=1)
        cache = model.get_prompt(batch_size=batch)
        out = base.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, generation_config=config)
        return out[:, ids.shape[1] :]
    embeds = base.get_input_embeddings()(ids)
    embeds = torch.cat([model.get_prompt(batch_size=batch).to(embeds.dtype), embeds], dim=1)
    return base.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)  # new tokens only


def generate_suffixes(
    model,
    tokenizer,
    prefixes: Sequence[Sequence[int]],
    suffix_lengths: Sequence[int],
    *,
    decoding: Decoding = GREEDY,
    batch_size: int = 16,
    seed: int = 0,
    desc: str = "generating",
) -> list[list[list[int]]]:
    """For each prefix, ``decoding.num_samples`` continuations of exactly ``suffix_lengths[i]`` token ids.

    ``batch_size`` counts generated sequences (prompts × samples). The same seed, inputs and batch size give the
    same output.
    """
    import torch

    if len(prefixes) != len(suffix_lengths):
        raise ValueError("need one suffix length per prefix")
    plen = np.array([len(p) for p in prefixes], dtype=np.int64)
    slen = np.asarray(suffix_lengths, dtype=np.int64)
    if (plen < 1).any() or (slen < 1).any():
        raise ValueError("prefixes and suffix lengths must be non-empty")
    n = decoding.num_samples
    pad_id = ensure_pad_token(tokenizer)
    device = next(model.parameters()).device
    out: list[list[list[int]]] = [[] for _ in prefixes]
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress.bar(desc, int(slen.sum()) * n, "tokens") as bar:
            key = plen * (int(slen.max(initial=0)) + 1) + slen  # sort by prefix length, then suffix length
            for rows in sorted_batches(key, max(1, batch_size // n)):
                ids, mask = pad_batch([prefixes[i] for i in rows], pad_id, side="left")
                ids, mask = ids.repeat_interleave(n, 0).to(device), mask.repeat_interleave(n, 0).to(device)
                config = _generation_config(decoding, int(slen[rows].max()), pad_id)
                new = _generate(model, ids, mask, config).reshape(len(rows), n, -1).tolist()
                for r, i in enumerate(rows):
                    out[i] = [s[: slen[i]] for s in new[r]]
                bar.advance(n * int(slen[rows].sum()))
    finally:
        model.train(was_training)
    return out


def suffix_log_probability(
    model,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[int]],
    decoding: Decoding,
    pad_id: int,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """``(n,)`` log P(one generation reproduces ``suffixes[i]`` exactly | ``prefixes[i]``) under ``decoding``:
    the sum over suffix tokens of the token's log-probability after the decoding's own transformation of the
    teacher-forced logits (temperature, then top-k, then top-p, as ``generate`` applies them; greedy: 0 if every
    true token is the arg-max, else −inf). One forward pass per batch; only the suffix positions' (m, V) rows are
    transformed, then reduced to one float per token."""
    import torch

    out = np.zeros(len(prefixes), dtype=np.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prefixes), batch_size):
                rows = range(start, min(start + batch_size, len(prefixes)))
                ids, mask = pad_batch([[*prefixes[i], *suffixes[i]] for i in rows], pad_id)  # right padding
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                logits = logits[:, -ids.shape[1] :]  # prompt tuning prepends virtual positions
                r = np.concatenate([np.full(len(suffixes[i]), k) for k, i in enumerate(rows)])
                c = np.concatenate([len(prefixes[i]) - 1 + np.arange(len(suffixes[i])) for i in rows])
                z = logits[torch.as_tensor(r), torch.as_tensor(c)].float()  # (m, V)
                true = torch.as_tensor(np.concatenate([suffixes[i] for i in rows]), device=device)
                logp = _decoded_log_prob(z, true, decoding)  # (m,)
                np.add.at(out, np.asarray(r) + start, logp.double().cpu().numpy())
    finally:
        model.train(was_training)
    return out


def _decoded_log_prob(z, true, decoding: Decoding):
    """log p(true token) under ``decoding``'s transformation of logits ``z`` (m, V)."""
    import torch

    if decoding.strategy == "greedy":
        return torch.where(z.argmax(-1) == true, 0.0, -torch.inf)
    z = z / decoding.temperature
    if decoding.top_k:
        kth = torch.topk(z, min(decoding.top_k, z.shape[-1]), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -torch.inf)
    if decoding.top_p < 1:
        probs, order = torch.softmax(z, -1).sort(dim=-1, descending=True)
        drop = probs.cumsum(-1) - probs >= decoding.top_p  # the mass before it already reaches top_p
        drop[:, 0] = False
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -torch.inf)
    return torch.log_softmax(z, -1).gather(-1, true[:, None])[:, 0]


def extraction_probability(log_p: np.ndarray, n: int) -> np.ndarray:
    """P(at least one of ``n`` independent generations reproduces the suffix) = 1 − (1 − p)^n, from log p
    (computed stably: −expm1(n · log1p(−p)))."""
    p = np.exp(np.asarray(log_p, dtype=np.float64))
    with np.errstate(divide="ignore"):
        return -np.expm1(n * np.log1p(-np.minimum(p, 1.0)))


def mean_ci(values: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile-bootstrap interval of the mean of ``values`` over texts (one row of draws, no loop)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


@dataclass
class ExtractionResult:
    """Extraction of a set of texts; no text is stored, only indices and scores.

    - ``rows``: one per extracted text: ``index`` (into the input texts), ``prefix_tokens`` (the start token not
      counted), ``suffix_tokens``,
      ``best_sample`` (the sample with the highest ``select`` metric, first on ties) and that sample's metrics;
    - ``samples``: metric -> ``(n_rows, num_samples)`` array, every sample's score;
    - ``summary``: :func:`~memlens.extraction.metrics.aggregate` of the rows (best of N), ``sample_mean``
      (mean over all samples), counts, settings and ``tokens_per_second`` (suffix tokens of all samples per
      second of generation, over-generation not counted);
    - ``skipped``: indices of texts too short to split;
    - ``generations``: generated token ids per row and sample. They can reproduce training text: kept in memory
      for inspection, left out of :meth:`to_dict`.
    """

    rows: list[dict]
    samples: dict[str, np.ndarray]
    summary: dict
    skipped: list[int]
    generations: list[list[list[int]]] = field(repr=False)

    def to_dict(self) -> dict:
        """A JSON-ready dict without generations."""
        samples = {k: v.tolist() for k, v in self.samples.items()}
        return {"summary": self.summary, "rows": self.rows, "samples": samples, "skipped": self.skipped}


def extract(
    model,
    tokenizer,
    texts: Sequence,
    *,
    prefix: int | float = 0.5,
    decoding: Decoding = GREEDY,
    max_tokens: int = 128,
    select: str = "ngram_share",
    batch_size: int = 16,
    seed: int = 0,
) -> ExtractionResult:
    """Split each text (cut to ``max_tokens``) at ``prefix``, generate its suffix and score every sample against
    the true suffix; per text keep the best sample by ``select`` (a metric of
    :data:`~memlens.extraction.metrics.METRICS`). ``texts``: strings, or data records
    (:class:`memlens.data.Text`): a chat or instruction record is prompted with its prompt plus ``prefix`` of
    its completion, and the rest of the completion is the suffix."""
    _check_prefix(prefix)
    if select not in METRICS:
        raise MemlensError(f"unknown extraction metric {select!r}; valid: {', '.join(METRICS)}")
    enc = encode_records(tokenizer, as_records(texts), max_tokens)
    kept, prefixes, suffixes, skipped, context_tokens = [], [], [], [], []
    for i, (ids, k) in enumerate(zip(enc.ids, enc.first, strict=True)):
        try:
            p, s = split_prefix(ids[k:], prefix)  # ids[:k]: the start token, or a record's prompt
        except MemlensError:  # too short: ``prefix`` itself was checked above
            skipped.append(i)
            continue
        kept.append(i)
        prefixes.append([*ids[:k], *p])
        context_tokens.append(k)
        suffixes.append(s)
    if not kept:
        raise MemlensError(f"none of the {len(texts)} texts is long enough to split at prefix={prefix}")

    t0 = time.perf_counter()
    gens = generate_suffixes(
        model, tokenizer, prefixes, [len(s) for s in suffixes], decoding=decoding, batch_size=batch_size, seed=seed
    )
    seconds = time.perf_counter() - t0
    n = decoding.num_samples
    gen_texts = tokenizer.batch_decode([g for per_text in gens for g in per_text], skip_special_tokens=True)
    ref_texts = tokenizer.batch_decode(suffixes, skip_special_tokens=True)
    scores = [
        [score_pair(g, suffixes[r], gen_texts[r * n + j], ref_texts[r]) for j, g in enumerate(gens[r])]
        for r in range(len(kept))
    ]
    samples = {m: np.array([[s[m] for s in per_text] for per_text in scores]) for m in METRICS}
    best = samples[select].argmax(axis=1)
    rows = [
        {"index": i, "prefix_tokens": len(p) - k, "suffix_tokens": len(s), "best_sample": int(b), **sc[b]}
        for i, p, k, s, b, sc in zip(kept, prefixes, context_tokens, suffixes, best, scores, strict=True)
    ]
    probabilistic = {}
    if decoding.strategy == "sample":  # (n, p)-discoverable extraction (Hayes et al.): per text, exactly
        log_p = suffix_log_probability(
            model, prefixes, suffixes, decoding, ensure_pad_token(tokenizer), batch_size=batch_size
        )
        p_n = extraction_probability(log_p, n)
        for row, lp, pn in zip(rows, log_p, p_n, strict=True):
            row |= {"log_p_suffix": float(lp), "p_extracted": float(pn)}
        hits = int((p_n >= NP_THRESHOLD).sum())
        probabilistic = {
            "p_extracted_mean": float(p_n.mean()),  # expected share of texts extracted in n samples
            "p_extracted_mean_ci": mean_ci(p_n, seed=seed),
            "np_extractable_rate": hits / len(p_n),  # share of texts with P(extracted) ≥ 0.5
            "np_extractable_rate_ci": list(clopper_pearson(hits, len(p_n))),
        }
    generated = n * sum(len(s) for s in suffixes)
    summary = (
        aggregate(rows)
        | probabilistic
        | {
            "sample_mean": {m: float(v.mean()) for m, v in samples.items()},
            "n_texts": len(texts),
            "n_skipped": len(skipped),
            "n_truncated": enc.n_truncated,
            "prefix": prefix,
            "select": select,
            "decoding": asdict(decoding),
            "generated_tokens": generated,
            "seconds": seconds,
            "tokens_per_second": generated / seconds if seconds else float("nan"),
        }
    )
    return ExtractionResult(rows, samples, summary, skipped, gens)


def temperature_sweep(
    model,
    tokenizer,
    texts: Sequence[str],
    temperatures: Sequence[float] = (0.1, 0.5, 1.0),
    *,
    decoding: Decoding | None = None,
    **kw,
) -> list[dict]:
    """One :attr:`ExtractionResult.summary` per temperature (with a ``temperature`` key), sampling with
    ``decoding``'s other settings (default: one sample, no top-p/top-k); ``kw`` go to :func:`extract`."""
    base = decoding or Decoding(strategy="sample")
    return [
        {"temperature": t}
        | extract(model, tokenizer, texts, decoding=replace(base, strategy="sample", temperature=t), **kw).summary
        for t in temperatures
    ]
