"""Tokenisation and batching shared by training, scoring and generation.

Texts are tokenised once, without padding; batches are cut from sequences of similar length so that
little compute goes to padding. Padding reuses the EOS token (no new token is ever added) and is always
masked out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Encoded:
    """Token ids per text, which texts were cut to ``max_tokens`` and, for chat and instruction records, the
    first token of each completion (``starts``; ``None``: every token after the start token is the text's)."""

    ids: list[list[int]]
    truncated: list[bool]
    starts: list[int] | None = None

    @property
    def first(self) -> list[int]:
        """The first scored (and learned) token of each sequence."""
        return self.starts if self.starts is not None else [1] * len(self.ids)

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.ids), dtype=np.int64, count=len(self.ids))


def ensure_pad_token(tokenizer) -> int:
    """Make the tokenizer pad with EOS when it has no pad token; return the pad id."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            from memlens.errors import MemlensError

            raise MemlensError("the tokenizer has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def start_id(tokenizer) -> int | None:
    """The token put before every text where the tokenizer adds no leading special token of its own: BOS, else
    EOS (the lm-evaluation-harness convention), so that every model scores and learns a text's first word.
    ``None`` where the tokenizer adds one itself (e.g. Gemma's ``<bos>``) or has neither token."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_special[:1] != plain[:1]:
        return None
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return None if start is None else int(start)


def with_start(tokenizer, ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """``ids`` (as the tokenizer gives them with its special tokens) behind :func:`start_id` where needed."""
    start = start_id(tokenizer)
    return [list(s) if start is None else [start, *s] for s in ids]


def encode(tokenizer, texts: Sequence[str], max_tokens: int) -> Encoded:
    """Token ids of ``texts`` behind one start token (the tokenizer's own BOS, else :func:`start_id`), cut to
    ``max_tokens`` (the start token included). Training, scoring and generation all use these ids, so the first
    word of every text is predicted from the start token whatever the model."""
    if not texts:
        return Encoded([], [])
    ids = with_start(tokenizer, tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"])
    return Encoded([s[:max_tokens] for s in ids], [len(s) > max_tokens for s in ids])


FALLBACK_TURN = "{role}: {content}\n"  # a chat record's turns for a tokenizer without a chat template
FALLBACK_REPLY = "assistant: "  # ... then the reply follows this


def encode_records(tokenizer, records: Sequence, max_tokens: int) -> Encoded:
    """Token ids of data records (:class:`memlens.data.Text`): plain texts as :func:`encode`; a chat or
    instruction record as its prompt (context) then its completion, with ``starts`` at the completion's first
    token, so that only the completion is scored and learned (as SFT trainers do by default).

    - instruction (``prompt`` a string): the start token, the prompt's tokens, the completion's tokens;
    - chat (``prompt`` a tuple of ``(role, content)`` turns before the reply): the tokenizer's chat template
      applied to the turns with the generation prompt (context), and what the template adds for the reply
      (completion: the reply and its end-of-turn tokens). Without a chat template, the turns are written
      ``role: content`` a line and the reply follows ``assistant: `` (an instruction record).

    Prompt and completion are tokenised separately (no token spans the boundary). Cut to ``max_tokens``."""
    if all(getattr(r, "prompt", None) is None for r in records):
        return encode(tokenizer, [r.text for r in records], max_tokens)
    contexts, completions = zip(*(_context_and_completion(tokenizer, r) for r in records), strict=True)
    # a chat template writes its own special tokens; any other context goes behind the start token
    templated = [isinstance(r.prompt, tuple) and bool(tokenizer.chat_template) for r in records]
    heads: list[list[int]] = [[] for _ in records]
    for own in (True, False):
        rows = [i for i, t in enumerate(templated) if t == own]
        if rows:
            got = tokenizer([contexts[i] for i in rows], add_special_tokens=not own)["input_ids"]
            for i, h in zip(rows, got if own else with_start(tokenizer, got), strict=True):
                heads[i] = list(h)
    tails = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    ids = [[*h, *t] for h, t in zip(heads, tails, strict=True)]
    starts = [len(h) for h in heads]
    return Encoded([s[:max_tokens] for s in ids], [len(s) > max_tokens for s in ids], starts)


def _context_and_completion(tokenizer, record) -> tuple[str, str]:
    prompt = record.prompt
    if prompt is None:
        return "", record.text
    if isinstance(prompt, str):
        return prompt, record.text
    turns = [{"role": role, "content": content} for role, content in prompt]
    if not tokenizer.chat_template:
        return "".join(FALLBACK_TURN.format(**t) for t in turns) + FALLBACK_REPLY, record.text
    from memlens.errors import MemlensError

    try:
        context = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": record.text}], tokenize=False)
    except Exception as err:  # a template that refuses the turns (jinja raise_exception, an unknown role ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MemlensError(f"record {record.id!r}: the tokenizer's chat template refused it: {reason}") from None
    if not full.startswith(context):
        raise MemlensError(
            "the tokenizer's chat template does not write a conversation as its prompt followed by the reply; "
            "give the records as prompt + completion strings instead"
        )
    return context, full[len(context) :]


def scored_texts(tokenizer, texts: Sequence[str], encoded: Encoded) -> list[str]:
    """The part of each text that is scored: the text (a record's completion) itself, or the decoded kept
    tokens where it was cut (so that a text-level statistic such as the zlib size describes the same text as
    the likelihood)."""
    return [
        tokenizer.decode(ids[k:] if encoded.starts is not None else ids, skip_special_tokens=True) if cut else text
        for text, ids, cut, k in zip(texts, encoded.ids, encoded.truncated, encoded.first, strict=True)
    ]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length (longest first, so a memory problem shows at once)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 64
) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort inside groups of ``group`` batches, shuffle batches."""
    perm = rng.permutation(len(lengths))
    span = batch_size * group
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), span):
        chunk = perm[start : start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """``(input_ids, attention_mask)`` as torch tensors, padded on ``side`` to the longest sequence."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[row, sl] = torch.as_tensor(s, dtype=torch.long)
        mask[row, sl] = 1
    return ids, mask


def padding_fraction(lengths: np.ndarray, batches: Iterator[np.ndarray] | list[np.ndarray]) -> float:
    """Share of the padded token slots that are padding."""
    real = slots = 0
    for b in batches:
        real += int(lengths[b].sum())
        slots += int(lengths[b].max()) * len(b)
    return 1.0 - real / slots if slots else 0.0
