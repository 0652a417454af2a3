"""Test helpers: PHEE texts, the tiny model and its run config, driving the CLI (fixtures: conftest.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from memlens.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
PHEE = Path(os.environ.get("MEMLENS_DATA_DIR") or ROOT.parent / "shared" / "data" / "phee")
os.environ.setdefault("MEMLENS_DATA_DIR", str(PHEE))


def phee_texts(split: str = "train", n: int | None = None) -> list[str]:
    with (PHEE / f"{split}.jsonl").open() as fh:
        texts = [json.loads(line)["context"] for line in fh]
    return texts[:n] if n else texts


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({"id": f"t{i}", field: t}) + "\n" for i, t in enumerate(texts)))
    return path


def build_tiny(out: Path) -> Path:
    """A 2-layer Llama (hidden 64) and a 512-token byte-level BPE tokenizer, saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(phee_texts("train") + phee_texts("dev"), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return out


def tiny_config(tiny_dir: Path, out: Path, **sections) -> dict:
    """A run config (as a dict) for the tiny model on a small PHEE subset."""
    cfg = {
        "name": "tiny",
        "model": {"name": str(tiny_dir), "device": "cpu"},
        "data": {
            "source": "phee",
            "dir": str(PHEE),
            "n_members": 24,
            "n_nonmembers": 24,
            "n_validation": 16,
            "max_tokens": 48,
        },
        "tuning": {"method": "full"},
        "training": {"epochs": 1, "lr": 3e-3, "batch_size": 8},
        "attacks": {"bootstrap": 200},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def invoke(*args, env: dict | None = None):
    """Run ``memlens ARGS`` in-process; returns click's ``Result`` (stdout and stderr kept apart)."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(tomli_w.dumps(cfg))
    return path


def assert_one_line_error(result, pattern: str) -> None:
    """Exit status 2, one ``error: ...`` line on stderr matching ``pattern``, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (relative) with its bytes (None for folders): to prove nothing changed."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}
