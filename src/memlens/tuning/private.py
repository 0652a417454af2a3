"""DP-SGD fine-tuning (Abadi et al. 2016) with opacus's per-sample gradients and privacy accountant.

One step: Poisson-sample the training texts (each with probability q = B / N, B = batch_size · grad_accum),
compute each sampled text's gradient of its mean token loss (opacus hooks on the trainable parameters only),
clip it to norm C (``max_grad_norm``), sum, add N(0, σ²C²) to every coordinate and divide by B. The optimiser
(AdamW, with the run's schedule) then steps as usual: what follows the noise is post-processing. The accountant
composes the steps' (q, σ) into the ε spent at δ.

The noise comes from torch's seeded generator, so a run is reproducible; a deployment that must resist an
adversary who knows the seed needs a cryptographic generator instead (opacus's ``secure_mode``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from memlens.config import PrivacyConfig
from memlens.errors import MemlensError


def noise_multiplier(privacy: PrivacyConfig, *, sample_rate: float, steps: int) -> float:
    """σ: ``privacy.noise_multiplier`` as given, or the smallest σ whose ε over ``steps`` steps at ``sample_rate``
    stays within ``privacy.epsilon`` at ``privacy.delta`` (opacus's calibration for its accountant)."""
    if privacy.noise_multiplier is not None:
        return float(privacy.noise_multiplier)
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")  # the search's first brackets
        try:
            sigma = get_noise_multiplier(
                target_epsilon=privacy.epsilon,
                target_delta=privacy.delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=privacy.accountant,
            )
        except ValueError as err:  # opacus: "The privacy budget is too low."
            raise MemlensError(
                f"privacy.epsilon {privacy.epsilon:g} cannot be met over {steps} steps at sampling rate "
                f"{sample_rate:.3g} ({err}): raise epsilon, or train fewer epochs or on smaller batches"
            ) from None
    return float(sigma)


def clip_and_sum(grad_samples: Sequence, max_norm: float) -> tuple[list, Any]:
    """Scale each sample's gradient to norm ≤ ``max_norm`` and sum over samples.

    ``grad_samples[j]``: (B, *shape_j), parameter j's per-sample gradients. A sample's norm is taken over all
    parameters together. Returns the per-parameter sums (*shape_j) and the norms before clipping, (B,), both
    in float32 (a bf16 norm could let a clipped gradient exceed ``max_norm`` by its rounding).
    """
    import torch

    flat = [g.reshape(len(g), -1) for g in grad_samples]
    norms = torch.stack([torch.linalg.vector_norm(g, dim=1, dtype=torch.float32) for g in flat]).norm(dim=0)  # (B,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # (B,), float32 whatever the weights' precision
    return [torch.einsum("b,b...->...", scale, g.float()) for g in grad_samples], norms


class PrivateSteps:
    """DP-SGD's half of the training loop: which texts each step sees, their clipped gradients, the noise, the
    accountant. ``model`` is hooked for per-sample gradients until :meth:`close`."""

    def __init__(self, model, privacy: PrivacyConfig, *, n: int, batch: int, epochs: int, seed: int) -> None:
        import torch
        from opacus.accountants import create_accountant

        from memlens.scoring.gradients import per_sample_module

        if privacy.delta >= 1 / n:
            raise MemlensError(
                f"privacy.delta {privacy.delta:g} is not below 1/N = {1 / n:.3g} (N = {n} training texts): "
                "a guarantee that lets one text in N leak says nothing"
            )
        self.privacy, self.n, self.batch = privacy, n, batch
        self.sample_rate = min(1.0, batch / n)
        self.steps_per_epoch = int(np.ceil(n / batch))
        self.steps = self.steps_per_epoch * epochs
        self.sigma = noise_multiplier(privacy, sample_rate=self.sample_rate, steps=self.steps)
        self.module = per_sample_module(model)  # memlens.scoring.gradients
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]  # bf16 weights: summed in fp32
        self.accountant = create_accountant(privacy.accountant)
        device = self.params[0].device
        self.noise = torch.Generator(device=device).manual_seed(seed)
        self.norms: list[np.ndarray] = []  # per-sample gradient norms before clipping

    def epoch(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """One epoch of steps, each a list of micro-batches of ≤ ``batch_size`` rows of similar length. Poisson
        sampling gives each step a random number of texts (possibly none); otherwise a shuffled partition."""
        if self.privacy.poisson:
            steps = [np.flatnonzero(rng.random(self.n) < self.sample_rate) for _ in range(self.steps_per_epoch)]
        else:
            perm = rng.permutation(self.n)
            steps = [perm[i : i + self.batch] for i in range(0, self.n, self.batch)]
        out = []
        for rows in steps:
            rows = rows[np.argsort(-lengths[rows], kind="stable")]
            out.append([rows[i : i + batch_size] for i in range(0, len(rows), batch_size)])
        return out

    def backward(self, input_ids, attention_mask, labels) -> tuple[float, int]:
        """Add the clipped per-sample gradients of one micro-batch to the step's sums; return the summed token
        NLL and the token count (for the loss shown). ``labels`` (B, T): -100 where a token is not learned."""
        import torch.nn.functional as F

        out = self.module(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=input_ids.shape[1])
        logits = out.logits[:, :-1]  # (B, T-1, V): the next-token predictions
        target = labels[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # (B, T-1)
        count = (target != -100).sum(1)  # (B,)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Full backward hook is firing")  # frozen inputs: expected here
            (nll.sum(1) / count.clamp(min=1)).sum().backward()  # each text's mean token loss
        grads = [getattr(p, "grad_sample", None) for p in self.params]
        if any(g is None or g.shape[0] != len(input_ids) for g in grads):
            raise MemlensError("opacus computed no per-sample gradient for some trainable parameters of this model")
        summed, norms = clip_and_sum(grads, self.privacy.max_grad_norm)
        for total, s in zip(self.sums, summed, strict=True):
            total += s
        for p in self.params:
            p.grad_sample, p.grad = None, None
        self.norms.append(norms.detach().float().cpu().numpy())
        return float(nll.detach().sum()), int(count.sum())

    def noised(self) -> None:
        """Finish a step: each parameter's gradient is (sum of clipped gradients + noise) / B; account the step."""
        import torch

        std = self.sigma * self.privacy.max_grad_norm
        for p, total in zip(self.params, self.sums, strict=True):
            noise = torch.normal(0.0, std, size=total.shape, generator=self.noise, device=total.device)
            p.grad = ((total + noise) / self.batch).to(p.dtype)
            total.zero_()
        self.accountant.step(noise_multiplier=self.sigma, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        """ε spent so far at ``privacy.delta`` (∞ without noise)."""
        if self.sigma == 0:
            return float("inf")
        return float(self.accountant.get_epsilon(delta=self.privacy.delta))

    def close(self) -> dict:
        """Remove the hooks; return what ``results.json`` records under ``privacy``."""
        self.module._close()
        norms = np.concatenate(self.norms) if self.norms else np.zeros(0)
        clip = self.privacy.max_grad_norm
        eps = self.epsilon()
        return {
            "dp": True,
            "epsilon": eps if np.isfinite(eps) else None,
            "target_epsilon": self.privacy.epsilon,
            "delta": self.privacy.delta,
            "noise_multiplier": self.sigma,
            "max_grad_norm": clip,
            "accountant": self.privacy.accountant,
            "sampling": "poisson" if self.privacy.poisson else "shuffled batches (ε assumes Poisson sampling)",
            "sample_rate": self.sample_rate,
            "expected_batch": self.batch,
            "steps": self.steps,
            "training_texts": self.n,
            "median_grad_norm": float(np.median(norms)) if len(norms) else None,
            "clipped_share": float((norms > clip).mean()) if len(norms) else None,
        }
