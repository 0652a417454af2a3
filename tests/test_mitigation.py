"""DynamicCut: rank members by memorization, leave the top fraction out, fine-tune again, beside a random cut."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, invoke, tiny_config, write_config

from memlens.config import parse_config
from memlens.errors import MemlensError
from memlens.experiments.mitigation import intensity
from memlens.experiments.runner import Measured, measure
from memlens.report.summary import mitigation_lines


def _measured(nll_by_epoch: dict[int, list[float]], n_members: int) -> Measured:
    scores = {e: {"nll": np.array(v, dtype=float)} for e, v in nll_by_epoch.items()}
    n = len(nll_by_epoch[0])
    return Measured({}, scores, [f"t{i}" for i in range(n)], n_members, np.ones(n, bool))


def test_intensity_is_the_loss_drop_averaged_over_the_fine_tuned_epochs():
    m = _measured({0: [3.0, 3.0, 2.0, 5.0], 1: [2.0, 3.0, 1.0, 5.0], 2: [1.0, np.nan, 1.0, 4.0]}, n_members=3)
    assert intensity(m)[0] == pytest.approx(1.5) and intensity(m)[2] == pytest.approx(1.0)
    assert intensity(m)[1] == -np.inf  # a member with no score at some epoch is never ranked first
    assert len(intensity(m)) == 3  # members only


def test_intensity_can_be_an_attacks_score_averaged_over_the_epochs():
    m = _measured({0: [3.0, 3.0, 2.0, 5.0], 1: [2.0, 3.0, 1.0, 5.0], 2: [1.0, 2.0, 1.0, 4.0]}, n_members=3)
    m.scores[0]["lira"] = np.array([9.0, 9.0, 9.0, 9.0])  # the pre-trained model's scores are not averaged in
    m.scores[1]["lira"] = np.array([0.5, 2.0, np.nan, 1.0])
    m.scores[2]["lira"] = np.array([1.5, 1.0, 3.0, 1.0])
    got = intensity(m, "lira")
    assert got[:2] == pytest.approx([1.0, 1.5]) and got[2] == -np.inf and len(got) == 3
    with pytest.raises(MemlensError, match=r"with min_k@0\.2 to rank"):
        intensity(m, "min_k@0.2")


def test_dynamiccut_ranks_by_lira_calibrated_on_reference_models(tiny_dir, tmp_path):
    mitigation = {"method": "dynamiccut", "fraction": 0.25, "rank_by": "lira", "control": False}
    attacks = {"names": ["loss", "lira"], "reference_models": 1}
    cfg = tiny_config(tiny_dir, tmp_path / "out", training={"epochs": 2}, mitigation=mitigation, attacks=attacks)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["mitigation"]["rank_by"] == "lira" and results["mitigation"]["dropped"] == 6
    assert results["reference_models"]["k"] == 1
    assert results["reference_models"]["cached"] == [True]  # trained once, for the ranking fine-tune
    assert "ranked by lira" in result.stdout


def test_leaving_members_out_trains_without_them_and_reports_both_subsets(tiny_dir, tmp_path):
    cfg = parse_config(tiny_config(tiny_dir, tmp_path / "out", training={"epochs": 2}))
    full = measure(cfg, None)
    out = set(full.ids[:6])
    cut = measure(cfg, None, leave_out=frozenset(out))
    assert cut.results["training"]["train_tokens"] < full.results["training"]["train_tokens"]
    subsets = cut.results["subsets"]
    last = {(r["subset"], r["attack"]): r for r in subsets if r["epoch"] == 2 and r["metric"] == "auc"}
    trained, left = last[("trained", "loss")], last[("left_out", "loss")]
    assert trained["n_members"] == 18 and left["n_members"] == 6 and trained["n_nonmembers"] == 24
    assert trained["value"] > left["value"]  # what the model was not trained on, it did not memorize
    assert "subsets" not in full.results


def test_dynamiccut_run_leaves_out_the_most_memorized_beside_a_random_control(tiny_dir, tmp_path):
    mitigation = {"method": "dynamiccut", "fraction": 0.25}
    cfg = tiny_config(tiny_dir, tmp_path / "out", training={"epochs": 2}, mitigation=mitigation)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    m = results["mitigation"]
    assert m["dropped"] == 6 and m["trained"] == 18 and len(m["dropped_ids"]) == 6
    assert len(m["control_ids"]) == 6 and set(m["control_ids"]) != set(m["dropped_ids"])
    members = {line.split(",")[0] for line in (tmp_path / "out" / "scores.csv").read_text().splitlines()[1:]}
    assert set(m["dropped_ids"]) <= members
    assert {c["versus"] for c in m["comparisons"]} == {"unmitigated", "random cut"}
    assert all(c["ci_low"] <= c["diff"] <= c["ci_high"] for c in m["comparisons"])
    assert {r["subset"] for r in results["subsets"]} == {"trained", "left_out"}
    assert any(r["metric"] == "val_ppl" for r in m["ranking_records"] + m["control_records"])
    lines = mitigation_lines(m, results["subsets"])
    assert lines[0].startswith("mitigation DynamicCut: left out the 6 most memorized members")
    assert any(
        line.startswith("  left-out members vs non-members, loss: AUC ") and "random cut" in line for line in lines
    )
    assert "DynamicCut" in result.stdout


def test_the_ranking_can_come_from_another_method_than_the_run(tiny_dir, tmp_path):
    """Ranking transfer: rank with LoRA, cut and fine-tune in full."""
    mitigation = {"method": "dynamiccut", "fraction": 0.25, "rank_method": "lora", "control": False}
    cfg = tiny_config(tiny_dir, tmp_path / "out", training={"epochs": 2}, mitigation=mitigation)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["tuning"]["method"] == "full" and results["tuning"]["trainable_share"] == 1.0
    m = results["mitigation"]
    assert m["rank_method"] == "lora" and m["dropped"] == 6 and "control_ids" not in m
    assert "ranked by loss drop under lora" in result.stdout


@pytest.mark.parametrize(
    ("mitigation", "pattern"),
    [
        ({"method": "dynamiccut", "fraction": 0.01}, "leaves out 0: need 1 to n-1"),
        ({"method": "dynamiccut", "fraction": 1.0}, "mitigation.fraction"),
        ({"method": "dynamiccut", "rank_by": "vibes"}, "mitigation.rank_by 'vibes' is neither loss_drop nor a conf"),
    ],
)
def test_bad_dynamiccut_settings_are_one_clear_error(tiny_dir, tmp_path, mitigation, pattern):
    cfg = tiny_config(tiny_dir, tmp_path / "out", mitigation=mitigation)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "out").exists()
