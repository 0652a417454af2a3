"""The sweep report: one self-contained HTML page (inline CSS and SVG, no script, no external URL) and a
Markdown summary, rendered from a results store.

The store keeps per-text scores keyed by text id, never the texts, so the report cannot contain training
text. Every string that comes from the store (labels, errors, attack names) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from memlens.errors import MemlensError
from memlens.files import describe_os_error, write_text

if TYPE_CHECKING:
    import pandas as pd

HISTOGRAM_FALLBACK = "loss"  # an attack with a pre-trained (epoch 0) score for every text
FOCUS_TRIALS = 4  # per-text figures show at most this many trials (the highest AUC first)
METHOD_PARAMS = {
    "lora": ("targets", "rank", "alpha", "layers"),
    "ia3": ("targets", "layers"),
    "prefix": ("virtual_tokens",),
    "prompt": ("virtual_tokens",),
    "ptuning": ("virtual_tokens",),
}
EXTRACTION_SKIP = {"prefix", "tokens_per_second"}  # settings and speed, not memorization
EXTRACTION_COLUMNS = {
    "exact_match_rate": "exact match",
    "longest_common_ngram": "longest common n-gram",
    "ngram_share": "n-gram share",
    "rouge_l": "ROUGE-L",
    "bleu": "BLEU",
}
CANARY_COLUMNS = {
    "canary_auc": "AUC vs controls [95% CI]",
    "canary_extraction_rate": "secrets extracted",
    "canary_exposure": "exposure (bits)",
}
NO_EXTRACTION = "No extraction or canary measurements: enable [extraction] and [canaries] in the run config."
REFERENCE_NOTE = "The reference attack has no pre-trained AUC: before fine-tuning the model is its own reference."
TUNING_AXES = {p for params in METHOD_PARAMS.values() for p in params}
OWN_COLUMNS = {"method", "epochs", "lr"}  # axes the trial table shows in their own column


@dataclass
class ReportData:
    """What a report is drawn from. ``label`` everywhere is each trial's unique display name."""

    store_dir: Path
    attack: str
    trials: pd.DataFrame  # every trial, with label, params, varying
    results: pd.DataFrame  # the tidy rows of finished trials
    final: pd.DataFrame  # one row per finished trial: the headline attack and val PPL at its final epoch
    scores: pd.DataFrame  # rows of scores.csv needed by the figures (epoch 0 and the final epoch)
    attacks: list[str]  # every membership-inference attack (rows with an AUC), in order


@dataclass(frozen=True)
class Cell:
    """A table cell; ``cls`` is a CSS class (``num`` right-aligns, ``warn`` / ``ok`` flag the verdict)."""

    text: str
    cls: str = ""

    def html(self) -> str:
        attr = f' class="{self.cls}"' if self.cls else ""
        return f"<td{attr}>{html.escape(self.text)}</td>"

    def md(self) -> str:
        return _md(self.text)


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "\n".join("<tr>" + "".join(c.html() for c in row) + "</tr>" for row in self.rows)
        return f'<div class="table"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'

    def md(self) -> str:
        first = self.rows[0] if self.rows else [Cell("")] * len(self.headers)
        align = ["---:" if c.cls == "num" else "---" for c in first]
        lines = ["| " + " | ".join(_md(h) for h in self.headers) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(c.md() for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class Plot:
    anchor: str
    title: str
    svg: str | None
    caption: str
    missing: str  # why the figure is absent, when it is


# -- public entry point ---------------------------------------------------------------------------------------
def render_report(
    store_dir: str | Path, out_dir: str | Path | None = None, *, attack: str = "reference", show_text: bool = False
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the store in ``store_dir`` into ``out_dir`` (default
    ``store_dir/report``); return their paths. ``attack`` is the headline attack of the tables and figures."""
    data = load_report_data(store_dir, attack)
    out = Path(out_dir) if out_dir is not None else data.store_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MemlensError(f"cannot create report folder {out}: {describe_os_error(err)}") from None
    plots = make_plots(data)
    html_path, md_path = out / "report.html", out / "report.md"
    write_text(html_path, render_html(data, plots, show_text))
    write_text(md_path, render_markdown(data, plots, show_text))
    return html_path, md_path


def load_report_data(store_dir: str | Path, attack: str = "reference") -> ReportData:
    """Read the store; refuse one without a finished trial or without ``attack``."""
    from memlens.experiments.store import Store

    store = Store(store_dir, create=False)
    try:
        trials, results = store.trials(), store.results()
        trial_dirs = {int(i): store.trial_dir(int(i)) for i in trials["id"]}
    finally:
        store.close()
    done = trials[trials["status"] == "done"]
    if done.empty:
        counts = _counts(trials) or "no trials"
        raise MemlensError(f"no finished trial in the results store {store.folder} ({counts}); nothing to report")
    trials = _describe_trials(trials)
    results = _tidy(results, trials)
    aucs = results[(results["kind"] == "mia") & (results["metric"] == "auc")]
    attacks = list(dict.fromkeys(aucs["attack"].dropna()))
    if attack not in attacks:
        raise MemlensError(f"attack {attack!r} is not in the results store; it has {', '.join(attacks) or 'none'}")
    final = _final_table(trials[trials["status"] == "done"], results, attack)
    wanted = {attack, HISTOGRAM_FALLBACK, "reference", "nll"}
    scores = _load_scores(final, trial_dirs, wanted)
    return ReportData(Path(store_dir), attack, trials, results, final, scores, attacks)


def _describe_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Add a unique display ``label``, the method, the method's parameters and the sweep's varying axes."""
    from memlens.experiments.sweep import AXES

    trials = trials.rename(columns={"label": "sweep_label"})
    several = trials["sweep"].nunique() > 1
    names = [f"{s} · {lab}" if several else lab for s, lab in zip(trials["sweep"], trials["sweep_label"], strict=True)]
    repeated = {n for n in names if names.count(n) > 1}
    trials["label"] = [f"{n} (#{i})" if n in repeated else n for n, i in zip(names, trials["id"], strict=True)]
    values = {axis: [_lookup(cfg, key) for cfg in trials["config"]] for axis, key in AXES.items()}
    varying = [a for a, vals in values.items() if len({json.dumps(v, sort_keys=True) for v in vals}) > 1]
    trials["method"] = values["method"]
    trials["varying"] = [{a: values[a][i] for a in varying} for i in range(len(trials))]
    trials["params"] = [
        {p: cfg["tuning"].get(p) for p in METHOD_PARAMS.get(cfg["tuning"]["method"], ())}
        | {a: v for a, v in var.items() if a not in OWN_COLUMNS | TUNING_AXES}
        for cfg, var in zip(trials["config"], trials["varying"], strict=True)
    ]
    return trials


def _lookup(cfg: dict, dotted: str):
    section, field = dotted.split(".", 1)
    return cfg.get(section, {}).get(field)


def _tidy(results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Results of finished trials with display labels and nullable integer epochs."""
    done = set(trials.loc[trials["status"] == "done", "id"])
    results = results[results["trial"].isin(done)].copy()
    results["label"] = results["trial"].map(dict(zip(trials["id"], trials["label"], strict=True)))
    results["epoch"] = results["epoch"].astype("Int64")
    return results


def _final_table(done: pd.DataFrame, results: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One row per finished trial: final-epoch AUC (CI), TPR@1%FPR, epoch-0 AUC, blind AUC, val PPL."""
    import pandas as pd

    rows = []
    for t in done.itertuples():
        res = results[results["trial"] == t.id]
        last = res.loc[res["metric"] == "auc", "epoch"].max()
        last = 0 if pd.isna(last) else int(last)
        pick = _picker(res)
        auc, auc0, blind = pick(last, attack, "auc"), pick(0, attack, "auc"), pick(None, "blind", "auc")
        info, tuning = t.info.get("tuning", {}), t.config["tuning"]
        targets = _show(tuning.get("targets") or "default")
        rows.append(
            {
                "trial": t.id,
                "label": t.label,
                "method": t.method,
                "epoch": last,
                "auc": _get(auc, "value"),
                "ci_low": _get(auc, "ci_low"),
                "ci_high": _get(auc, "ci_high"),
                "beats_blind": _get(auc, "beats_blind"),
                "tpr": _get(pick(last, attack, "tpr", 0.01), "value"),
                "auc0": _get(auc0, "value"),
                "blind": _get(blind, "value"),
                "blind_low": _get(blind, "ci_low"),
                "blind_high": _get(blind, "ci_high"),
                "val_ppl0": _get(pick(0, None, "val_ppl"), "value"),
                "val_ppl": _get(pick(last, None, "val_ppl"), "value"),
                "rank": tuning.get("rank") if t.method == "lora" else None,
                "targets": targets if t.method in ("lora", "ia3") else None,
                "group": " ".join(f"{k}={_show(v)}" for k, v in t.varying.items() if k not in ("rank", "seed"))
                or "all trials",
                "trainable": info.get("trainable_parameters"),
                "share": info.get("trainable_share"),
            }
        )
    return pd.DataFrame(rows)


def _picker(res: pd.DataFrame):
    """``pick(epoch, attack, metric, fpr=None)`` -> that row as a dict, or None (None matches missing values)."""
    index = {}
    for r in res.to_dict("records"):
        key = tuple(None if _missing(r[c]) else r[c] for c in ("epoch", "attack", "metric", "fpr"))
        index[(None if key[0] is None else int(key[0]), *key[1:])] = r
    return lambda epoch, attack, metric, fpr=None: index.get((epoch, attack, metric, fpr))


def _missing(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def _get(row: dict | None, key: str) -> float | None:
    return None if row is None or _missing(row.get(key)) else float(row[key])


def _load_scores(final: pd.DataFrame, trial_dirs: dict[int, Path], attacks: set[str]) -> pd.DataFrame:
    """The wanted attacks' rows of each finished trial's ``scores.csv`` at epoch 0 and its final epoch."""
    import pandas as pd

    parts = []
    for t in final.itertuples():
        path = trial_dirs[t.trial] / "scores.csv"
        if not path.is_file():
            continue
        s = pd.read_csv(path, dtype={"id": str, "attack": str})
        s = s[s["attack"].isin(attacks) & s["epoch"].isin({0, t.epoch})]
        parts.append(s.assign(label=t.label))
    columns = ["id", "member", "epoch", "attack", "score", "label"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


# -- figures --------------------------------------------------------------------------------------------------
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
            "extraction",
            "Canaries and repetitions",
            plots.extraction_vs_repetitions(results, colors=colors),
            "Planted canaries at the final epoch against how often each was inserted in training: AUC against "
            "never-inserted controls, the share of secrets the model reproduces, and exposure in bits (dotted: "
            "the controls' level).",
            "no canary measurements in this store (enable [canaries] in the run config)",
        ),
    ]


# -- tables ---------------------------------------------------------------------------------------------------
def trials_table(trials: pd.DataFrame) -> Table:
    """Every trial: label, method, key parameters, trainable parameters and share, status, time."""
    rows = []
    for t in trials.itertuples():
        tuning, training = t.info.get("tuning", {}), t.info.get("training", {})
        lr = training.get("lr") or t.config["training"].get("lr")
        share = tuning.get("trainable_share")
        rows.append(
            [
                Cell(str(t.id), "num"),
                Cell(t.label, "label"),
                Cell(str(t.method)),
                Cell(" ".join(f"{k}={_show(v)}" for k, v in t.params.items() if v is not None) or "—"),
                Cell(str(t.config["training"].get("epochs")), "num"),
                Cell("default" if lr is None else f"{lr:g}", "num"),
                Cell(_int(tuning.get("trainable_parameters")), "num"),
                Cell("—" if share is None else f"{100 * share:.2f}%", "num"),
                Cell(str(t.status), {"done": "ok", "failed": "warn"}.get(t.status, "")),
                Cell("—" if _missing(t.seconds) else f"{t.seconds:.0f} s", "num"),
            ]
        )
    headers = ["#", "trial", "method", "settings", "epochs", "lr", "trainable", "share", "status", "time"]
    return Table(headers, rows)


def headline_table(final: pd.DataFrame, attack: str) -> Table:
    """The headline attack per trial at its final epoch, beside chance, the blind baseline and epoch 0."""
    rows = [
        [
            Cell(r["label"], "label"),
            Cell(str(r["epoch"]), "num"),
            Cell(_auc(r["auc"], r["ci_low"], r["ci_high"]), "num"),
            Cell(_pct(r["tpr"]), "num"),
            Cell(_auc(r["auc0"]), "num"),
            Cell(_auc(r["blind"], r["blind_low"], r["blind_high"]), "num"),
            _verdict(r["beats_blind"]),
            Cell(f"{_f(r['val_ppl0'], 2)} → {_f(r['val_ppl'], 2)}", "num"),
        ]
        for r in final.to_dict("records")
    ]
    headers = [
        "trial",
        "epoch",
        f"{attack} AUC [95% CI]",
        "TPR @ 1% FPR",
        "AUC pre-trained",
        "blind AUC [95% CI]",
        "beats blind?",
        "val PPL pre → post",
    ]
    return Table(headers, rows)


def attack_table(results: pd.DataFrame, trial: int, epoch: int, attacks: list[str]) -> Table:
    """Every attack of one trial at its final epoch, with its pre-trained AUC and the blind-baseline verdict."""
    pick = _picker(results[results["trial"] == trial])
    rows = []
    for a in attacks:
        auc = pick(epoch, a, "auc")
        if auc is None:
            continue
        rows.append(
            [
                Cell(a),
                Cell(_auc(_get(auc, "value"), _get(auc, "ci_low"), _get(auc, "ci_high")), "num"),
                Cell(_pct(_get(pick(epoch, a, "tpr", 0.01), "value")), "num"),
                Cell(_auc(_get(pick(0, a, "auc"), "value")), "num"),
                _verdict(_get(auc, "beats_blind")),
            ]
        )
    return Table(["attack", f"AUC epoch {epoch} [95% CI]", "TPR @ 1% FPR", "AUC pre-trained", "beats blind?"], rows)


def extraction_tables(results: pd.DataFrame) -> list[tuple[str, Table]]:
    """The final epoch's extraction (members / non-members per decoding) and canary tables, where measured."""
    tables = []
    ext = results[(results["kind"] == "extraction") & ~results["metric"].isin(EXTRACTION_SKIP)]
    if not ext.empty:
        names = list(dict.fromkeys(ext["metric"]))
        rows = []
        for (label, decoding), g in ext.groupby(["label", "decoding"], sort=False):
            value = {(r["metric"], r["subset"]): r["value"] for r in g.to_dict("records")}
            cells = [
                Cell(f"{_f(value.get((n, 'members')))} / {_f(value.get((n, 'nonmembers')))}", "num") for n in names
            ]
            rows.append([Cell(label, "label"), Cell(decoding), *cells])
        headers = ["trial", "decoding", *(EXTRACTION_COLUMNS.get(n, n.replace("_", " ")) for n in names)]
        tables.append(("Extraction: members / non-members", Table(headers, rows)))
    can = results[results["kind"] == "canary"]
    if not can.empty:
        metrics = list(dict.fromkeys(can["metric"]))
        rows = []
        for (label, attack), g in can.groupby(["label", "attack"], sort=False):
            pick = {r["metric"]: r for r in g.to_dict("records")}
            cells = [
                Cell(_auc(*(_get(pick.get(m), k) for k in ("value", "ci_low", "ci_high"))), "num") for m in metrics
            ]
            rows.append([Cell(label, "label"), Cell(attack), *cells])
        headers = ["trial", "canaries", *(CANARY_COLUMNS.get(m, m) for m in metrics)]
        tables.append(("Canaries", Table(headers, rows)))
    return tables


def _trial_line(r: dict) -> str:
    blind = _auc(r["blind"], r["blind_low"], r["blind_high"])
    return f"blind baseline AUC {blind} · validation perplexity {_f(r['val_ppl0'], 2)} → {_f(r['val_ppl'], 2)}"


def _first_and_last(error: str | None) -> str:
    """A one-line digest of an error message (a traceback's first and last lines)."""
    lines = [x for x in str(error or "no error message").strip().splitlines() if x.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1].strip()}"


def _verdict(beats: float | None) -> Cell:
    if _missing(beats):
        return Cell("—")
    return Cell("yes", "ok") if beats else Cell("NO ⚠", "warn")


def _show(v) -> str:
    return "+".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or _missing(v) or not math.isfinite(v) else f"{v:.{digits}f}"


def _auc(v: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if _missing(lo) or _missing(hi) or _missing(v):
        return _f(v)
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _pct(v: float | None) -> str:
    return "—" if v is None or _missing(v) else f"{100 * v:.1f}%"


def _int(v: float | None) -> str:
    return "—" if v is None or _missing(v) else f"{int(v):,}"


def _md(text: str) -> str:
    """Text for a Markdown table or paragraph: HTML-escaped, Markdown punctuation and newlines neutralised."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)


# -- pages ----------------------------------------------------------------------------------------------------
def _counts(trials: pd.DataFrame) -> str:
    counts = trials["status"].value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _privacy_note(show_text: bool) -> str:
    note = "This report contains no training or evaluation text: the store keeps per-text scores by id only."
    return note + (" (show_text was requested, but there is no text in the store to show.)" if show_text else "")


def _title(data: ReportData) -> str:
    return "memlens report · " + ", ".join(dict.fromkeys(data.trials["sweep"]))


def render_html(data: ReportData, plots: list[Plot], show_text: bool = False) -> str:
    """The whole page as one string: inline CSS and SVG, every inserted string escaped."""
    e = html.escape
    failed = data.trials[data.trials["status"] == "failed"]
    drawn = [p for p in plots if p.svg]
    toc = [
        ("trials", "Trials"),
        ("mia", "Membership inference"),
        ("extraction", "Extraction"),
        ("failed", "Failed trials"),
        ("figures", "Figures"),
        ("attacks", "Every attack"),
    ]
    toc = [(k, v) for k, v in toc if k != "failed" or not failed.empty]
    parts = [
        f"<h1>{e(_title(data))}</h1>",
        f'<p class="meta">store <code>{e(str(data.store_dir))}</code> · {e(_counts(data.trials))} · headline attack '
        f"<b>{e(data.attack)}</b> · generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>",
        f'<p class="note">{e(_privacy_note(show_text))}</p>',
        "<nav>" + " · ".join(f'<a href="#{k}">{e(v)}</a>' for k, v in toc) + "</nav>",
        '<section id="trials"><h2>Trials</h2>',
        trials_table(data.trials).html(),
        "</section>",
        '<section id="mia"><h2>Membership inference at the final epoch</h2>',
        f"<p>AUC is the chance that the attack scores a random member above a random non-member (0.5 = chance). "
        f"The blind baseline sees only the texts, never the model: an attack that does not beat its upper CI "
        f"bound (<b>NO ⚠</b>) may be detecting a distribution shift, not memorization. {e(REFERENCE_NOTE)} "
        f"Headline attack: <b>{e(data.attack)}</b>.</p>",
        headline_table(data.final, data.attack).html(),
        "</section>",
        '<section id="extraction"><h2>Extraction and canaries (final epoch)</h2>',
    ]
    extraction = extraction_tables(data.results)
    parts += [f"<h3>{e(title)}</h3>{table.html()}" for title, table in extraction] or [
        f'<p class="note">{e(NO_EXTRACTION)}</p>'
    ]
    parts.append("</section>")
    if not failed.empty:
        parts.append('<section id="failed"><h2>Failed trials</h2>')
        for t in failed.itertuples():
            parts.append(f"<h3>{e(t.label)}</h3><pre>{e(str(t.error or 'no error message'))}</pre>")
        parts.append("</section>")
    parts.append(f'<section id="figures"><h2>Figures</h2><p class="meta">{len(drawn)} of {len(plots)} drawn.</p>')
    for p in plots:
        parts.append(f'<figure id="fig-{p.anchor}"><h3>{e(p.title)}</h3>')
        if p.svg:
            parts.append(f'<div class="svg">{p.svg}</div><figcaption>{e(p.caption)}</figcaption>')
        else:
            parts.append(f'<p class="note">Not drawn: {e(p.missing)}.</p>')
        parts.append("</figure>")
    parts.append('</section>\n<section id="attacks"><h2>Every attack, per trial (final epoch)</h2>')
    for r in data.final.to_dict("records"):
        parts += [
            f'<h3>{e(r["label"])}</h3><p class="meta">{e(_trial_line(r))}</p>',
            attack_table(data.results, r["trial"], r["epoch"], data.attacks).html(),
        ]
    parts.append("</section>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(_title(data))}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )


def render_markdown(data: ReportData, plots: list[Plot], show_text: bool = False) -> str:
    """A short Markdown summary: counts, the headline AUC table, every attack per trial, failures, figures."""
    failed = data.trials[data.trials["status"] == "failed"]
    lines = [
        f"# {_md(_title(data))}",
        "",
        f"{_md(_counts(data.trials))}; headline attack {_md(data.attack)}. {_md(_privacy_note(show_text))}",
        "",
        "## Trials",
        "",
        trials_table(data.trials).md(),
        "",
        f"## Membership inference at the final epoch ({_md(data.attack)})",
        "",
        headline_table(data.final, data.attack).md(),
        "",
        f"NO ⚠ = the attack does not beat the blind baseline's upper CI bound. {_md(REFERENCE_NOTE)}",
    ]
    lines += ["", "## Extraction and canaries (final epoch)"]
    extraction = extraction_tables(data.results)
    for title, table in extraction:
        lines += ["", f"### {_md(title)}", "", table.md()]
    if not extraction:
        lines += ["", _md(NO_EXTRACTION)]
    lines += ["", "## Every attack, per trial (final epoch)"]
    for r in data.final.to_dict("records"):
        lines += ["", f"### {_md(r['label'])}", "", _md(_trial_line(r)), ""]
        lines.append(attack_table(data.results, r["trial"], r["epoch"], data.attacks).md())
    if not failed.empty:
        lines += ["", "## Failed trials", ""]
        lines += [f"- {_md(t.label)}: {_md(_first_and_last(t.error))}" for t in failed.itertuples()]
    drawn = [p.title for p in plots if p.svg]
    lines += ["", "## Figures", "", f"In report.html: {_md(', '.join(drawn) or 'none')}."]
    lines += [f"Not drawn: {_md(p.title)} ({_md(p.missing)})." for p in plots if not p.svg]
    return "\n".join(lines) + "\n"


CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1f2328; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
  Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e4e7eb; }
h3 { font-size: 16px; margin: 22px 0 8px; }
h4 { font-size: 14px; margin: 18px 0 2px; }
p { margin: 6px 0 10px; max-width: 80ch; }
.meta { color: #57606a; font-size: 13px; margin-top: 0; }
.note { color: #57606a; background: #f6f8fa; border-left: 3px solid #d0d7de; padding: 6px 10px; font-size: 13px; }
nav { font-size: 14px; margin: 12px 0; }
a { color: #0b61c4; text-decoration: none; }
code { font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
.table { overflow-x: auto; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e4e7eb; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.label { min-width: 11em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.ok { color: #1a7f37; }
td.warn { color: #a40e26; background: #ffebe9; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #e4e7eb; padding: 8px 10px; font-size: 12px; white-space: pre-wrap;
  word-break: break-word; }
figure { margin: 18px 0 28px; }
figure .svg svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 13px; max-width: 90ch; margin-top: 4px; }
@media print { body { background: #fff; } main { padding: 0; } figure { break-inside: avoid; } }
"""
