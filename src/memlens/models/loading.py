"""Resolve a model spec to ``(model, tokenizer)``.

A spec is one of:
- a built-in name (``memlens models`` lists them), e.g. ``smollm2-135m``;
- a ``.gguf`` file: dequantised once and cached as safetensors;
- a local directory in Hugging Face format (safetensors weights only);
- a Hugging Face hub id such as ``HuggingFaceTB/SmolLM2-135M`` (needs network access).

Remote code is never run (``trust_remote_code=False``) and pickled weights are never loaded.
fp32 on CPU, bf16 on CUDA, unless asked otherwise. Padding reuses EOS; no token is ever added.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlens import progress
from memlens.errors import MemlensError
from memlens.files import atomic_path, cache_dir, describe_os_error, lock, remove_stale, sha256
from memlens.models.builtin import BUILTIN_MODELS


@dataclass
class LoadedModel:
    """A model ready to fine-tune and score, with what it is and where it came from."""

    model: Any
    tokenizer: Any
    info: dict = field(default_factory=dict)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MemlensError("model.device = 'cuda' but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def prepare(spec: str) -> Path:
    """Return a local Hugging Face-format directory for a built-in name, ``.gguf`` file or directory."""
    try:
        return _prepare(spec)
    except OSError as err:  # a path too long, unreadable, or a cache folder that cannot be written
        where = getattr(err, "filename", None) or spec
        raise MemlensError(f"cannot use model {spec!r}: {where}: {describe_os_error(err)}") from None


def _prepare(spec: str) -> Path:
    if spec in BUILTIN_MODELS:
        return _from_gguf(BUILTIN_MODELS[spec].gguf_path(cache_dir()), label=spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MemlensError(f"model file not found: {path}")
        return _from_gguf(path, label=path.name)
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise MemlensError(f"{path} holds no *.safetensors weights (memlens never loads pickled weights)")
        return path
    if _looks_like_path(spec):
        raise MemlensError(f"model path not found: {spec}")
    raise _unknown(spec) if "/" not in spec else _NotLocal(spec)


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str | None = None,
    device_map: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a spec (see the module docstring). ``quantization`` (``4bit`` /
    ``8bit``, CUDA) and ``device_map`` (``auto``) as in :class:`memlens.config.ModelConfig`."""

    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    placement = placement_kwargs(dev, torch_dtype, quantization, device_map)
    try:
        source: str | Path = prepare(spec)
        kind = "local"
    except _NotLocal:
        source, kind = spec, "hub"
    kw: dict[str, Any] = {"trust_remote_code": False}
    online = kind == "hub" and hub_reachable()
    if kind == "hub" and not online:
        kw["local_files_only"] = True  # no network: the local hub cache only, no retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, use_safetensors=True, **kw, **placement)
    except (OSError, ValueError) as err:
        if kind == "hub":
            where = "from the Hugging Face hub" if online else "(the Hugging Face hub cannot be reached from here, "
            where += "" if online else "and the local hub cache does not hold it)"
            raise MemlensError(
                f"could not load model {spec!r} {where}: {_first_line(err)}; built-in models: "
                f"{', '.join(BUILTIN_MODELS)}"
            ) from None
        raise MemlensError(f"could not load model from {source}: {_first_line(err)}") from None
    from memlens.tokens import ensure_pad_token

    ensure_pad_token(tokenizer)
    if "device_map" not in placement:  # accelerate placed it
        model.to(dev)  # type: ignore[arg-type]  # transformers' stubs take a device for a model here
    if quantization:  # QLoRA's preparation (the weights left unquantized in fp32) now, before anything is
        from peft import prepare_model_for_kbit_training  # scored, so every epoch is scored in one precision

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "spec": spec,
        "source": str(source),
        "class": type(model).__name__,
        "parameters": n_params,
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "device": dev,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "quantization": quantization,
        "device_map": device_map,
        # a quantized base scores differently: its statistics are cached apart
        "identity": _identity(source) + (f"|{quantization}" if quantization else ""),
    }
    return LoadedModel(model, tokenizer, info)


def model_placement(cfg) -> dict[str, Any]:
    """:func:`load_model`'s device, dtype, quantization and device map from a run config's ``[model]``."""
    m = cfg.model
    return {"device": m.device, "dtype": m.dtype, "quantization": m.quantization, "device_map": m.device_map}


def placement_kwargs(device: str, dtype, quantization: str | None, device_map: str | None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a quantized base (bitsandbytes) and/or an accelerate device map;
    empty for a model loaded whole and moved to ``device``."""
    out: dict[str, Any] = {}
    if quantization:
        if device != "cuda":
            raise MemlensError("model.quantization needs a CUDA GPU (bitsandbytes' kernels); none is available")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MemlensError("model.quantization needs bitsandbytes: pip install bitsandbytes") from None
        from transformers import BitsAndBytesConfig

        if quantization == "4bit":  # QLoRA's NF4 with double quantization, computing in the model's dtype
            out["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
        else:
            out["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        out["device_map"] = {"": 0}  # bitsandbytes weights are placed at load time, never moved after
    if device_map:
        out["device_map"] = device_map
    return out


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds (``False`` at once
    under ``HF_HUB_OFFLINE=1``; assumed ``True`` behind an HTTPS proxy, which this check cannot see past)."""
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _from_gguf(gguf: Path, label: str) -> Path:
    """Dequantise a GGUF file into a cached safetensors directory (once; safe across processes).

    The conversion is written to a temp folder that is removed on any failure, Ctrl-C included; temp
    folders of conversions that were killed are removed by the next one."""
    digest = sha256(gguf)
    target = cache_dir() / "models" / f"{label.removesuffix('.gguf')}-{digest[:16]}"
    if (target / "memlens.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with lock(target.with_suffix(".lock")):
        if (target / "memlens.json").is_file():  # another process finished while we waited
            return target
        remove_stale(target.parent)
        if importlib.util.find_spec("gguf") is None:
            raise MemlensError("reading .gguf models needs the `gguf` package: pip install gguf")
        _quiet_transformers()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        progress.info(f"converting {gguf.name} to safetensors once (cached in {target.parent})")
        try:
            with atomic_path(target) as tmp:
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent,
                    gguf_file=gguf.name,
                    quantization_config=GgufConfig(dequantize=True),
                    dtype=torch.float32,
                )
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
                (tmp / "memlens.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
        except Exception as err:  # a damaged or unsupported file fails in many ways (struct.error, KeyError ...)
            raise MemlensError(f"could not convert {gguf} (not a usable GGUF model?): {_first_line(err)}") from None
    return target


def _identity(source: str | Path) -> str:
    """A short hash naming the weights: the GGUF's sha256 for converted models, else config + file sizes."""
    path = Path(source)
    marker = path / "memlens.json"
    if marker.is_file():
        return json.loads(marker.read_text())["sha256"][:16]
    h = hashlib.sha256(str(source).encode())
    if path.is_dir():
        for f in sorted(path.glob("*")):
            if f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or (os.sep in spec and Path(spec).parent.exists())


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _unknown(spec: str) -> MemlensError:
    return MemlensError(
        f"unknown model {spec!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a .gguf file, a local directory or a Hugging Face id (org/name)"
    )


class _NotLocal(Exception):
    """The spec names no local model; it may be a hub id."""
