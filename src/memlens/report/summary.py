"""The short terminal summary of a run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

DIVERGED = 1.5  # non-members' perplexity up more than this factor, the whole 95% CI beyond it: diverged
FIXES = (
    "a learning rate too high for the method ([training] lr), or, for prefix tuning, random prefixes that wreck "
    'the model from the start ([tuning] prefix_init = "text")'
)


def diverged(drop: dict | None) -> bool:
    """Whether fine-tuning made the model worse on texts it never saw: the non-members' mean loss drop (an
    ``effect``/``nonmember_drop`` record, nats/token, with its 95% CI) is below −log :data:`DIVERGED`, the whole
    interval included (their perplexity grew more than 1.5-fold). No record or no interval: ``False``."""
    if drop is None or drop.get("ci_high") is None or not math.isfinite(drop["ci_high"]):
        return False
    return drop["ci_high"] < -math.log(DIVERGED)


def divergence_note(drop: dict, what: str, *, best: dict | None = None) -> str:
    """The warning for a diverged fine-tune (:func:`diverged`); ``what`` names the run or its trials. ``best``:
    the non-members' loss drop at the epoch where it was largest; when that epoch came before ``drop``'s and
    its whole CI was above 0, the model learnt first and then over-fitted, and the note says so."""
    rise = f"{-drop['value']:.2f} nats/token [{-drop['ci_high']:.2f}, {-drop['ci_low']:.2f}]"
    fold = (
        f"their perplexity {math.exp(-drop['value']):.1f}-fold; more than {DIVERGED}-fold, the whole 95% CI "
        "included, is taken as diverged"
    )
    learnt = best is not None and best["epoch"] < drop["epoch"] and (best.get("ci_low") or 0.0) > 0
    if best is not None and learnt:
        return (
            f"{what}: fine-tuning first lowered the non-members' loss (by {best['value']:.2f} nats/token "
            f"[{best['ci_low']:.2f}, {best['ci_high']:.2f}] at epoch {best['epoch']:.0f}), then raised it by {rise} "
            f"by epoch {drop['epoch']:.0f} ({fold}): over-fitting; "
            "fewer epochs, a lower learning rate ([training] lr) or more members avoid it, and its memorization "
            "numbers describe a model made worse on texts it never saw"
        )
    return (
        f"{what}: fine-tuning raised the non-members' loss by {rise} ({fold}; usual causes: {FIXES}): its "
        "memorization numbers describe a damaged model"
    )


def best_drop(drops: list[dict]) -> dict | None:
    """Of a trial's ``nonmember_drop`` records (one per evaluated epoch), the one with the largest drop."""
    return max(drops, key=lambda r: r["value"], default=None)


def diverged_notes(results: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    """A note per configuration (trials whose configs differ only in the training seed) with a diverged trial
    (:func:`diverged`, at the trial's last epoch), from a store's tidy ``results`` and its ``trials`` (``id``,
    ``label``, ``config``): such rows measure a damaged model, and every group mean that holds them too."""
    from memlens.config import configuration_key

    drops = results[(results["kind"] == "effect") & (results["metric"] == "nonmember_drop")]
    last = drops.loc[drops.groupby("trial")["epoch"].idxmax()] if not drops.empty else drops
    best = {int(t): best_drop(g.to_dict("records")) for t, g in drops.groupby("trial")}
    bad = {int(r["trial"]): r for r in last.to_dict("records") if diverged(r)}
    groups: dict[str, list] = {}
    for t in trials.itertuples():
        if int(t.id) in bad:
            groups.setdefault(configuration_key(t.config), []).append((str(t.label), bad[int(t.id)]))
    notes = []
    for rows in groups.values():
        labels = ", ".join(label for label, _ in rows)
        worst = min((r for _, r in rows), key=lambda r: r["value"])
        note = divergence_note(
            worst, f"{'trials' if len(rows) > 1 else 'trial'} {labels}", best=best[int(worst["trial"])]
        )
        notes.append(note.replace(": fine-tuning", ": fine-tuning (the worst of them)", 1) if len(rows) > 1 else note)
    return notes


def find(records: list[dict], **match) -> dict | None:
    """The first record whose fields equal ``match`` (e.g. ``epoch=0, attack="loss", metric="auc"``)."""
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _auc(row: dict | None) -> str:
    if row is None or row["value"] is None:
        return "—"
    if row.get("ci_low") is None:
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _pct(row: dict | None) -> str:
    if row is None or row["value"] is None:
        return "— *" if row is not None and row.get("note") else "—"
    return f"{100 * row['value']:.1f}%"


def summary_table(results: dict) -> Table:
    """Attack AUC (95% CI) before and after fine-tuning, and TPR at 1% FPR after."""
    records = results["records"]
    last = results["training"]["epochs"][-1]["epoch"] if results["training"]["epochs"] else 0
    attacks = list(dict.fromkeys(r["attack"] for r in records if r["kind"] == "mia"))
    table = Table(title=f"membership inference · {escape(results['name'])}", title_justify="left")
    audited = "audit" in results
    table.add_column("attack")
    table.add_column(f"AUC {'base model' if audited else 'pre-trained'} [95% CI]", justify="right")
    table.add_column(
        "AUC audited model [95% CI]" if audited else f"AUC fine-tuned, epoch {last} [95% CI]", justify="right"
    )
    table.add_column("TPR @ 1% FPR", justify="right")
    table.add_column("beats blind?", justify="center")
    for a in attacks:
        post = find(records, epoch=last, kind="mia", attack=a, metric="auc")
        verdict = "—" if post is None or post.get("beats_blind") is None else ("yes" if post["beats_blind"] else "NO")
        pct = _pct(find(records, epoch=last, kind="mia", attack=a, metric="tpr", fpr=0.01))
        table.add_row(
            escape(a), _auc(find(records, epoch=0, kind="mia", attack=a, metric="auc")), _auc(post), pct, verdict
        )
    return table


def summary_lines(results: dict) -> list[str]:
    records, t = results["records"], results["tuning"]
    last = results["training"]["epochs"][-1]["epoch"] if results["training"]["epochs"] else 0
    shown = [r for r in records if r["kind"] == "mia" and r["metric"] == "tpr" and r["fpr"] == 0.01]
    notes = sorted({r["note"] for r in shown if r["epoch"] == last and r.get("note")})
    ppl0, ppl1 = (find(records, epoch=e, kind="utility", metric="val_ppl") for e in (0, last))
    tm, tr = results["timings"], results["training"]
    blind = find(records, kind="blind", metric="auc")
    lines = (
        []
        if blind is None
        else [f"blind baseline (text features only, no model): AUC {_auc(blind)} — an attack's CI must lie above it"]
    )
    ref = results.get("reference_model")
    if ref:
        lines.append(f"reference model R: {ref['spec']} ({ref['parameters'] / 1e6:.1f}M parameters), scored once")
    stage = "audited" if "audit" in results else f"epoch {last}"
    lines += gap_lines(records, last, stage) + pretrained_lines(records, last)
    if ppl0 is not None and ppl1 is not None:
        before, after = ("base", "audited") if "audit" in results else ("pre-trained", "fine-tuned")
        lines.append(f"validation perplexity: {ppl0['value']:.2f} ({before}) → {ppl1['value']:.2f} ({after})")
    drop = find(records, epoch=last, kind="effect", metric="nonmember_drop")
    if "audit" not in results and drop is not None and diverged(drop):
        drops = [r for r in records if r["kind"] == "effect" and r["metric"] == "nonmember_drop"]
        lines.append(divergence_note(drop, "warning", best=best_drop(drops)))
    if "audit" in results:
        a = results["audit"]
        adapter = f" + adapter {a['adapter']} ({t['trainable_parameters']:,} parameters)" if a["adapter"] else ""
        lines.append(f"audited: {results['model']['spec']}{adapter}; no training")
        lines += [f"note: {n}" for n in a.get("notes", [])]
        stages = ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in tm.items() if k != "total")
        lines.append(f"wall time: {tm['total']:.0f} s ({stages})")
    else:
        lines += [
            f"trainable parameters: {t['trainable_parameters']:,} of {t['total_parameters']:,} "
            f"({100 * t['trainable_share']:.2f}%), method {t['method']}",
            f"training: {tr['train_tokens']:,} tokens at {tr['tokens_per_second']:.0f} tokens/s, "
            f"padding {100 * tr['padding_fraction']:.1f}%",
            f"wall time: {tm['total']:.0f} s (load {tm['load']:.0f}, score pre-trained {tm['score_pretrained']:.0f}, "
            f"train {tm['train']:.0f}, score fine-tuned {tm['score_finetuned']:.0f}, attacks {tm['attacks']:.0f}"
            + (f", reference models {tm['reference_models']:.0f})" if "reference_models" in tm else ")"),
        ]
        lines += reference_model_lines(results.get("reference_models"))
    lines += [f"* TPR @ 1% FPR {note}" for note in notes]
    lines += _extraction_lines(records, last) + data_lines(results.get("data", {}))
    lines += mitigation_lines(results.get("mitigation"), results.get("subsets"))
    lines += privacy_lines(results.get("privacy"))
    lines += distillation_lines(results.get("distillation"), records, last)
    if "output_dir" in results:
        lines.append(f"results: {results['output_dir']}/results.json")
    return lines


def mitigation_lines(m: dict | None, subsets: list[dict] | None = None) -> list[str]:
    """What a mitigation left out and, for DynamicCut, the paired ΔAUC against the unmitigated fine-tune and
    the random-cut control (verdicts only where the CI excludes 0), and the left-out members' AUC against the
    non-members beside the control's (do they stay memorized without being trained on?)."""
    if not m:
        return []
    if m["method"] == "dedup":
        return [f"mitigation dedup: trained on {m['trained']} texts, {m['dropped']} duplicates left out"]
    lines = [
        f"mitigation DynamicCut: left out the {m['dropped']} most memorized members ({100 * m['fraction']:g}%, "
        f"ranked by {m['rank_by'].replace('_', ' ')} under {m['rank_method']}), trained on {m['trained']}; "
        "AUCs count every member"
    ]
    lines += [
        f"  {c['attack']}: AUC {c['auc']:.3f} vs {c['auc_other']:.3f} {c['versus']}, {_delta(c)}"
        for c in m["comparisons"]
    ]
    left = {r["attack"]: r for r in _last_left_out(subsets)}
    control = {r["attack"]: r for r in _last_left_out(m.get("control_subsets"))}
    for attack, r in left.items():
        other = f"; the random cut's left out: {_auc(control[attack])}" if attack in control else ""
        lines.append(f"  left-out members vs non-members, {attack}: AUC {_auc(r)}{other}")
    return lines


def _delta(c: dict) -> str:
    """A paired difference with its CI and the verdict it supports (only where the CI excludes 0)."""
    verdict = "lower" if c["ci_high"] < 0 else "higher" if c["ci_low"] > 0 else "no difference shown"
    return f"Δ {c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] ({verdict})"


def distillation_lines(d: dict | None, records: list[dict], last: int) -> list[str]:
    """The transfer set, each student's size and validation perplexity beside the teacher's, its paired ΔAUC
    against the teacher on the teacher's texts, and how membership and memorization agree (Spearman ρ)."""
    if not d:
        return []
    t = d["transfer"]
    dropped = f", {t['members_dropped']} member texts dropped" if t.get("members_dropped") else ""
    lines = [f"distillation: student {d['student']}, {t['texts']} transfer texts ({t['source']}{dropped})"]
    teacher_ppl = find(records, epoch=last, kind="utility", metric="val_ppl")
    agree = {"teacher": d["teacher_agreement"]}
    control = d.get("control")
    if control is not None:
        lines.append(f"  control (LM loss on the transfer texts, no teacher): {_student_ppl(d, control, teacher_ppl)}")
        agree["control"] = control["agreement"]
    for s in d["students"]:
        lines.append(f"  {s['objective']} student: {_student_ppl(d, s, teacher_ppl)}")
        by_attack: dict[str, list[dict]] = {}
        for c in s["comparisons"]:
            by_attack.setdefault(c["attack"], []).append(c)
        for attack, cs in by_attack.items():
            versus = "; ".join(f"{c['versus']} {c['auc_other']:.3f}, {_delta(c)}" for c in cs)
            lines.append(f"    {attack}: AUC {cs[0]['auc']:.3f}; {versus}")
        agree[s["objective"]] = s["agreement"]
    pairs = [(a["attack"], a["extraction"]) for a in d["teacher_agreement"]]
    if pairs:
        attack, extraction = next((p for p in pairs if p[0] == "reference"), pairs[0])
        cells = []
        for who, rows in agree.items():
            r = next((a for a in rows if (a["attack"], a["extraction"]) == (attack, extraction)), None)
            if r is not None:
                cells.append(f"{who} {r['note'] or _rho(r)}")
        lines.append(
            f"  membership vs memorization, Spearman ρ over members ({attack} vs {extraction}): " + "; ".join(cells)
        )
    return lines


def _student_ppl(d: dict, s: dict, teacher_ppl: dict | None) -> str:
    ppl = find([r for r in d["records"] if r["objective"] == s["objective"]], kind="utility", metric="val_ppl")
    shown = [f"{x['value']:.2f}" if x and x["value"] is not None else "—" for x in (ppl, teacher_ppl)]
    return (
        f"{s['parameters'] / 1e6:.1f}M parameters, {len(s['epochs'])} epochs, "
        f"validation perplexity {shown[0]} (teacher {shown[1]})"
    )


def _rho(r: dict) -> str:
    return f"{r['rho']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] (n={r['n']})"


def _last_left_out(subsets: list[dict] | None) -> list[dict]:
    rows = [r for r in subsets or [] if r["subset"] == "left_out" and r["metric"] == "auc"]
    last = max((r["epoch"] for r in rows), default=None)
    return [r for r in rows if r["epoch"] == last]


def privacy_lines(privacy: dict | None) -> list[str]:
    """The DP accountant's ε and the one-run audit's lower bound, each with what it rests on."""
    if not privacy:
        return []
    lines = []
    if privacy.get("dp"):
        eps = "∞ (no noise)" if privacy["epsilon"] is None else f"{privacy['epsilon']:.2f}"
        lines.append(
            f"DP-SGD: ε = {eps} at δ = {privacy['delta']:g} ({privacy['accountant']} accountant; noise multiplier "
            f"{privacy['noise_multiplier']:.3g}, clip {privacy['max_grad_norm']:g}, {privacy['steps']} steps, "
            f"{privacy['sampling']}; {100 * (privacy['clipped_share'] or 0):.0f}% of per-text gradients clipped)"
        )
    if a := privacy.get("audit"):
        lines.append(
            f"one-run audit: ε ≥ {a['epsilon_lower_bound']:.2f} at {a['confidence']:.0%} confidence "
            f"({a['correct']}/{a['guessed_in'] + a['guessed_out']} guesses right on {a['canaries']} audit canaries "
            f"({a.get('canaries_kind', 'records')}), "
            f"{a['trained']} trained on; the most this audit could show: {a['ceiling']:.2f})"
        )
    return lines


def pretrained_lines(records: list[dict], epoch: int) -> list[str]:
    """Which attacks do not beat their own pre-trained AUC on a paired test (the distribution-shift control)."""
    flags = {
        r["attack"]: r["beats_pretrained"]
        for r in records
        if r["epoch"] == epoch and r["kind"] == "mia" and r["metric"] == "auc" and r.get("beats_pretrained") is not None
    }
    if not flags:
        return []
    weak = [a for a, ok in flags.items() if not ok]
    if not weak:
        return [f"pre-trained control: all {len(flags)} attacks beat their own pre-trained AUC (paired DeLong test)"]
    return [f"pre-trained control: NOT beating their own pre-trained AUC (paired DeLong test): {', '.join(weak)}"]


def gap_lines(records: list[dict], epoch: int, stage: str) -> list[str]:
    """The loss gap at ``epoch`` in words: memorization beside what was learned about the domain."""
    gap, mem, non = (
        find(records, epoch=epoch, kind="effect", metric=m) for m in ("loss_gap", "member_drop", "nonmember_drop")
    )
    if gap is None or mem is None or non is None or gap["value"] is None:
        return []
    lo, hi = gap["ci_low"], gap["ci_high"]
    ratio = f"×{math.exp(gap['value']):.2f}" + (
        f" [{math.exp(lo):.2f}, {math.exp(hi):.2f}]" if None not in (lo, hi) else ""
    )
    return [
        f"loss gap ({stage}): {_auc(gap)} nats/token, {ratio} in perplexity",
        f"loss drop ({stage}): members {_auc(mem)}, non-members {_auc(non)} nats/token (the latter: the domain)",
    ]


def data_lines(data: dict) -> list[str]:
    """What reading the data changed: empty texts dropped, duplicate ids renamed, texts truncated; and, for chat
    or instruction records, that only their completions are measured."""
    lines = []
    if data.get("format") in ("chat", "instruction"):
        lines.append(f"{data['format']} records: only the completions are trained on and scored; prompts are context")
    dropped = {k: v for k, v in data.get("dropped_empty", {}).items() if v}
    if dropped:
        lines.append("empty texts dropped: " + ", ".join(f"{v} {k}" for k, v in dropped.items()))
    if data.get("renamed_duplicate_ids"):
        lines.append(f"duplicate ids renamed (ID#2, ID#3, ...): {data['renamed_duplicate_ids']}")
    if data.get("duplicates_counted_once"):
        lines.append(f"repeated texts counted once in the metrics: {data['duplicates_counted_once']} copies left out")
    if data.get("truncated"):
        lines.append(f"texts truncated to {data['max_tokens']} tokens: {data['truncated']}")
    return lines


def print_summary(results: dict, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        console.width = max(console.width, 120)  # the table needs ~110 columns; pipes default to 80
    console.print(summary_table(results))
    for line in summary_lines(results):
        console.print(line, highlight=False, markup=False)


def _members_vs_nonmembers(row: dict, decoding: str, *metrics: str) -> list[tuple[dict, dict]] | None:
    """Per metric, the (members, non-members) records of ``decoding``; None when any is missing."""
    pairs = [(row.get((decoding, m, "members")), row.get((decoding, m, "nonmembers"))) for m in metrics]
    return None if any(r is None or r["value"] is None for pair in pairs for r in pair) else pairs  # type: ignore[return-value]


def _pct_ci(r: dict) -> str:
    ci = f" [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]" if r.get("ci_low") is not None else ""
    return f"{100 * r['value']:.2f}%{ci}"


def _extraction_lines(records: list[dict], last: int) -> list[str]:
    """One line per decoding (members vs non-members) and per canary repetition count."""
    ext = [r for r in records if r["epoch"] == last and r["kind"] == "extraction"]
    row = {(r["decoding"], r["metric"], r["subset"]): r for r in ext}
    lines = []
    for decoding in dict.fromkeys(r["decoding"] for r in ext):
        if got := _members_vs_nonmembers(row, decoding, "ngram_share", "exact_match_rate"):
            (m, n), (em, en) = got
            lines.append(
                f"extraction {decoding} (members vs non-members): n-gram share {m['value']:.3f} vs "
                f"{n['value']:.3f}, exact suffix {_pct(em)} vs {_pct(en)}"
            )
        if got := _members_vs_nonmembers(row, decoding, "p_extracted_mean", "np_extractable_rate"):
            (pm, pn), (rm, rn) = got
            lines.append(
                f"  exact probability of extraction in the samples drawn: mean {_pct_ci(pm)} vs {_pct_ci(pn)}; "
                f"texts extracted with probability ≥ 50%: {_pct_ci(rm)} vs {_pct_ci(rn)}"
            )
    canaries = [r for r in records if r["epoch"] == last and r["kind"] == "canary"]
    for attack in dict.fromkeys(r["attack"] for r in canaries):
        auc, rate, expo, top = (
            (find(canaries, attack=attack, metric=f"canary_{k}") or {}).get("value")
            for k in ("auc", "extraction_rate", "exposure", "at_ceiling")
        )
        auc_s = "" if auc is None or auc != auc else f"AUC vs controls {auc:.3f}, "
        top_s = f" ({100 * top:.0f}% beyond every sampled candidate: extrapolated)" if top else ""
        lines.append(
            f"{attack}: {auc_s}secret extracted {100 * float(rate or 0):.0f}%, exposure {expo or 0:.1f} bits{top_s}"
        )
    return lines


A_FROM = {"default": "default: one reference model, nothing to tune it on", "tuned": "tuned", "set": "set"}


def reference_model_lines(info: dict | None) -> list[str]:
    """The reference models behind RMIA and LiRA: how many, on what, what they cost, RMIA's a."""
    if not info:
        return []
    cached = sum(info["cached"])
    return [
        f"reference models: {info['k']} fine-tuned like the target on {info['texts_per_model']} population texts "
        f"each ({info['population']}: {info['population_texts']:,} texts not scored; {info['population_samples']} "
        f"set aside as RMIA's z), {sum(info['seconds']):.0f} s"
        + (f", {cached} of {info['k']} from the cache" if cached else ""),
        f"RMIA: a = {info['rmia_a']:g} ({A_FROM.get(info['rmia_a_from'], info['rmia_a_from'])}), "
        f"γ = {info['rmia_gamma']:g}; "
        f"LiRA: {info['lira_variance']} variance",
    ]
