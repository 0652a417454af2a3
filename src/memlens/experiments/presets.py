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
The findings are tested in :mod:`memlens.experiments.findings`.
"""

from __future__ import annotations

import re
from typing import Any

from memlens.errors import MemlensError

SCALES = {
    #        members, non-members, validation, epochs, batch
    "tiny": (96, 96, 48, 2, 8),
    "small": (500, 500, 200, 3, 16),  # hou2025 small: 250 + 250 texts, 4 epochs
    "full": (0, 0, 0, 3, 16),  # 0 = everything: PHEE's 2,898 train / 968 test sentences
}
PRESET_DATA = ("phee", "sotu")  # datasets shipped inside memlens that a preset may run on


def set_sizes(spec: dict) -> tuple[int, int]:
    """The members and non-members a preset spec scores (the dataset's whole splits where it says 0)."""
    from memlens.config import DataConfig
    from memlens.data.splits import set_sizes as data_sizes

    data = DataConfig.model_validate(spec["base"]["data"])
    sizes = data_sizes(data)
    if sizes is None:
        raise MemlensError(f"cannot read the {data.source} data to count its texts")
    return sizes[0], sizes[1]


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


SMALL_RANK = 4  # savine2025 small: every matrix at this rank, W_V also at RANK_SERIES
RANK_SERIES = (1, 16, 64)
SMALL_EXTRACTED = 125  # savine2025 small: members (and as many non-members) extracted per trial


def savine2025(scale: str) -> dict:
    """Study B: one matrix at a time, alpha 16, dropout 0.05, lr 1e-3, warm-up; greedy extraction of members
    and non-members (Study B's prefix-generation measure, per text for finding (2)). ``tiny`` and ``full``:
    W_Q, W_K, W_V, W_O, [W_Q, W_K] at ranks 1, 2, 4. ``small`` buys power with fewer configurations (7, meant
    for three seeds, 500 + 500 texts): the four matrices at rank 4 (finding (1) at equal rank) and W_V also at
    ranks 1, 16 and 64 (the rank series of finding (3)); greedy extraction of 125 members and non-members."""
    base = _base(scale, lr=1e-3, warmup_ratio=0.1, eval_every=0)
    base["tuning"] = {"method": "lora", "alpha": 16, "dropout": 0.05}
    n_members = base["data"]["n_members"]
    n_extracted = min(n_members or 1000, SMALL_EXTRACTED if scale == "small" else 250)  # greedy, per set
    base["extraction"] = {"enabled": True, "n_texts": n_extracted, "prefix": 0.5, "greedy": True}
    if scale == "full":
        base["training"] |= {"grad_accum": 4}
    name = f"savine2025-{scale}"
    if scale == "small":
        series = [(t, SMALL_RANK) for t in "qkvo"] + [("v", r) for r in RANK_SERIES]
        return {"name": name, "base": base, "variants": [{"targets": [t], "rank": r} for t, r in series]}
    return {
        "name": name,
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
    if scale == "small":  # 4 epochs for the growth finding; 250 + 250 texts resolve ΔAUC 0.03 (tiny pilot)
        base["training"]["epochs"] = 4
        base["data"] |= {"n_members": 250, "n_nonmembers": 250}
    methods = [{"label": m, "method": m} for m in ("head", "prefix", "prompt", "ptuning", "full")]
    placement = [{"label": f"lora {t}", "method": "lora", "targets": [t]} for t in ("attn", "mlp", "all")]
    size = [{"label": SIZE_LABEL, "method": "lora", "targets": ["all"], "model": SIZE_MODEL}]
    return {"name": f"hou2025-{scale}", "base": base, "variants": methods + placement + size}


PRESETS = {"savine2025": savine2025, "hou2025": hou2025}


OWN_OPTIONS = {  # settings a preset takes through options of its own, which also check them
    "training.seed": "--seeds", "model.name": "--model", "data.source": "--data", "data.dir": "--data-dir",
}  # fmt: skip


def _set(spec: dict, axis: str, value: Any) -> str:
    """Set ``axis`` (a sweep axis or dotted key) to ``value`` in the preset's base config; return the part of the
    sweep's name that says so. Refused: a key the design varies itself, one with an option of its own, [output]."""
    import hashlib

    from memlens.experiments.sweep import AXES, config_key

    key = config_key(axis)
    varied = {config_key(a) for a in spec.get("grid", {})} | {
        config_key(k) for v in spec.get("variants", []) for k in v if k != "label"
    }
    if key in varied:
        raise MemlensError(f"--set {axis}: the design varies {key} itself")
    if key in OWN_OPTIONS or key.startswith("output."):
        raise MemlensError(f"--set {axis}: use {OWN_OPTIONS.get(key, 'the [output] of a run config')} instead")
    section, field = key.split(".", 1)
    spec["base"].setdefault(section, {})[field] = value
    name = next((a for a, k in AXES.items() if k == key), key)
    shown = (
        "+".join(map(str, value))
        if isinstance(value, list)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", shown).strip("-")
    if safe != shown or len(safe) > 32:  # lossy or long: a short hash keeps distinct values apart
        safe = safe[:24] + "-" + hashlib.sha1(repr(value).encode()).hexdigest()[:8]
    return f"{name}={safe}"


def preset_spec(
    name: str,
    scale: str,
    seeds: list[int] | None = None,
    data: str = "phee",
    model: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict:
    """The preset's sweep; with several ``seeds`` every trial runs once per training seed (sweep name
    ``NAME-SCALE-Nseeds``, so it never mixes with a one-seed store). ``data``: a dataset shipped inside memlens
    (``phee``, the studies' stand-in; ``sotu``, non-medical English), named in the sweep unless it is PHEE.
    ``model``: the pre-trained model of every trial instead of SmolLM2-135M-Instruct, named in the sweep;
    hou2025's model-size trial is left out (its finding compares Gemma-3-270M with SmolLM2 as the smaller).
    ``settings``: config values set in every trial (dotted keys or sweep axes, e.g. ``{"prefix_init": "text"}``;
    a variant that sets the same key keeps its own), named in the sweep."""
    if name not in PRESETS:
        raise MemlensError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    if scale not in SCALES:
        raise MemlensError(f"unknown scale {scale!r}; use tiny, small or full")
    if data not in PRESET_DATA:
        raise MemlensError(f"unknown preset dataset {data!r}; use {' or '.join(PRESET_DATA)}")
    spec = PRESETS[name](scale)
    spec["base"]["data"]["source"] = data
    if data != "phee":
        spec["name"] += f"-{data}"
    if model is not None:
        spec["base"]["model"]["name"] = model
        if "variants" in spec:
            spec["variants"] = [v for v in spec["variants"] if "model" not in v]
        spec["name"] += "-" + (
            re.sub(r"[^a-z0-9.]+", "-", model.lower().rstrip("/").rsplit("/", 1)[-1]).strip("-") or "model"
        )
    for axis, value in (settings or {}).items():
        spec["name"] += "-" + _set(spec, axis, value)
    if seeds is not None and seeds != [0]:
        spec["seeds"] = list(seeds)
        spec["name"] += f"-{len(seeds)}seeds"
    return spec
