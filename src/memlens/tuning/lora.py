"""LoRA (Hu et al. 2021) through ``peft``: low-rank updates on chosen linear layers."""

from __future__ import annotations

from memlens.config import TuningConfig
from memlens.errors import MemlensError

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


def linear_module_names(model) -> list[str]:
    """Leaf names of the model's linear layers that LoRA can adapt (the output head excluded)."""
    import torch

    out_head = model.get_output_embeddings()
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out_head}
    )


def resolve_targets(model, targets: list[str]) -> list[str]:
    """Map aliases and groups to the model's module names; an unknown target is an error listing valid ones."""
    valid = linear_module_names(model)
    names: list[str] = []
    for t in targets:
        for alias in GROUPS.get(t, [t]):
            name = ALIASES.get(alias, alias)
            if name not in valid:
                shown = [a for a, n in ALIASES.items() if n in valid]
                raise MemlensError(
                    f"LoRA target {t!r} does not exist in this model; valid: "
                    f"{', '.join(shown + [g for g in GROUPS if shown])} or module names {', '.join(valid)}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise MemlensError("tuning.targets is empty: name at least one matrix (e.g. ['q', 'v'])")
    return names


def apply(model, cfg: TuningConfig):
    """Wrap ``model`` in a peft LoRA model; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    modules = resolve_targets(model, cfg.targets)
    lcfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, lcfg), {
        "target_modules": modules,
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "dropout": cfg.dropout,
    }
