"""The short terminal summary of a run."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _value(records: list[dict], epoch: int, attack: str | None, metric: str) -> dict | None:
    for r in records:
        if r["epoch"] == epoch and r["attack"] == attack and r["metric"] == metric:
            return r
    return None


def _auc(row: dict | None) -> str:
    if row is None or row["value"] is None:
        return "—"
    if row.get("ci_low") is None:
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _pct(row: dict | None) -> str:
    return "—" if row is None or row["value"] is None else f"{100 * row['value']:.1f}%"


def summary_table(results: dict) -> Table:
    """Attack AUC (95% CI) before and after fine-tuning, and TPR at 1% FPR after."""
    records = results["records"]
    last = results["training"]["epochs"][-1]["epoch"] if results["training"]["epochs"] else 0
    attacks = list(dict.fromkeys(r["attack"] for r in records if r["attack"]))
    table = Table(title=f"membership inference · {escape(results['name'])}", title_justify="left")
    table.add_column("attack")
    table.add_column("AUC pre-trained [95% CI]", justify="right")
    table.add_column(f"AUC fine-tuned, epoch {last} [95% CI]", justify="right")
    table.add_column("TPR @ 1% FPR", justify="right")
    table.add_column("beats blind?", justify="center")
    for a in attacks:
        if a == "blind":
            continue
        post = _value(records, last, a, "auc")
        verdict = "—" if post is None or "beats_blind" not in post else ("yes" if post["beats_blind"] else "NO")
        pct = _pct(_value(records, last, a, "tpr@fpr=0.01"))
        table.add_row(escape(a), _auc(_value(records, 0, a, "auc")), _auc(post), pct, verdict)
    return table


def summary_lines(results: dict) -> list[str]:
    records, t = results["records"], results["tuning"]
    last = results["training"]["epochs"][-1]["epoch"] if results["training"]["epochs"] else 0
    ppl0, ppl1 = _value(records, 0, None, "val_ppl"), _value(records, last, None, "val_ppl")
    tm, tr = results["timings"], results["training"]
    blind = _value(records, None, "blind", "auc")
    lines = (
        []
        if blind is None
        else [f"blind baseline (text features only, no model): AUC {_auc(blind)} — an attack must beat its upper bound"]
    )
    ref = results.get("reference_model")
    if ref:
        lines.append(f"reference model R: {ref['spec']} ({ref['parameters'] / 1e6:.1f}M parameters), scored once")
    lines += [
        f"validation perplexity: {ppl0['value']:.2f} (pre-trained) → {ppl1['value']:.2f} (fine-tuned)",
        f"trainable parameters: {t['trainable_parameters']:,} of {t['total_parameters']:,} "
        f"({100 * t['trainable_share']:.2f}%), method {t['method']}",
        f"training: {tr['train_tokens']:,} tokens at {tr['tokens_per_second']:.0f} tokens/s, "
        f"padding {100 * tr['padding_fraction']:.1f}%",
        f"wall time: {tm['total']:.0f} s (load {tm['load']:.0f}, score pre-trained {tm['score_pretrained']:.0f}, "
        f"train {tm['train']:.0f}, score fine-tuned {tm['score_finetuned']:.0f}, attacks {tm['attacks']:.0f})",
    ]
    lines += _extraction_lines(records, last) + data_lines(results.get("data", {}))
    if "output_dir" in results:
        lines.append(f"results: {results['output_dir']}/results.json")
    return lines


def data_lines(data: dict) -> list[str]:
    """What reading the data changed: empty texts dropped, duplicate ids renamed, texts truncated."""
    lines = []
    dropped = {k: v for k, v in data.get("dropped_empty", {}).items() if v}
    if dropped:
        lines.append("empty texts dropped: " + ", ".join(f"{v} {k}" for k, v in dropped.items()))
    if data.get("renamed_duplicate_ids"):
        lines.append(f"duplicate ids renamed (ID#2, ID#3, ...): {data['renamed_duplicate_ids']}")
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


def _extraction_lines(records: list[dict], last: int) -> list[str]:
    """One line per decoding (members vs non-members) and per canary repetition count."""
    vals = {(r["attack"], r["metric"]): r["value"] for r in records if r["epoch"] == last}
    lines = []
    for attack in dict.fromkeys(a for a, _ in vals if a and a.startswith("extraction ")):
        m, n = (vals.get((attack, f"extraction_{k}")) for k in ("ngram_share_members", "ngram_share_nonmembers"))
        em, en = (
            vals.get((attack, f"extraction_{k}")) for k in ("exact_match_rate_members", "exact_match_rate_nonmembers")
        )
        if None not in (m, n, em, en):
            lines.append(
                f"{attack} (members vs non-members): n-gram share {m:.3f} vs {n:.3f}, "
                f"exact suffix {100 * em:.1f}% vs {100 * en:.1f}%"
            )
    for attack in dict.fromkeys(a for a, _ in vals if a and a.startswith("canary")):
        auc, rate, expo = (vals.get((attack, f"canary_{k}")) for k in ("auc", "extraction_rate", "exposure"))
        auc_s = "" if auc is None or auc != auc else f"AUC vs controls {auc:.3f}, "
        lines.append(f"{attack}: {auc_s}secret extracted {100 * (rate or 0):.0f}%, exposure {expo or 0:.1f} bits")
    return lines
