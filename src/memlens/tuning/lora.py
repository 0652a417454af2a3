"""LoRA (Hu et al. 2021) and IA³ (Liu et al. 2022) through ``peft``: adapters on chosen linear layers."""

from __future__ import annotations

from memlens.config import TuningConfig
from memlens.errors import MemlensError
from memlens.tuning.adapters import wrap

# Short names for the usual matrices -> module names used by Llama-style architectures (Llama, SmolLM2,
# Gemma, Mistral, Qwen). Module names themselves (e.g. "q_proj") are accepted as well.
ALIASES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
GROUPS = {"attn": ["q", "k", "v", "o"], "mlp": ["gate", "up", "down"], "all": list(ALIASES)}
DEFAULT_TARGETS = {"lora": GROUPS["attn"], "ia3": ["k", "v", "down"]}
FEEDFORWARD = {"gate_proj", "up_proj", "down_proj"}  # IA³ scales these layers' inputs, the others' outputs


def linear_module_names(model) -> list[str]:
    """Leaf names of the model's linear layers that adapters can target (the output head excluded)."""
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2-style fused projections

    head = model.get_output_embeddings()
    kinds = (torch.nn.Linear, Conv1D)
    linear = (n for n, m in model.named_modules() if isinstance(m, kinds) and m is not head)
    return sorted({n.rsplit(".", 1)[-1] for n in linear})


def resolve_targets(model, targets: list[str]) -> list[str]:
    """Map aliases and groups to the model's module names; an unknown target is an error listing valid ones."""
    valid = linear_module_names(model)
    names: list[str] = []
    for t in targets:
        for alias in GROUPS.get(t, [t]):
            name = ALIASES.get(alias, alias)
            if name not in valid:
                shown = [a for a, n in ALIASES.items() if n in valid]
                aliases = f"{', '.join(shown + list(GROUPS))} or " if shown else ""
                raise MemlensError(
                    f"tuning target {t!r} does not exist in this model; valid: {aliases}module names {', '.join(valid)}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise MemlensError("tuning.targets is empty: name at least one matrix (e.g. ['q', 'v'])")
    return names


def resolve_layers(model, layers: list[int] | str | None) -> list[int] | None:
    """Layer indices from a list or ``"last:N"`` / ``"first:N"``; ``None`` means every layer."""
    if layers is None:
        return None
    n_layers = model.config.get_text_config().num_hidden_layers
    if isinstance(layers, str):
        side, _, k = layers.partition(":")
        k = min(int(k), n_layers)
        return list(range(n_layers - k, n_layers)) if side == "last" else list(range(k))
    bad = [i for i in layers if i >= n_layers]
    if bad:
        raise MemlensError(f"tuning.layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    return sorted(set(layers))


def apply(model, cfg: TuningConfig, tokenizer=None):
    """Wrap ``model`` in a peft LoRA model; only the adapters train."""
    from peft import LoraConfig

    modules = resolve_targets(model, cfg.targets or DEFAULT_TARGETS["lora"])
    layers = resolve_layers(model, cfg.layers)
    lcfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works and is common
        lora_dropout=cfg.dropout,
        target_modules=modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
        bias="none",
    )
    params = {"target_modules": modules, "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout}
    return wrap(model, lcfg), params | {"layers": layers if layers is not None else "all"}


def apply_ia3(model, cfg: TuningConfig, tokenizer=None):
    """Wrap ``model`` in a peft IA³ model (learned rescaling vectors)."""
    from peft import IA3Config

    modules = resolve_targets(model, cfg.targets or DEFAULT_TARGETS["ia3"])
    layers = resolve_layers(model, cfg.layers)
    # IA3Config has no layers_to_transform: a layer subset becomes a regex over module paths
    targets = modules if layers is None else rf".*\.layers\.({'|'.join(map(str, layers))})\..*\.({'|'.join(modules)})"
    icfg = IA3Config(
        target_modules=targets,
        feedforward_modules=[m for m in modules if m in FEEDFORWARD],
        task_type="CAUSAL_LM",
    )
    return wrap(model, icfg), {"target_modules": modules, "layers": layers if layers is not None else "all"}
