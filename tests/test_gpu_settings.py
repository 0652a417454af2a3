"""The large-model settings that need no GPU to check: QLoRA's loading arguments and refusals, accelerate's
device map (which also runs on CPU), and the dtype each device gets."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, invoke, phee_texts, tiny_config, write_config

from memlens.errors import MemlensError
from memlens.models.loading import placement_kwargs, resolve_dtype

TEXTS = phee_texts("dev", 6)


def test_dtype_follows_the_device():
    assert resolve_dtype("auto", "cuda") is torch.bfloat16 and resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("float16", "cuda") is torch.float16


def test_qlora_loads_nf4_with_double_quantization_on_the_first_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))  # present, not used here
    kw = placement_kwargs("cuda", torch.bfloat16, "4bit", None)
    q = kw["quantization_config"]
    assert q.load_in_4bit and not q.load_in_8bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype is torch.bfloat16 and kw["device_map"] == {"": 0}
    kw8 = placement_kwargs("cuda", torch.bfloat16, "8bit", "auto")
    assert kw8["quantization_config"].load_in_8bit and kw8["device_map"] == "auto"
    assert placement_kwargs("cpu", torch.float32, None, None) == {}  # loaded whole, then moved


def test_qlora_without_cuda_or_bitsandbytes_is_a_clear_error(monkeypatch):
    with pytest.raises(MemlensError, match="needs a CUDA GPU"):
        placement_kwargs("cpu", torch.float32, "4bit", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(MemlensError, match="pip install bitsandbytes"):
        placement_kwargs("cuda", torch.bfloat16, "4bit", None)


@pytest.mark.parametrize(
    ("model", "tuning", "privacy", "pattern"),
    [
        ({"quantization": "4bit", "device": "cpu"}, "lora", None, "needs a CUDA GPU"),
        ({"quantization": "4bit"}, "full", None, "would train the 4bit weights themselves"),
        ({"quantization": "8bit"}, "head", None, "takes an adapter method"),
        ({"quantization": "4bit"}, "lora", {"dp": True, "epsilon": 1.0}, "DP-SGD on a quantized base"),
        ({"quantization": "2bit"}, "lora", None, "model.quantization"),
        ({"device_map": "balanced"}, "lora", None, "model.device_map"),
        ({"device_map": "auto", "device": "cpu"}, "lora", None, "spreads a model over GPUs"),
    ],
)
def test_bad_large_model_settings_are_one_error_line(tmp_path, tiny_dir, model, tuning, privacy, pattern):
    cfg = tiny_config(tiny_dir, tmp_path / "out", model=model, tuning={"method": tuning})
    if privacy:
        cfg["privacy"] = privacy
    if "device" not in model:
        cfg["model"].pop("device")  # "auto": what a GPU user leaves it at
    assert_one_line_error(invoke("run", write_config(tmp_path / "c.toml", cfg)), pattern)
    assert not (tmp_path / "out").exists()


def test_a_device_mapped_model_scores_as_the_model_loaded_whole(tiny_dir):
    from memlens.models import load_model
    from memlens.scoring import score_texts

    whole = load_model(str(tiny_dir), device="cpu")
    mapped = load_model(str(tiny_dir), device="cpu", device_map="cpu")  # accelerate's placement, onto the CPU
    assert mapped.info["device_map"] == "cpu" and whole.info["identity"] == mapped.info["identity"]
    a = score_texts(whole.model, whole.tokenizer, TEXTS[:6]).nll()
    b = score_texts(mapped.model, mapped.tokenizer, TEXTS[:6]).nll()
    np.testing.assert_allclose(a, b, rtol=1e-6)
