"""Benchmark of the scoring engine: every attack from a few batched passes vs a naive per-sample loop.

    python benchmarks/scoring.py [--n 256] [--naive-n 24] [--batch-size 16] [--repeats 5] [--profile]
                                 [--dtype auto|float32|bfloat16]

Prints: the machine's measured matmul peak; tokens/s and achieved FLOP/s (2 × parameters × tokens / time) of
one plain pass of the pre-trained model, each run compared with the peak measured around it; tokens/s of the
engine computing ALL attacks (target, reference, lower-cased and ReCaLL-prefixed passes, with per-pass times)
and of the naive way (one sample at a time, one forward pass per attack, as common tools do); the speed-up,
also per sweep configuration (reference statistics cached), and the ceiling no implementation could pass on
this machine (the engine's passes at 100% of the peak); the largest per-sample score differences, and both
ways' error against the same logits reduced in fp64; peak RSS; and that a second run is served by the cache
with no forward pass. On CUDA the same runs in bf16 against the bf16 matmul peak, and the accuracy of both ways
is measured against the same model in fp32.

With ``--profile``: each of the engine's four passes timed again once warm (the first run includes kernel
selection and the prefix's keys/values), and a torch.profiler table of the ReCaLL-prefixed pass's top operations."""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import sys
import tempfile
import time
import zlib

import numpy as np
from common import matmul_peak, parser, sync


def naive_scores(
    model, tok, texts: list[str], prefix_text: str, ks: list[float], max_tokens: int, reduce_dtype=None
) -> dict:
    """The common way: for each text, for each attack, its own forward pass at batch size 1 (log-softmax in
    fp32, or in ``reduce_dtype``). The token ids are memlens's (:func:`memlens.tokens.encode`: one start token,
    then the text), so both ways score the same tokens; ReCaLL's prefix takes the place of the start token."""
    import torch

    from memlens.tokens import encode

    reduce_dtype = reduce_dtype or torch.float32
    prefix_ids = encode(tok, [prefix_text], 10**9).ids[0]

    def token_logprobs(m, text: str, prefix: bool = False, adapters: bool = True):
        """Log-probs of every position, and ℓ of the text's tokens 1..n-1 (after the prefix, if any)."""
        ids = encode(tok, [text], max_tokens).ids[0]
        if prefix:
            ids = prefix_ids + ids[1:]
        skip = len(prefix_ids) - 1 if prefix else 0
        x = torch.tensor([ids], device=m.device)
        with torch.inference_mode(), contextlib.nullcontext() if adapters else m.disable_adapter():
            logp = torch.log_softmax(m(input_ids=x).logits[0, :-1].to(reduce_dtype), -1)
        ll = logp.gather(-1, x[0, 1:, None]).squeeze(-1)
        return logp[skip:], ll[skip:]

    scores: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        scores.setdefault(name, []).append(value)

    for text in texts:
        _, ll = token_logprobs(model, text)
        add("loss", float(ll.mean()))
        _, ll = token_logprobs(model, text)
        _, ll_ref = token_logprobs(model, text, adapters=False)
        add("reference", float(-ll_ref.mean() + ll.mean()))
        _, ll = token_logprobs(model, text)
        add("zlib", float(ll.mean()) / len(zlib.compress(text.encode())))
        _, ll = token_logprobs(model, text)
        _, ll_low = token_logprobs(model, text.lower())
        add("lowercase", float(-ll_low.mean() + ll.mean()))
        _, ll = token_logprobs(model, text)
        _, ll_pre = token_logprobs(model, text, prefix=True)
        add("recall", float(ll_pre.mean() / ll.mean()))
        for k in ks:
            _, ll = token_logprobs(model, text)
            v = torch.sort(ll).values
            add(f"min_k@{k:g}", float(v[: max(1, int(k * len(v)))].mean()))
        for k in ks:
            logp, ll = token_logprobs(model, text)
            p = logp.exp()
            mu = (p * logp).sum(-1)
            sd = (p * (logp - mu[:, None]) ** 2).sum(-1).sqrt()
            z = torch.sort((ll - mu) / sd).values
            add(f"min_k_plus@{k:g}", float(z[: max(1, int(k * len(z)))].mean()))
    return {k: np.array(v) for k, v in scores.items()}


def _rss_now() -> float:
    """Resident memory now, in MiB (Linux; elsewhere the peak so far)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _naive_passes(texts: list[str], tok, prefix_text: str, max_tokens: int) -> float:
    """Tokens the naive loop runs through the model per scored token: 16 passes over the text, one over
    the lower-cased text and one over prefix + text (the prefix in place of the start token)."""
    from memlens.tokens import encode

    n_prefix = len(encode(tok, [prefix_text], 10**9).ids[0])
    total = scored = 0
    lowered = encode(tok, [t.lower() for t in texts], max_tokens).ids
    for ids, low in zip(encode(tok, texts, max_tokens).ids, lowered, strict=True):
        n = len(ids)
        total += 16 * n + len(low) + n_prefix + n - 1
        scored += n - 1
    return total / scored


def _profile(fns: dict, device: str) -> None:
    """Each pass timed twice more (warm), then the ReCaLL pass under torch.profiler: its top operations."""
    from torch.profiler import ProfilerActivity, profile

    warm = {}
    for name, fn in fns.items():
        for _ in range(2):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            warm[name] = time.perf_counter() - t
    print("  warm (second of two more runs): " + ", ".join(f"{k} {v:.2f} s" for k, v in warm.items()))
    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        fns["recall"]()
        sync(device)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"  ReCaLL pass, top operations by {sort}:")
    print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=48))


def main() -> None:
    ap = parser(__doc__, n=256, batch_size=16)
    ap.add_argument("--naive-n", type=int, default=24, help="texts scored by the naive loop (it is slow)")
    ap.add_argument("--repeats", type=int, default=5, help="runs of the plain pass")
    ap.add_argument("--profile", action="store_true", help="time each pass warm and profile the ReCaLL pass")
    ap.add_argument("--dtype", default="auto", help="model dtype (auto: bfloat16 on CUDA, float32 on the CPU)")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from memlens import progress
    from memlens.attacks import AttackInputs, attack_labels, run_attack
    from memlens.data import read_phee
    from memlens.models import load_model
    from memlens.scoring import score_cached, score_ids
    from memlens.tokens import encode

    progress.set_enabled(False)
    rss_libs = _rss_now()  # Python, torch, transformers, peft: what any process using them holds
    lm = load_model(args.model, dtype=args.dtype)
    device, dtype = lm.info["device"], lm.model.dtype
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), dtype {dtype}"
    )
    peak = matmul_peak(device, dtype)
    print(f"matmul peak ({dtype}): {peak / 1e9:,.0f} GFLOP/s")

    texts = [t.text for t in read_phee(args.data_dir, "train")[: args.n]]
    prefix_text = " ".join(t.text for t in read_phee(args.data_dir, "dev")[:5]) + " "
    tok = lm.tokenizer
    pad = tok.pad_token_id
    ks = [0.1, 0.2, 0.3, 0.4, 0.5]
    n_params = sum(p.numel() for p in lm.model.parameters())
    ids = encode(tok, texts, args.max_tokens).ids
    all_tokens = sum(len(s) for s in ids)

    # one plain pass of the pre-trained model (no adapter), each run between two peak measurements: the machine's
    # speed drifts by ±10% from minute to minute, so each run is compared with the higher peak around it
    score_ids(lm.model, ids[:32], pad, batch_size=args.batch_size)  # warm-up
    rates, shares, peaks = [], [], [peak]
    for _ in range(args.repeats):
        sync(device)
        t = time.perf_counter()
        score_ids(lm.model, ids, pad, batch_size=args.batch_size)
        sync(device)
        rates.append(all_tokens / (time.perf_counter() - t))
        peaks.append(matmul_peak(device, dtype))
        shares.append(2 * n_params * rates[-1] / max(peaks[-2:]))
    med = float(np.median(rates))
    print(
        f"one plain pass ({args.repeats} runs, median): {med:,.0f} tokens/s ({min(rates):,.0f}–{max(rates):,.0f}), "
        f"{2 * n_params * med / 1e9:,.0f} GFLOP/s (2 × {n_params / 1e6:.1f}M params × tokens); share of the matmul "
        f"peak measured around each run ({min(peaks) / 1e9:,.0f}–{max(peaks) / 1e9:,.0f} GFLOP/s): median "
        f"{100 * float(np.median(shares)):.0f}% ({100 * min(shares):.0f}–{100 * max(shares):.0f}%)"
    )
    peak = max(peaks)

    torch.manual_seed(0)
    model = get_peft_model(lm.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a LoRA that changes the model, so target ≠ reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    model.eval()

    def passes(sample: list[str]) -> tuple[dict, int]:
        """The engine's four passes over ``sample`` (each a call without arguments, built as the runner builds
        them) and the number of tokens of the lower-cased texts."""
        sample_ids = encode(tok, sample, args.max_tokens).ids
        lower_ids = encode(tok, [s.lower() for s in sample], args.max_tokens).ids
        prefix = encode(tok, [prefix_text], 10**9).ids[0]  # with its start token, as the runner builds it
        kw = {"batch_size": args.batch_size}
        fns = {
            "target": lambda: score_ids(model, sample_ids, pad, **kw),
            "reference": lambda: score_ids(model, sample_ids, pad, disable_adapters=True, **kw),
            "lowercase": lambda: score_ids(model, lower_ids, pad, **kw),
            "recall": lambda: score_ids(model, sample_ids, pad, prefix=prefix, **kw),
        }
        return fns, sum(len(s) for s in lower_ids)

    def engine(sample: list[str]) -> tuple[dict, int, dict]:
        times, t0 = {}, time.perf_counter()
        fns, lowered = passes(sample)

        def timed(name, fn):
            t = time.perf_counter()
            out = fn()
            sync(device)
            times[name] = time.perf_counter() - t
            return out

        inputs = AttackInputs(texts=sample, **{name: timed(name, fn) for name, fn in fns.items()})
        labels = ["loss", "reference", "zlib", "lowercase", "recall", "min_k", "min_k_plus"]
        out = timed("attacks", lambda: {lab: run_attack(n, inputs, k) for lab, n, k in attack_labels(labels, ks)})
        times["total"] = time.perf_counter() - t0
        times["pass_tokens"] = 3 * all_tokens + lowered if sample is texts else 0
        return out, int(inputs.target.lengths.sum()), times

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fast, n_tok, times = engine(texts)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_fast = times["total"]
    print(
        f"\nengine, all {len(fast)} attack scores for {len(texts)} texts ({n_tok:,} scored tokens): "
        f"{t_fast:.1f} s = {n_tok / t_fast:,.0f} text tokens/s"
    )
    print("  " + ", ".join(f"{k} {times[k]:.1f} s" for k in ("target", "reference", "lowercase", "recall", "attacks")))
    if args.profile:
        _profile(passes(texts)[0], device)

    sub = texts[: args.naive_n]
    fast_sub, n_tok_sub, _ = engine(sub)
    t = time.perf_counter()
    slow = naive_scores(model, tok, sub, prefix_text, ks, args.max_tokens)
    sync(device)
    t_slow = time.perf_counter() - t
    naive_rate = n_tok_sub / t_slow
    print(
        f"naive loop, same attacks for {len(sub)} texts ({n_tok_sub:,} tokens): {t_slow:.1f} s = "
        f"{naive_rate:,.0f} text tokens/s"
    )
    diffs = {k: float(np.nanmax(np.abs(fast_sub[k] - slow[k]))) for k in slow}
    rel = {k: float(np.nanmax(np.abs(fast_sub[k] - slow[k]) / np.maximum(np.abs(slow[k]), 1.0))) for k in slow}
    worst = max(diffs, key=diffs.get)
    print(
        f"speed-up: {(n_tok / t_fast) / naive_rate:.1f}x; largest per-sample score difference: {diffs[worst]:.2e} "
        f"({worst}); largest relative difference (÷ max(|score|, 1)): {max(rel.values()):.2e}"
    )
    print("  per attack: " + ", ".join(f"{k} {v:.0e}" for k, v in diffs.items()))
    # the reference both ways are measured against: in fp32, the same logits reduced in fp64; in a half precision,
    # where both ways round hidden states and logits differently, the same model in fp32 (its logits in fp64)
    half = dtype != torch.float32
    truth = copy.deepcopy(model).float() if half else model
    exact = naive_scores(truth, tok, sub[:8], prefix_text, ks, args.max_tokens, reduce_dtype=torch.float64)
    del truth
    err = {
        name: {k: float(np.nanmax(np.abs(v[k][:8] - exact[k]))) for k in exact}
        for name, v in (("engine", fast_sub), ("naive", slow))
    }
    label = "the same model in fp32, logits reduced in fp64" if half else "the same fp32 logits reduced in fp64"
    worst_e, worst_n = (max(err[w], key=err[w].get) for w in ("engine", "naive"))
    print(
        f"  against {label} (8 texts): engine {err['engine'][worst_e]:.1e} ({worst_e}), naive "
        f"{str(dtype).removeprefix('torch.')} loop {err['naive'][worst_n]:.1e} ({worst_n}) (largest per-sample "
        f"score difference); loss: engine {err['engine']['loss']:.1e}, naive {err['naive']['loss']:.1e}"
    )
    t_sweep = t_fast - times["reference"]
    print(
        f"speed-up per configuration of a sweep (reference statistics from the cache, 3 passes): "
        f"{(n_tok / t_sweep) / naive_rate:.1f}x"
    )
    # what no implementation could beat on this machine: the passes' FLOPs at 100% of the matmul peak
    t_floor = 2 * n_params * times["pass_tokens"] / peak
    naive_share = 2 * n_params * naive_rate * _naive_passes(sub, tok, prefix_text, args.max_tokens) / peak
    print(
        f"ceiling at 100% of the matmul peak: 4 passes {n_tok / t_floor / naive_rate:.1f}x, "
        f"3 passes {n_tok / (t_floor * 3 / 4) / naive_rate:.1f}x over this naive loop "
        f"(its batch-1 passes run at {100 * naive_share:.0f}% of the peak)"
    )

    weights_mb = n_params * lm.model.dtype.itemsize / 2**20
    longest = max(len(s) for s in ids)
    logits_mb = args.batch_size * longest * len(tok) * 4 / 2**20
    working = rss1 - rss_libs - weights_mb
    print(
        f"peak RSS: {rss1:,.0f} MiB (peak before the engine ran: {rss0:,.0f} MiB) = libraries {rss_libs:,.0f} MiB + "
        f"weights {weights_mb:,.0f} MiB + {working:,.0f} MiB of everything else; target ≤ 2 × weights + one "
        f"batch's activations, i.e. everything else ≤ {weights_mb:,.0f} MiB + activations (one batch's full "
        f"logits alone would be {logits_mb:,.0f} MiB; the engine never builds them)"
    )

    with tempfile.TemporaryDirectory() as cache:
        os.environ["MEMLENS_CACHE"] = cache
        calls = []
        hook = lm.model.register_forward_hook(lambda *a: calls.append(1))
        t = time.perf_counter()
        _, hit1 = score_cached(model, ids, pad, identity=lm.info["identity"], disable_adapters=True)
        t1 = time.perf_counter() - t
        n1 = len(calls)
        t = time.perf_counter()
        _, hit2 = score_cached(model, ids, pad, identity=lm.info["identity"], disable_adapters=True)
        t2 = time.perf_counter() - t
        hook.remove()
        print(
            f"\nreference pass through the cache: first {t1:.1f} s ({n1} forward calls, hit={hit1}); "
            f"second {t2:.2f} s ({len(calls) - n1} forward calls, hit={hit2})"
        )


if __name__ == "__main__":
    sys.exit(main())
