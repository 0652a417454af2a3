"""The report's figures, in order, each with its caption and the reason it is missing when it is."""

from __future__ import annotations

from dataclasses import dataclass

from memlens.report.data import HISTOGRAM_FALLBACK, ReportData

FOCUS_TRIALS = 4  # per-text figures show at most this many trials (the highest AUC first)


@dataclass(frozen=True)
class Plot:
    anchor: str
    title: str
    svg: str | None
    caption: str
    missing: str  # why the figure is absent, when it is


def make_plots(data: ReportData) -> list[Plot]:
    """Every figure of the report, in order (``svg`` None where its data is missing)."""
    from memlens.report import plots

    a, final, scores, results = data.attack, data.final, data.scores, data.results
    colors = plots.palette(data.trials["label"])
    focus = list(final.sort_values("auc", ascending=False, na_position="last")["label"][:FOCUS_TRIALS])
    hist_attack = a if ((scores["attack"] == a) & (scores["epoch"] == 0)).any() else HISTOGRAM_FALLBACK
    shown = "" if len(final) <= FOCUS_TRIALS else f" Shown: the {FOCUS_TRIALS} trials with the highest AUC."
    lora = final[final["method"] == "lora"]
    adapters = final[final["method"].isin(["lora", "ia3"])]
    return [
        Plot(
            "frontier",
            "Privacy–utility frontier",
            plots.privacy_utility_frontier(final, attack=a, colors=colors),
            f"Each trial's validation perplexity against its {a} attack AUC at the final epoch (whiskers: 95% CI). "
            "Both are better when lower; filled, named points are Pareto-optimal: no other trial is better in both.",
            "needs at least one finished trial with an AUC and a validation perplexity",
        ),
        Plot(
            "auc-gap",
            "AUC and loss gap",
            plots.auc_vs_gap(final, attack=a, colors=colors),
            f"Each trial's {a} attack AUC against its loss gap at the final epoch (whiskers: 95% CIs). AUC says how "
            "well the attack separates members from non-members; the gap, how much more fine-tuning lowered the "
            "members' loss than the non-members' (nats/token). They can rank trials differently: a trial that "
            "lowers every text's loss a lot but unevenly has a large gap and a modest AUC.",
            "needs two or more finished trials with a loss gap (stores written before the loss gap existed have none)",
        ),
        Plot(
            "auc-epoch",
            "Memorization per epoch",
            plots.auc_vs_epoch(results, a, colors=colors),
            f"AUC of the {a} attack after each evaluated epoch (band: 95% CI). 0.5 is chance.",
            "needs trials evaluated at two or more epochs (training.eval_every)",
        ),
        Plot(
            "ppl-epoch",
            "Validation perplexity per epoch",
            plots.val_ppl_vs_epoch(results, colors=colors),
            "Validation perplexity after each evaluated epoch; epoch 0 is the pre-trained model.",
            "needs trials evaluated at two or more epochs",
        ),
        Plot(
            "roc",
            "ROC curves at the final epoch",
            plots.roc_curves(scores, a, colors=colors),
            f"True- against false-positive rate of the {a} attack; the log-log panel shows the low-FPR regime "
            "that matters for privacy (its floor is one non-member).",
            "needs the trials' scores.csv files",
        ),
        Plot(
            "roc-attacks",
            "Every attack at low false-positive rates",
            plots.roc_by_attack(scores, focus[0]) if focus else None,
            f"ROC curves of every attack on {focus[0] if focus else 'the trial'} (the trial with the highest {a} "
            "AUC) at its final epoch; on the log-log panel, attacks that tie on AUC part where a privacy audit "
            "looks: at false-positive rates of 1% and below.",
            "needs a trial's scores.csv with two or more attacks",
        ),
        Plot(
            "histograms",
            "Member and non-member scores",
            plots.score_histograms(scores, hist_attack, labels=focus),
            f"Distribution of the {hist_attack} score for members and non-members, before fine-tuning and after "
            f"the last epoch. Separation after fine-tuning is what the attacks exploit.{shown}",
            "needs epoch-0 and final-epoch scores (scores.csv)",
        ),
        Plot(
            "perplexity",
            "Per-text perplexity and memorization",
            plots.perplexity_vs_memorization(scores, "reference", labels=focus),
            "Members only, final epoch: each text's NLL under the fine-tuned model (log perplexity) against its "
            "reference score (pre-trained NLL minus fine-tuned NLL), with a least-squares line and its R². The score "
            "contains the fine-tuned NLL itself, so part of the correlation holds by construction." + shown,
            "needs the reference attack and the per-text NLL in scores.csv",
        ),
        Plot(
            "rank",
            "AUC and LoRA rank",
            plots.auc_vs_rank(lora, attack=a),
            f"Final-epoch AUC of the {a} attack against the LoRA rank (error bars: 95% CI); one line per "
            "combination of the other settings that vary, through the mean at each rank.",
            "needs LoRA trials with two or more values of tuning.rank",
        ),
        Plot(
            "targets",
            "AUC per adapted weight matrices",
            plots.auc_by_targets(adapters, attack=a),
            f"Final-epoch AUC of the {a} attack per trial, coloured by tuning.targets (error bars: 95% CI).",
            "needs LoRA/IA³ trials with two or more values of tuning.targets",
        ),
        Plot(
            "blocks",
            "Memorization per block",
            plots.auc_by_block(final, data.students, attack=a),
            f"Final-epoch AUC of the {a} attack for trials that adapt a single block (tuning.layers = [i]), against "
            "that block (error bars: 95% CI; lines through the mean at each block); with [distillation], each "
            "objective's student beside its teacher, attacked on the teacher's members and non-members.",
            "needs LoRA/IA³ trials that each adapt one block (tuning.layers), two or more blocks",
        ),
        Plot(
            "extraction",
            "Canaries and repetitions",
            plots.extraction_vs_repetitions(results, colors=colors),
            "Planted canaries at the final epoch against how often each was inserted in training: AUC against "
            "never-inserted controls, the share of secrets the model reproduces, and exposure in bits (dotted: "
            "the controls' level).",
            "no canary measurements in this store (enable [canaries] in the run config)",
        ),
    ]
