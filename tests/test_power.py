"""A pilot's paired CIs projected to another size: the half-width scales as sqrt(1/m + 1/n), and the texts
needed to resolve a difference follow from it."""

from __future__ import annotations

import math

import pytest
from test_findings import M, N, savine_scores

from memlens.experiments.findings import evaluate_findings
from memlens.experiments.power import power_table


def test_projected_half_width_matches_a_run_at_that_size():
    """The same synthetic design measured with 150 and with 600 texts per set: the projection from the small
    one predicts the large one's half-width within 20%."""
    strengths = {"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7}
    small = evaluate_findings("savine2025", savine_scores(strengths))
    rows = power_table(small, (M, N), (4 * M, 4 * N))
    (row,) = rows
    assert row.projected == pytest.approx(row.half_width / 2)  # four times the texts: half the width
    large = evaluate_findings("savine2025", savine_scores(strengths, seed=1, per_set=4 * M))
    d = large[0].tests["auc"][0].difference
    assert (d.ci_high - d.ci_low) / 2 == pytest.approx(row.projected, rel=0.2)


def test_texts_needed_solve_the_power_equation():
    findings = evaluate_findings("savine2025", savine_scores({"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7}))
    (row,) = power_table(findings, (M, N), (M, N), delta=0.03, power=0.8)
    se = row.half_width / 1.959963984540054
    k = row.needed
    z = 1.959963984540054 + 0.8416212335729143
    se_k = se * math.sqrt((2 / k) / (1 / M + 1 / N))
    assert z * se_k <= 0.03 < z * se * math.sqrt((2 / (k - 1)) / (1 / M + 1 / N))
    assert row.detectable == pytest.approx(z * se)  # at the pilot's own size
    (at_k,) = power_table(findings, (M, N), (k, k), delta=0.03, power=0.8)
    (below,) = power_table(findings, (M, N), (k - 1, k - 1), delta=0.03, power=0.8)
    assert at_k.detectable <= 0.03 < below.detectable  # the texts needed are where 0.03 becomes detectable
    assert power_table(findings, (M, N), (M, N), measure="gap")[0].measure == "gap"
    with pytest.raises(ValueError, match="positive"):
        power_table(findings, (0, N), (M, N))
    with pytest.raises(ValueError, match="power"):
        power_table(findings, (M, N), (M, N), power=1.5)


def test_a_regression_is_not_projected_as_if_it_were_a_paired_auc():
    """Study B's (2) lives in the AUC column but is a slope and an R² difference over extracted members: the
    power table leaves it out rather than scale it as 1/m + 1/n."""
    from test_findings import with_shares

    strengths = {"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7}
    findings = evaluate_findings("savine2025", with_shares(savine_scores(strengths), -0.3))
    assert len(findings[1].tests["auc"]) == 2
    assert [r.finding for r in power_table(findings, (M, N), (M, N))] == ["(1)"]
