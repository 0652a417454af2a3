"""The sweep report: one self-contained HTML page (inline CSS and SVG, no script, no external URL) and a
Markdown summary, rendered from a results store.

The store keeps per-text scores keyed by text id, never the texts, so the report cannot contain training
text. The page is rendered by jinja2 with autoescaping on (``templates/report.html.j2``): every string from
the store is escaped unless marked safe, and only the SVG figures and the stylesheet are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path

from memlens.errors import MemlensError
from memlens.files import describe_os_error, write_text
from memlens.report.data import ReportData, load_report_data, status_counts
from memlens.report.figures import Plot, make_plots
from memlens.report.summary import diverged_notes
from memlens.report.tables import (
    attack_table,
    comparison_table,
    extraction_tables,
    first_and_last,
    headline_table,
    md_text,
    trial_line,
    trials_table,
)

NO_EXTRACTION = "No extraction or canary measurements: enable [extraction] and [canaries] in the run config."
REFERENCE_NOTE = "The reference attack has no pre-trained AUC: before fine-tuning the model is its own reference."


def render_report(
    store_dir: str | Path, out_dir: str | Path | None = None, *, attack: str = "reference", show_text: bool = False
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the store in ``store_dir`` — a sweep's results store, or
    one run's output folder (``memlens run``) — into ``out_dir`` (default ``store_dir/report``); return their
    paths. ``attack`` is the headline attack of the tables and figures."""
    folder = Path(store_dir)
    if not (folder / "results.db").is_file() and (folder / "results.json").is_file():
        with _run_as_store(folder) as store:
            data = load_report_data(store, attack)
        data.store_dir = folder
    else:
        data = load_report_data(folder, attack)
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


@contextmanager
def _run_as_store(run_dir: Path) -> Iterator[Path]:
    """A one-trial results store, in a temporary folder, holding a run folder's results and per-text scores."""
    import json
    import shutil
    import tempfile

    from memlens.config import parse_config, read_toml
    from memlens.experiments.store import Store

    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        config = parse_config(read_toml(run_dir / "config.toml"), str(run_dir / "config.toml"))
    except (OSError, ValueError) as err:
        raise MemlensError(f"{run_dir} is not a readable memlens run folder ({type(err).__name__})") from None
    with tempfile.TemporaryDirectory(prefix="memlens-report-") as tmp:
        store = Store(tmp)
        name = str(results.get("name") or run_dir.name)
        store.register_sweep(name, {}, "run", [("run", name, config.model_dump(mode="json"))])
        store.start(1)
        info = {k: results.get(k) for k in ("model", "tuning", "training", "timings", "environment", "data")}
        store.finish(1, results.get("records", []), info, float((results.get("timings") or {}).get("total", 0.0)))
        if (run_dir / "scores.csv").is_file():
            store.trial_dir(1).mkdir(parents=True)
            shutil.copyfile(run_dir / "scores.csv", store.trial_dir(1) / "scores.csv")
        store.close()
        yield Path(tmp)


def _privacy_note(show_text: bool) -> str:
    note = "This report contains no training or evaluation text: the store keeps per-text scores by id only."
    return note + (" (show_text was requested, but there is no text in the store to show.)" if show_text else "")


def _title(data: ReportData) -> str:
    return "memlens report · " + ", ".join(dict.fromkeys(data.trials["sweep"]))


@cache
def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("memlens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def render_html(data: ReportData, plots: list[Plot], show_text: bool = False) -> str:
    """The whole page as one string: inline CSS and SVG, every inserted string escaped by the template."""
    failed = data.trials[data.trials["status"] == "failed"]
    compared = comparison_table(data.comparisons, data.attack)
    toc = [
        ("trials", "Trials"),
        ("mia", "Membership inference"),
        ("compare", "Paired comparisons"),
        ("extraction", "Extraction"),
        ("failed", "Failed trials"),
        ("figures", "Figures"),
        ("attacks", "Every attack"),
    ]
    return _template().render(
        title=_title(data),
        css=resources.files("memlens.report").joinpath("templates/report.css").read_text(encoding="utf-8"),
        store_dir=str(data.store_dir),
        counts=status_counts(data.trials),
        attack=data.attack,
        generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        privacy_note=_privacy_note(show_text),
        toc=[(k, v) for k, v in toc if (k != "failed" or not failed.empty) and (k != "compare" or compared)],
        trials=trials_table(data.trials),
        diverged=diverged_notes(data.results, data.trials),
        reference_note=REFERENCE_NOTE,
        headline=headline_table(data.final, data.attack),
        compared=compared,
        extraction=extraction_tables(data.results),
        no_extraction=NO_EXTRACTION,
        failed=[(t.label, str(t.error or "no error message")) for t in failed.itertuples()],
        plots=plots,
        per_trial=[
            (r["label"], trial_line(r), attack_table(data.results, r["trial"], r["epoch"], data.attacks))
            for r in data.final.to_dict("records")
        ],
    )


def render_markdown(data: ReportData, plots: list[Plot], show_text: bool = False) -> str:
    """A short Markdown summary: counts, the headline AUC table, every attack per trial, failures, figures."""
    failed = data.trials[data.trials["status"] == "failed"]
    lines = [
        f"# {md_text(_title(data))}",
        "",
        f"{md_text(status_counts(data.trials))}; headline attack {md_text(data.attack)}. "
        f"{md_text(_privacy_note(show_text))}",
        "",
        "## Trials",
        "",
        trials_table(data.trials).md(),
        *[f"\n- {md_text(n)}" for n in diverged_notes(data.results, data.trials)],
        "",
        f"## Membership inference at the final epoch ({md_text(data.attack)})",
        "",
        headline_table(data.final, data.attack).md(),
        "",
        f"NO ⚠ = the attack's CI does not lie above the blind baseline's CI. {md_text(REFERENCE_NOTE)}",
    ]
    compared = comparison_table(data.comparisons, data.attack)
    if compared is not None:
        lines += ["", "## Paired comparisons with the first trial", "", compared.md()]
    lines += ["", "## Extraction and canaries (final epoch)"]
    extraction = extraction_tables(data.results)
    for title, table in extraction:
        lines += ["", f"### {md_text(title)}", "", table.md()]
    if not extraction:
        lines += ["", md_text(NO_EXTRACTION)]
    lines += ["", "## Every attack, per trial (final epoch)"]
    for r in data.final.to_dict("records"):
        lines += ["", f"### {md_text(r['label'])}", "", md_text(trial_line(r)), ""]
        lines.append(attack_table(data.results, r["trial"], r["epoch"], data.attacks).md())
    if not failed.empty:
        lines += ["", "## Failed trials", ""]
        lines += [f"- {md_text(t.label)}: {md_text(first_and_last(t.error))}" for t in failed.itertuples()]
    drawn = [p.title for p in plots if p.svg]
    lines += ["", "## Figures", "", f"In report.html: {md_text(', '.join(drawn) or 'none')}."]
    lines += [f"Not drawn: {md_text(p.title)} ({md_text(p.missing)})." for p in plots if not p.svg]
    return "\n".join(lines) + "\n"
