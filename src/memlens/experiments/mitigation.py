"""DynamicCut for fine-tuning (after Fang et al., "A Closer Look on Memorization in Tabular Diffusion Model"):
rank the members by how strongly one fine-tune memorized them, leave the top fraction out, fine-tune again.

Three fine-tunes from the same pre-trained model, on the same members, non-members and seeds:

1. the ranking fine-tune (``rank_method``, default the run's own method), evaluated after every epoch; a
   member's intensity is its loss drop (pre-trained minus fine-tuned mean token NLL), or the score of the
   attack ``rank_by`` names (e.g. ``lira``, calibrated by reference models), averaged over the epochs;
2. the cut fine-tune, without the ``fraction`` of members with the highest intensity — the run's result;
3. the control, without a random set of members of the same size (``control = true``).

Every member stays attacked in all three, so the headline AUC is the whole data set's exposure; the members
trained on and those left out are also reported apart (``subsets``). ``results.json``'s ``mitigation`` holds
what was left out (ids, never text) and the ranking fine-tune's and the control's records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlens import progress
from memlens.config import RunConfig
from memlens.data import load_splits
from memlens.errors import MemlensError
from memlens.experiments.runner import Measured, measure, versus


def intensity(m: Measured, rank_by: str = "loss_drop") -> np.ndarray:
    """(n_members,) each member's memorization intensity averaged over the fine-tuned epochs evaluated:
    ``loss_drop`` (pre-trained minus fine-tuned mean token NLL) or an attack's per-text score (its label, e.g.
    ``lira``; higher = more likely a member). A member with a NaN at some epoch is never ranked first."""
    n = m.n_members
    epochs = [e for e in sorted(m.scores) if e > 0 and "nll" in m.scores[e]]
    if rank_by == "loss_drop":
        per_epoch = [m.scores[0]["nll"][:n] - m.scores[e]["nll"][:n] for e in epochs]
    else:
        per_epoch = [m.scores[e][rank_by][:n] for e in epochs if rank_by in m.scores[e]]
    if not per_epoch:
        raise MemlensError(f"DynamicCut needs at least one fine-tuned epoch with {rank_by} to rank the members")
    return np.nan_to_num(np.mean(per_epoch, axis=0), nan=-np.inf, posinf=np.inf)


def dynamic_cut(cfg: RunConfig, staging: Path | None) -> dict:
    """The three fine-tunes of the module docstring; returns the cut fine-tune's results."""
    mc = cfg.mitigation
    assert mc is not None and mc.method == "dynamiccut"
    ranking_cfg = cfg.model_copy(deep=True)
    ranking_cfg.mitigation = None
    ranking_cfg.training.eval_every = 1  # the intensity is epoch-wise
    if mc.rank_method is not None and mc.rank_method != cfg.tuning.method:
        ranking_cfg.tuning.method = mc.rank_method
        ranking_cfg.training.lr = None  # that method's default learning rate
    n = len(load_splits(cfg.data).members)  # checked before any fine-tuning
    k = round(mc.fraction * n)
    if not 1 <= k < n:
        raise MemlensError(f"mitigation.fraction {mc.fraction:g} of {n} members leaves out {k}: need 1 to n-1")
    progress.info(f"DynamicCut 1/{2 + mc.control}: the ranking fine-tune ({ranking_cfg.tuning.method})")
    ranking = measure(ranking_cfg, None)
    members = ranking.ids[: ranking.n_members]
    order = np.argsort(-intensity(ranking, mc.rank_by), kind="stable")
    cut = [members[i] for i in sorted(order[:k])]
    progress.info(f"DynamicCut 2/{2 + mc.control}: fine-tuning without the {k} most memorized members")
    measured = measure(cfg, staging, leave_out=frozenset(cut))
    info: dict = {
        "method": "dynamiccut",
        "fraction": mc.fraction,
        "rank_by": mc.rank_by,
        "rank_method": ranking_cfg.tuning.method,
        "trained": len(members) - k,
        "dropped": k,
        "dropped_ids": cut,
        "ranking_records": ranking.results["records"],
        "comparisons": versus(measured, ranking, "unmitigated", cfg),
    }
    if mc.control:
        rng = np.random.default_rng([cfg.training.seed, 0xC07])
        random_cut = [members[i] for i in sorted(rng.choice(len(members), k, replace=False))]
        progress.info(f"DynamicCut 3/3: the control, fine-tuning without {k} random members")
        control = measure(cfg, None, leave_out=frozenset(random_cut))
        info |= {
            "control_ids": random_cut,
            "control_records": control.results["records"],
            "control_subsets": control.results["subsets"],
        }
        info["comparisons"] += versus(measured, control, "random cut", cfg)
    measured.results["mitigation"] = info
    return measured.saved(cfg, staging)
