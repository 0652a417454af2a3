"""Per-text gradient norms, for the gradient-norm attack: ‖∇_θ L(x)‖₂ over the trainable parameters θ, with
L(x) the text's mean token NLL (the loss one text contributes to training).

One forward and one backward pass per batch of texts: opacus's per-sample gradient hooks (the machinery of
DP-SGD, :mod:`memlens.tuning.private`) give every text's gradient at once, so there is no loop over texts.
Memory: batch × trainable parameters for the per-sample gradients, so full fine-tuning takes small batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from memlens import progress
from memlens.errors import MemlensError
from memlens.tokens import pad_batch


def per_sample_module(model):
    """opacus's ``GradSampleModule`` over ``model`` (per-text gradients of every trainable parameter, loss summed
    over texts), with one correction: a token embedding's per-text gradient has a zero padding row, as torch's
    own backward gives it. opacus's embedding sampler ignores ``padding_idx``; for a model whose start token is
    its padding token (SmolLM2's and the test models'), every text's gradient would gain that row's attention-
    sink gradient — on the tiny test model the per-text embedding gradients summed to 2,332 against a batch
    gradient of 2.1 — inflating norms (over-clipping DP-SGD) and training a row torch never trains."""
    import torch.nn as nn
    from opacus import GradSampleModule
    from opacus.grad_sample.embedding import compute_embedding_grad_sample

    def embedding(layer, activations, backprops):
        out = compute_embedding_grad_sample(layer, activations, backprops)
        if layer.padding_idx is not None and layer.weight in out:
            out[layer.weight][:, layer.padding_idx] = 0
        return out

    GradSampleModule.GRAD_SAMPLERS[nn.Embedding] = embedding
    return GradSampleModule(model, batch_first=True, loss_reduction="sum")


def gradient_norms(
    model,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    starts: Sequence[int] | None = None,
    batch_size: int = 8,
    desc: str = "gradient norms",
) -> np.ndarray:
    """``(N,)`` each text's gradient norm (NaN for a text with no learned token). ``starts[i]`` (default 1):
    the first token of text ``i`` in its loss. opacus records per-sample gradients in training mode only, so the
    model runs in training mode with every ``torch.nn.Dropout`` at p = 0 (deterministic, as in evaluation), and
    is left as it was: same parameters, modes and dropout rates, no ``.grad``, no hooks."""
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MemlensError("gradient norms need trainable parameters: the model has none")
    was_training, device = model.training, params[0].device
    first = np.ones(len(ids), np.int64) if starts is None else np.asarray(starts, np.int64)
    order = np.argsort([-len(s) for s in ids], kind="stable")  # similar lengths together: little padding
    out = np.full(len(ids), np.nan)
    dropouts = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    module = per_sample_module(model)
    model.train()
    for m, _ in dropouts:
        m.p = 0.0
    try:
        with progress.bar(desc, len(ids), "texts") as bar:
            for b in range(0, len(ids), batch_size):
                rows = order[b : b + batch_size]
                input_ids, mask = pad_batch([ids[i] for i in rows], pad_id)
                input_ids, mask = input_ids.to(device), mask.to(device)
                cols = torch.arange(input_ids.shape[1], device=device)
                learned = (mask[:, 1:] == 1) & (cols[None, 1:] >= torch.as_tensor(first[rows], device=device)[:, None])
                logits = module(input_ids=input_ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
                nll = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, T-1)
                count = learned.sum(1)  # (B,)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Full backward hook is firing")  # frozen inputs: expected
                    ((nll * learned).sum(1) / count.clamp(min=1)).sum().backward()  # each text's mean token loss
                grads = [g for p in params if (g := getattr(p, "grad_sample", None)) is not None]
                if len(grads) < len(params) or any(g.shape[0] != len(rows) for g in grads):
                    raise MemlensError("opacus made no per-text gradient for some trainable parameters of this model")
                sq = torch.stack([g.reshape(len(rows), -1).double().pow(2).sum(1) for g in grads]).sum(0)  # (B,)
                out[rows] = np.where(count.cpu().numpy() > 0, sq.sqrt().cpu().numpy(), np.nan)
                for p in params:
                    p.grad_sample, p.grad = None, None
                bar.advance(len(rows))
    finally:
        module._close()
        for m, p in dropouts:
            m.p = p
        model.train(was_training)
    return out
