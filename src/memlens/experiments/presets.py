"""Paper presets: the two studies' designs as sweeps, and their findings checked against memlens's numbers.

- ``savine2025``: "Memorization in Fine-Tuned Large Language Models" (arXiv 2507.21009), Study B in
  arXiv 2507.21009: LoRA on one attention matrix at a time (W_Q, W_K, W_V, W_O, [W_Q, W_K]) at ranks 1, 2, 4
  on PHEE, reference-model attack.
- ``hou2025``: "Impact of Fine-Tuning Methods on Memorization in Large Language Models" (arXiv 2507.00258),
  Study A: FT head, LoRA, prefix, prompt and P-tuning (plus full fine-tuning), memorization per epoch, and LoRA
  placement (attention / MLP / both). The study used Wikitext, WebNLG and XSum, which cannot be fetched here:
  memlens runs the same design on PHEE and says so.

``--scale``: ``tiny`` fits a 2-core CPU in about 20 minutes (SmolLM2-135M, a few hundred sentences);
``small`` is a longer CPU run; ``full`` uses the studies' data sizes and epochs and is meant for a GPU.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memlens.errors import MemlensError
from memlens.files import write_text
from memlens.metrics import linear_fit

SCALES = {
    #        members, non-members, validation, epochs, batch
    "tiny": (96, 96, 48, 2, 8),
    "small": (500, 500, 200, 3, 16),
    "full": (0, 0, 0, 3, 16),  # 0 = everything: PHEE's 2,898 train / 968 test sentences
}


def _base(scale: str, **training) -> dict:
    n_mem, n_non, n_val, epochs, batch = SCALES[scale]
    return {
        "model": {"name": "smollm2-135m"},
        "data": {
            "source": "phee",
            "n_members": n_mem,
            "n_nonmembers": n_non,
            "n_validation": n_val,
            "max_tokens": 64 if scale == "tiny" else 128,
        },
        "training": {"epochs": epochs, "batch_size": batch} | training,
        "attacks": {"names": ["loss", "reference", "zlib", "min_k"], "k": [0.2]},
    }


def savine2025(scale: str) -> dict:
    """Study B: one matrix at a time, ranks 1/2/4, alpha 16, dropout 0.05, lr 1e-3, warm-up."""
    base = _base(scale, lr=1e-3, warmup_ratio=0.1, eval_every=0)
    base["tuning"] = {"method": "lora", "alpha": 16, "dropout": 0.05}
    if scale == "full":
        base["training"] |= {"grad_accum": 4}
    return {
        "name": f"savine2025-{scale}",
        "base": base,
        "grid": {"targets": [["q"], ["k"], ["v"], ["o"], ["q", "k"]], "rank": [1, 2, 4]},
    }


SIZE_MODEL = "gemma3-270m"  # the larger model of finding (3); a built-in name (pip-installable, Gemma terms)
SIZE_LABEL = f"{SIZE_MODEL} lora all"


def hou2025(scale: str) -> dict:
    """Study A: every method, memorization per epoch, LoRA placement, and model size (LoRA on all matrices
    of Gemma-3-270M beside SmolLM2-135M; without Gemma installed that trial fails with the install command
    and the finding reads "not measured")."""
    base = _base(scale, eval_every=1)
    base["tuning"] = {"method": "lora", "rank": 8, "alpha": 16, "virtual_tokens": 20}
    if scale == "full":
        base["training"]["epochs"] = 15
    methods = [{"label": m, "method": m} for m in ("head", "prefix", "prompt", "ptuning", "full")]
    placement = [{"label": f"lora {t}", "method": "lora", "targets": [t]} for t in ("attn", "mlp", "all")]
    size = [{"label": SIZE_LABEL, "method": "lora", "targets": ["all"], "model": SIZE_MODEL}]
    return {"name": f"hou2025-{scale}", "base": base, "variants": methods + placement + size}


PRESETS = {"savine2025": savine2025, "hou2025": hou2025}


@dataclass
class Finding:
    claim: str
    published: str
    measured: str
    verdict: str  # "holds", "does not hold", "inconclusive", "not measured"


def preset_spec(name: str, scale: str) -> dict:
    if name not in PRESETS:
        raise MemlensError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    if scale not in SCALES:
        raise MemlensError(f"unknown scale {scale!r}; use tiny, small or full")
    return PRESETS[name](scale)


@dataclass(frozen=True)
class TrialAUC:
    """A finished trial's AUC of one attack at its last epoch, with the trial's stored config."""

    trial: int
    label: str
    config: dict
    auc: tuple[float, float, float]  # value, CI low, CI high

    @property
    def method(self) -> str:
        return self.config["tuning"]["method"]

    @property
    def targets(self) -> list[str]:
        return list(self.config["tuning"].get("targets") or [])

    @property
    def model(self) -> str:
        return self.config["model"]["name"]


def _final_auc(store, attack: str) -> list[TrialAUC]:
    """Every finished trial's AUC of ``attack`` at its last epoch (95% CI), with its config."""
    df = store.results()
    df = df[(df.kind == "mia") & (df.attack == attack) & (df.metric == "auc") & df.epoch.notna()]
    last = df.loc[df.groupby("trial").epoch.idxmax()]
    configs = dict(zip(store.trials().id, store.trials().config, strict=True))
    return [
        TrialAUC(int(r.trial), r.label, configs[r.trial], (r.value, r.ci_low, r.ci_high)) for r in last.itertuples()
    ]


def _fmt(v: tuple) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _compare(claim: str, published: str, high: list[tuple], low: list[tuple], names: tuple[str, str]) -> Finding:
    """``high`` should memorize more than ``low``: holds when every high CI lies above every low mean, does not
    hold when the means are reversed, else inconclusive."""
    if not high or not low:
        return Finding(claim, published, "not measured", "not measured")
    mh, ml = np.mean([h[0] for h in high]), np.mean([lo[0] for lo in low])
    measured = f"mean AUC {names[0]} {mh:.3f} vs {names[1]} {ml:.3f}"
    if min(h[1] for h in high) > max(lo[0] for lo in low):
        verdict = "holds"
    elif mh < ml:
        verdict = "does not hold"
    else:
        verdict = "inconclusive (CIs overlap)"
    return Finding(claim, published, measured, verdict)


def savine_findings(store) -> list[Finding]:
    lora = [t for t in _final_auc(store, "reference") if t.method == "lora"]

    def pick(target: str) -> list[tuple]:
        return [t.auc for t in lora if t.targets == [target]]

    out = [
        _compare(
            "(1) W_V and W_O memorize more than W_Q and W_K at equal rank",
            "rank 4: W_V .83, W_O .80 vs W_Q .72, W_K .71 (reference AUC)",
            pick("v") + pick("o"),
            pick("q") + pick("k"),
            ("V,O", "Q,K"),
        ),
    ]
    ranks = sorted({t.config["tuning"]["rank"] for t in lora})
    per_rank = [np.mean([t.auc[0] for t in lora if t.config["tuning"]["rank"] == r]) for r in ranks]
    if len(ranks) >= 2:
        rising = all(b >= a - 0.01 for a, b in itertools.pairwise(per_rank))
        measured = ", ".join(f"r={r}: {a:.3f}" for r, a in zip(ranks, per_rank, strict=True))
        out.append(
            Finding(
                "(3) higher rank → more memorization, with diminishing returns",
                "AUC .909 at r=1 → .945 at r=128, plateau near r=50",
                f"mean AUC {measured}",
                "holds" if rising and per_rank[-1] > per_rank[0] else "does not hold",
            )
        )
    out.append(_perplexity_finding(store, lora))
    return out


def _perplexity_finding(store, trials: list[TrialAUC]) -> Finding:
    """(2): per-sample reference score vs the fine-tuned model's log-perplexity (members of the strongest trial)."""
    import pandas as pd

    claim = "(2) lower fine-tuned perplexity goes with more memorization; base perplexity does not"
    published = "R² = 0.135 (negative slope) vs fine-tuned PPL; R² = 0.004 vs base PPL"
    if not trials:
        return Finding(claim, published, "not measured", "not measured")
    strongest = max(trials, key=lambda t: t.auc[0])
    best, trial_id = strongest.label, strongest.trial
    path = store.trial_dir(trial_id) / "scores.csv"
    if not path.is_file():
        return Finding(claim, published, "scores.csv missing", "not measured")
    s = pd.read_csv(path)
    s = s[s.member == 1]
    last = s.epoch.max()
    ref = s[(s.epoch == last) & (s.attack == "reference")].set_index("id").score
    tuned = s[(s.epoch == last) & (s.attack == "nll")].set_index("id").score.reindex(ref.index)
    base = s[(s.epoch == 0) & (s.attack == "nll")].set_index("id").score.reindex(ref.index)
    slope_t, _, r2_t = linear_fit(tuned.to_numpy(), ref.to_numpy())
    *_, r2_b = linear_fit(base.to_numpy(), ref.to_numpy())
    measured = f"{best}: R² = {r2_t:.3f} (slope {slope_t:+.2f}) vs fine-tuned log-PPL; R² = {r2_b:.3f} vs base"
    verdict = "holds" if slope_t < 0 and r2_t > r2_b else "does not hold"
    return Finding(claim, published, measured, verdict)


def _parameter_based(t: TrialAUC) -> bool:
    return t.method in ("head", "full", "lora", "ia3")


def hou_findings(store) -> list[Finding]:
    trials = _final_auc(store, "loss")
    main = Counter(t.model for t in trials).most_common(1)[0][0] if trials else None
    larger = [t for t in trials if t.model != main]  # the size comparison's model (SIZE_MODEL in the preset)
    trials = [t for t in trials if t.model == main]
    out = [
        _compare(
            "(1) parameter-based methods memorize more than prompt-based ones",
            "LLaMA2-7B, Wikitext LOSS AUC: FT head .889, LoRA .787 vs prefix .484, prompt .478, P-tuning .487",
            [t.auc for t in trials if _parameter_based(t)],
            [t.auc for t in trials if t.method in ("prefix", "prompt", "ptuning")],
            ("parameter-based", "prompt-based"),
        ),
    ]
    df = store.results()
    curve = df[(df.kind == "mia") & (df.attack == "loss") & (df.metric == "auc") & df.epoch.notna()]
    grows: list[tuple[str, float]] = []
    flat: list[tuple[str, float]] = []
    for t in trials:
        g = curve[curve.trial == t.trial].sort_values("epoch")
        if len(g) >= 3:
            (grows if _parameter_based(t) else flat).append((t.label, g.value.iloc[-1] - g.value.iloc[1]))
    if grows and flat:
        measured = "AUC change after epoch 1: " + ", ".join(f"{k} {d:+.3f}" for k, d in grows + flat)
        ok = min(d for _, d in grows) > max(abs(d) for _, d in flat)
        out.append(
            Finding(
                "(2) parameter-based memorization grows over epochs; prompt-based stays flat",
                "Figures 2–3 of the study",
                measured,
                "holds" if ok else "does not hold",
            )
        )
    placement = {t.targets[0]: t.auc for t in trials if t.method == "lora" and len(t.targets) == 1}
    if {"attn", "mlp", "all"} <= set(placement):
        a, m, b = placement["attn"], placement["mlp"], placement["all"]
        measured = f"attn {_fmt(a)}, mlp {_fmt(m)}, both {_fmt(b)}"
        verdict = "holds" if a[0] < m[0] < b[0] else "does not hold"
        out.append(
            Finding(
                "(5) LoRA placement: attention < MLP < both", "Wikitext LOSS: .552 < .579 < .616", measured, verdict
            )
        )
    claim, published = "(3) larger models memorize more (parameter-based)", "GPT-2 117M → LLaMA2-7B"
    if larger and "all" in placement:
        big, small = larger[0].auc, placement["all"]
        size = _compare(claim, published, [big], [small], ("Gemma-3-270M", "SmolLM2-135M"))
        size.measured += (
            f" (LoRA on all matrices: {_fmt(big)} vs {_fmt(small)}; two model families, base vs"
            " instruct, so size is not the only difference)"
        )
        out.append(size)
    else:
        missing = f"needs the {SIZE_MODEL} trial (see `memlens models list`)"
        out.append(Finding(claim, published, missing, "not measured"))
    return out


FINDINGS = {"savine2025": savine_findings, "hou2025": hou_findings}


def findings_markdown(name: str, store, command: str) -> str:
    """The Markdown summary of a preset: each published finding beside memlens's numbers and a verdict."""
    rows = FINDINGS[name](store)
    lines = [
        f"# {name}: published findings vs memlens",
        "",
        f"Command: `{command}`",
        "",
        "| finding | published | measured here | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f.claim} | {f.published} | {f.measured} | **{f.verdict}** |" for f in rows]
    auc = _final_auc(store, "reference" if name == "savine2025" else "loss")
    lines += ["", "AUC at the last epoch (95% bootstrap CI):", "", "| trial | AUC |", "|---|---|"]
    lines += [f"| {t.label} | {_fmt(t.auc)} |" for t in sorted(auc, key=lambda t: t.label)]
    return "\n".join(lines) + "\n"


def write_findings(name: str, folder: Path, command: str) -> Path:
    from memlens.experiments.store import Store

    store = Store(folder, create=False)
    return write_text(folder / "findings.md", findings_markdown(name, store, command))
