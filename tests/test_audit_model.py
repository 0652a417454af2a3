"""`memlens audit`: a model fine-tuned elsewhere — here, by memlens itself, then loaded back as a plain peft
adapter — measured with no training gives the numbers the fine-tuning run gave."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import assert_one_line_error, invoke, phee_texts, tiny_config, write_config, write_jsonl

from memlens.config import parse_config
from memlens.errors import MemlensError
from memlens.experiments import run
from memlens.experiments.audit import audit


@pytest.fixture(scope="module")
def fine_tuned(tiny_dir, tmp_path_factory):
    """A LoRA fine-tune by `memlens run` with its adapter saved, and the data files it used."""
    tmp = tmp_path_factory.mktemp("audit")
    files = {
        "members": write_jsonl(tmp / "m.jsonl", phee_texts("train", 24)),
        "nonmembers": write_jsonl(tmp / "n.jsonl", phee_texts("test", 24)),
        "validation": write_jsonl(tmp / "v.jsonl", phee_texts("dev", 12)),
    }
    data = {"source": "files", "n_members": 0, "n_nonmembers": 0, "n_validation": 0} | {
        k: str(v) for k, v in files.items()
    }
    cfg = tiny_config(
        tiny_dir,
        tmp / "run",
        data=data,
        tuning={"method": "lora", "rank": 4},
        training={"epochs": 3, "lr": 1e-2},
        output={"save_adapter": True},
        attacks={"bootstrap": 100},
    )
    results = run(parse_config(cfg))
    return tmp, files, results, cfg


def _auc(results, epoch, attack="loss", metric="auc"):
    return next(
        r
        for r in results["records"]
        if (r["epoch"], r["attack"], r["metric"], r["kind"]) == (epoch, attack, metric, "mia")
    )


def test_auditing_an_adapter_reproduces_the_fine_tuning_runs_numbers(fine_tuned, tmp_path):
    """The run's own config file (its [tuning] and [training] are ignored) and the adapter it saved."""
    tmp, _, ran, _ = fine_tuned
    out = tmp / "audited"
    result = invoke(
        "audit", str(tmp / "run" / "config.toml"), "--adapter", str(tmp / "run" / "model"), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "AUC audited model" in result.stdout and "no training" in result.stdout
    audited = json.loads((out / "results.json").read_text())
    for attack in ("loss", "reference", "zlib", "min_k@0.2"):
        assert _auc(audited, 1, attack)["value"] == pytest.approx(_auc(ran, 3, attack)["value"], abs=1e-6), attack
        if attack != "reference":  # the base model with the adapter disabled is the pre-trained model
            assert _auc(audited, 0, attack)["value"] == pytest.approx(_auc(ran, 0, attack)["value"], abs=1e-6)
    gap = [r for r in audited["records"] if r["metric"] == "loss_gap"]
    ran_gap = [r for r in ran["records"] if r["metric"] == "loss_gap" and r["epoch"] == 3]
    assert gap[0]["value"] == pytest.approx(ran_gap[0]["value"], abs=1e-6)
    assert _auc(audited, 1)["beats_pretrained"] is not None
    assert audited["tuning"]["trainable_parameters"] == ran["tuning"]["trainable_parameters"]
    assert (out / "scores.csv").is_file() and invoke("report", "--dir", str(out)).exit_code == 0


def test_a_checkpoint_without_a_base_skips_the_reference_attack(fine_tuned, tiny_dir):
    tmp, _, _, cfg = fine_tuned
    results = audit(parse_config(cfg | {"output": {"dir": str(tmp / "plain")}}))
    assert {r["epoch"] for r in results["records"] if r["kind"] == "mia"} == {1}
    assert not [r for r in results["records"] if r["attack"] == "reference" or r["kind"] == "effect"]
    assert "Reference attack and the loss gap are not measured" in results["audit"]["notes"][0]


def test_bad_audits_are_one_clear_line(fine_tuned, tiny_dir, tmp_path):
    tmp, files, _, cfg = fine_tuned
    common = ["--members", str(files["members"]), "--nonmembers", str(files["nonmembers"])]
    assert_one_line_error(
        invoke("audit", "--model", str(tiny_dir), *common), "needs --members, --nonmembers and --validation"
    )
    common += ["--validation", str(files["validation"]), "--out", str(tmp_path / "o")]
    assert_one_line_error(
        invoke("audit", "--model", str(tiny_dir), "--adapter", str(tmp_path), *common), "not a peft adapter folder"
    )
    broken = shutil.copytree(tmp / "run" / "model", tmp_path / "broken")
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["no_such_proj"]}))
    assert_one_line_error(
        invoke("audit", "--model", str(tiny_dir), "--adapter", str(broken), *common), "does not fit model"
    )
    (tmp_path / "pickled").mkdir()
    shutil.copy(broken / "adapter_config.json", tmp_path / "pickled")
    assert_one_line_error(
        invoke("audit", "--model", str(tiny_dir), "--adapter", str(tmp_path / "pickled"), *common), "safetensors only"
    )
    with pytest.raises(MemlensError, match="canaries are planted during training"):
        audit(parse_config(cfg | {"canaries": {"enabled": True}}))
    adapter_in_run = write_config(tmp_path / "c.toml", cfg | {"model": cfg["model"] | {"adapter": str(broken)}})
    assert_one_line_error(invoke("run", str(adapter_in_run)), "measure it with `memlens audit`")
    assert not (tmp_path / "o").exists()  # nothing half-written
