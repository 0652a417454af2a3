"""Per-token statistics of texts under one model: the only thing attacks ever read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TokenStats:
    """Statistics of ``N`` texts, padded to ``T`` scored tokens with NaN.

    Row ``i``, column ``j`` describes token ``j + 1`` of text ``i`` given tokens ``0..j`` (the first token
    has no context and is not scored). ``lengths[i]`` is the number of scored tokens.

    - ``logprob``: ℓ = log p(x_{j+1} | x_≤j), the true token's log-probability (natural log).
    - ``mu``: E_{v~p}[log p(v | x_≤j)] (minus the entropy of the next-token distribution).
    - ``sigma``: the standard deviation of log p(v | x_≤j) under v ~ p (Min-K%++'s σ).
    """

    logprob: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def mask(self) -> np.ndarray:
        """``(N, T)`` bool: which cells hold a scored token."""
        return np.arange(self.logprob.shape[1])[None, :] < self.lengths[:, None]

    def nll(self) -> np.ndarray:
        """Mean negative log-likelihood per text, L(x) = −mean_j ℓ_j (NaN for a text with no scored token)."""
        total = np.where(self.mask, self.logprob, 0.0).sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.lengths > 0, -total / self.lengths, np.nan)

    def perplexity(self) -> float:
        """Corpus perplexity: exp(total NLL / total scored tokens) over all texts (token-weighted)."""
        n = int(self.lengths.sum())
        if n == 0:
            return float("nan")
        total = np.where(self.mask, self.logprob, 0.0).sum(dtype=np.float64)
        return float(np.exp(-total / n))

    def take(self, rows: np.ndarray | slice) -> TokenStats:
        """The statistics of a subset of texts (columns trimmed to the longest kept row)."""
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(lengths) else 0
        return TokenStats(self.logprob[rows, :width], self.mu[rows, :width], self.sigma[rows, :width], lengths)

    @staticmethod
    def concat(parts: list[TokenStats]) -> TokenStats:
        width = max(p.logprob.shape[1] for p in parts)

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan)

        def stack(k: str) -> np.ndarray:
            return np.concatenate([pad(getattr(p, k)) for p in parts])

        return TokenStats(stack("logprob"), stack("mu"), stack("sigma"), np.concatenate([p.lengths for p in parts]))

    def save(self, path: str | Path) -> None:
        """Write as ``.npz`` (no pickles) to exactly ``path`` (numpy would add ``.npz`` to a name)."""
        with Path(path).open("wb") as fh:
            np.savez(fh, logprob=self.logprob, mu=self.mu, sigma=self.sigma, lengths=self.lengths)

    @staticmethod
    def load(path: str | Path) -> TokenStats:
        with np.load(path, allow_pickle=False) as z:
            return TokenStats(z["logprob"], z["mu"], z["sigma"], z["lengths"])
