"""Does every path of the scoring engine give the per-token log-probabilities of a plain batch-1 forward pass?

    python benchmarks/scoring_paths.py [--device cuda] [--model PATH] [--n 48]

For each dtype (float32, bfloat16) scores the same PHEE texts through each path of ``score_ids`` — packed rows,
padded rows, left padding, batch size 1, a shared prefix — and compares each text's token log-probabilities
with one forward pass per text (batch 1, no mask, log-softmax in float64): the largest |Δ| on a token and on
a text's mean (the LOSS score). Then the sliced output head at this device's tile sizes against a full
log-softmax of the same hidden states, on a 49,152-entry head (SmolLM2's vocabulary). The model defaults to
the test suite's 2-layer Llama built here (no download); float32 differences above ~1e-4 mean a path is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT


def truth(model, ids: list[list[int]], prefix: list[int]) -> list[np.ndarray]:
    """Log-probabilities of tokens 1..n−1 of each sequence, one forward pass each (float64 log-softmax)."""
    import torch

    out = []
    with torch.inference_mode():
        for s in ids:
            x = torch.tensor([[*prefix, *s[1:]] if prefix else s], device=model.device)
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
            ll = logp.gather(-1, x[0, 1:, None]).squeeze(-1)
            out.append(ll[len(prefix) - 1 :].cpu().numpy() if prefix else ll.cpu().numpy())
    return out


def compare(stats, want: list[np.ndarray]) -> tuple[float, float]:
    """(largest |Δ| on a token, largest |Δ| of a text's mean) of ``stats.logprob`` against ``want``."""
    tok, mean = 0.0, 0.0
    for i, w in enumerate(want):
        got = stats.logprob[i, : len(w)].astype(np.float64)
        tok = max(tok, float(np.abs(got - w).max()))
        mean = max(mean, abs(float(got.mean() - w.mean())))
    return tok, mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", help="model name or folder (default: a 2-layer test model built here)")
    ap.add_argument("--n", type=int, default=48, help="PHEE texts")
    args = ap.parse_args()

    import torch

    from memlens import progress
    from memlens.data import read_phee
    from memlens.models import load_model
    from memlens.scoring import engine, score_ids
    from memlens.tokens import encode

    progress.set_enabled(False)
    model_name = args.model
    if model_name is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import PHEE, build_tiny

        model_name = str(build_tiny(Path(tempfile.mkdtemp(prefix="memlens-paths-")) / "tiny"))
    data_dir = PHEE if args.model is None else None
    texts = [t.text for t in read_phee(data_dir, "train")[: args.n]] if data_dir else None
    for dtype in ("float32", "bfloat16"):
        lm = load_model(model_name, device=args.device, dtype=dtype)
        model, tok = lm.model, lm.tokenizer
        if texts is None:
            texts = [t.text for t in read_phee(None, "train")[: args.n]]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = encode(tok, texts, 128).ids
        prefix = encode(tok, [" ".join(texts[:3])], 128).ids[0]
        want, want_prefixed = truth(model, ids, []), truth(model, ids, prefix)
        paths = {
            "packed, batch 16": {"batch_size": 16},
            "padded, batch 16": {"batch_size": 16, "pack": False},
            "left-padded, batch 16": {"batch_size": 16, "padding_side": "left"},
            "padded, batch 1": {"batch_size": 1, "pack": False},
        }
        print(f"{lm.info['device']} {dtype}, {len(ids)} texts, model {model_name}")
        for name, kw in paths.items():
            t, m = compare(score_ids(model, ids, pad, **kw), want)
            print(f"  {name:24s} max |Δ| token {t:.2e}, text mean {m:.2e}")
        t, m = compare(score_ids(model, ids, pad, batch_size=16, prefix=prefix), want_prefixed)
        print(f"  {'shared prefix, batch 16':24s} max |Δ| token {t:.2e}, text mean {m:.2e}")
        print(f"  packing self-check verdicts: {engine.packing_verdicts()}")

    torch.manual_seed(0)
    device = args.device
    for dtype in (torch.float32, torch.bfloat16):
        hidden = torch.randn(3000, 576, device=device, dtype=dtype)
        weight = torch.randn(49152, 576, device=device, dtype=dtype) * 0.05
        targets = torch.randint(0, 49152, (3000,), device=device)
        where = torch.arange(3000, device=device)
        ll, mu, sd = engine._reduce_sliced(hidden, where, targets, weight=weight, bias=None)
        logp = torch.log_softmax((hidden @ weight.T).double(), -1)
        want_ll = logp.gather(-1, targets[:, None]).squeeze(-1)
        p = logp.exp()
        want_mu = (p * logp).sum(-1)
        want_sd = (p * (logp - want_mu[:, None]) ** 2).sum(-1).sqrt()
        d = [float((a.double() - b).abs().max()) for a, b in ((ll, want_ll), (mu, want_mu), (sd, want_sd))]
        tiles = engine.HEAD_TILES.get(device, engine.HEAD_TILES["cpu"])
        print(f"sliced head, {device} {dtype} tiles {tiles}: max |Δ| ℓ {d[0]:.2e}, μ {d[1]:.2e}, σ {d[2]:.2e}")


if __name__ == "__main__":
    main()
