"""How large a preset must be to answer its questions: a pilot run's paired CIs, scaled to another size.

Each finding is a difference of AUCs or of mean loss drops between configurations measured on the same ``m``
members and ``n`` non-members. Both are averages of per-text terms (DeLong's structural components; the
drops), so the variance of the difference falls as 1/m + 1/n. A pilot (e.g. ``--scale tiny``) gives each
finding's bootstrap standard error SE (its 95% CI width / 3.92); at another size

    SE' = SE · sqrt((1/m' + 1/n') / (1/m + 1/n)),

the CI half-width is 1.96 · SE', and a difference Δ is resolved with power 1 − β at level α (two-sided) when
(z_{1−α/2} + z_{1−β}) · SE' ≤ Δ, which with m' = n' gives the texts per set needed. What a pilot cannot
predict: that more epochs or another model change the effect itself, and the seed variance when the pilot
had one seed. The wall time is the target trials' estimates
(:func:`memlens.experiments.sweep.estimate_seconds`) times the median ratio of measured to estimated seconds
over the pilot's trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from memlens.experiments.findings import Finding

Z95 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class PowerRow:
    """One tested difference of a pilot, projected to another size (half-widths in the measure's unit)."""

    finding: str
    measure: str
    what: str
    diff: float
    half_width: float  # the pilot's 95% CI half-width
    projected: float  # at the target size
    needed: int | None  # texts per set (members = non-members) to resolve ``delta`` with the asked power
    detectable: float  # the smallest difference resolved with the asked power at the target size


def power_table(
    findings: list[Finding],
    pilot: tuple[int, int],
    target: tuple[int, int],
    *,
    delta: float = 0.03,
    power: float = 0.8,
    alpha: float = 0.05,
    measure: str = "auc",
) -> list[PowerRow]:
    """Every tested difference of ``measure`` in ``findings`` (from a pilot with ``pilot = (members,
    non-members)``), with its CI half-width at ``target`` and the texts per set needed to resolve ``delta``."""
    if not 0 < power < 1 or not 0 < alpha < 1 or delta <= 0:
        raise ValueError("need 0 < power < 1, 0 < alpha < 1 and delta > 0")
    (m, n), (m2, n2) = pilot, target
    if min(m, n, m2, n2) < 1:
        raise ValueError(f"sizes must be positive, got pilot {pilot} and target {target}")
    shrink = math.sqrt((1 / m2 + 1 / n2) / (1 / m + 1 / n))
    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    rows = []
    for f in findings:
        for check in f.tests.get(measure, []):
            d = check.difference
            if d.metric != measure:  # a regression's slope or R² (Study B's (2)) does not scale as 1/m + 1/n
                continue
            se = (d.ci_high - d.ci_low) / (2 * Z95)
            if not math.isfinite(se):
                continue
            # SE at k texts per set: se · sqrt((2/k) / (1/m + 1/n)); solve z · SE_k ≤ delta for k
            needed = math.ceil(2 * (z * se / delta) ** 2 / (1 / m + 1 / n)) if se > 0 else None
            claim = f.key
            rows.append(
                PowerRow(claim, measure, check.what, d.diff, Z95 * se, Z95 * se * shrink, needed, z * se * shrink)
            )
    return rows


def projected_seconds(pilot_trials, sweep) -> float | None:
    """The target sweep's wall time on the pilot's machine: each finished pilot trial's measured seconds over its
    estimate at the rates of the device it ran on; the median of those ratios on the pilot's most frequent
    device, times the target trials' estimates on that device (or on their own, where a trial names it)."""
    from collections import Counter

    import pandas as pd

    from memlens.config import parse_config
    from memlens.experiments.sweep import FLOPS, approx_parameters, estimate_seconds

    done = pilot_trials[pilot_trials["status"] == "done"]
    if done.empty or not sweep.trials:
        return None
    ratios: list[tuple[float, str | None]] = []  # (measured ÷ estimated, the device the pilot trial ran on)
    for cfg_json, seconds, info in zip(done["config"], done["seconds"], done["info"], strict=True):
        cfg = parse_config(cfg_json)
        params = approx_parameters(cfg.model.name)
        ran = str(((info or {}).get("model") or {}).get("device") or "").split(":")[0]  # "cuda:0" -> "cuda"
        device = ran if ran in FLOPS else None
        if params and pd.notna(seconds) and (estimate := estimate_seconds(cfg, params, device=device)):
            ratios.append((float(seconds) / estimate, device))
    recorded = Counter(d for _, d in ratios if d is not None).most_common(1)
    device = recorded[0][0] if recorded else None  # the pilot's most frequent device (first seen on a tie)
    same = [r for r, d in ratios if d == device] or [r for r, _ in ratios]
    target = [
        e
        for t in sweep.trials
        if (p := approx_parameters(t.config.model.name))
        # a target that names its device runs there whatever the pilot used
        and (e := estimate_seconds(t.config, p, device=device if t.config.model.device == "auto" else None)) is not None
    ]
    if not same or not target:
        return None
    # the median measured/estimated ratio: robust to a trial slowed by other work on the machine
    return float(np.median(same)) * sum(target) * len(sweep.trials) / len(target)
