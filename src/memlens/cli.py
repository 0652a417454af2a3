"""The ``memlens`` command. Start-up imports no torch: heavy modules load inside the commands."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="memlens: measure how much a fine-tuned language model memorizes of its fine-tuning data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and prepare built-in models.", no_args_is_help=True)
data_app = typer.Typer(help="Get datasets.", no_args_is_help=True)
results_app = typer.Typer(help="Work with a results store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(results_app, name="results")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder with the data (PHEE: train/dev/test.jsonl).")]
Out = Annotated[
    Path | None, typer.Option("--out", help="Results folder (default: the config's output.dir, e.g. runs/NAME).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing results folder.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print results.json to stdout instead of the table.")]
RetryFailed = Annotated[bool, typer.Option(help="Run failed trials again.")]
Backend = Annotated[
    str, typer.Option(help="local (one trial after another here) or ray (trials as Ray tasks on a cluster).")
]
Address = Annotated[
    str | None,
    typer.Option(help="With --backend ray: the cluster, auto or HOST:PORT (default: a new local Ray instance)."),
]


def _guard(fn):
    """Print a user error as one line on stderr and exit 2; never a traceback for bad input."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from memlens.errors import MemlensError

        try:
            return fn(*args, **kwargs)
        except MemoryError:
            typer.echo("error: out of memory: reduce the sizes in the config (batch size, rank, counts)", err=True)
            raise typer.Exit(2) from None
        except RuntimeError as err:  # torch reports a failed allocation as a RuntimeError
            if "allocate" not in str(err) and "out of memory" not in str(err):
                raise
            typer.echo(
                f"error: out of memory ({str(err).splitlines()[0][:200]}); reduce the sizes in the config", err=True
            )
            raise typer.Exit(2) from None
        except MemlensError as err:
            one_line = str(err).replace("\r", "\\r").replace("\n", "\\n")  # a path or field may hold one
            typer.echo(f"error: {one_line}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as err:
            typer.echo("interrupted: unfinished work was not written (finished sweep trials are kept)", err=True)
            resume = sys.modules.get("memlens.experiments.resume")  # imported only by a run that may have saved
            for folder in resume.kept() if resume is not None else []:
                typer.echo(
                    f"the fine-tune's last finished epoch is kept in {folder}: the same command again goes on from it",
                    err=True,
                )
            raise typer.Exit(128 + getattr(err, "signum", 2)) from None

    return wrapper


def _execute(cfg, overrides: dict, quiet: bool, as_json: bool, *, audit: bool = False) -> None:
    import json

    from memlens import progress
    from memlens.config import with_overrides
    from memlens.report import print_summary

    progress.set_enabled(not quiet)
    cfg = with_overrides(cfg, overrides)
    if audit:
        from memlens.experiments.audit import audit as work
    else:
        from memlens.experiments import run as work
    results = work(cfg)
    if as_json:
        typer.echo(json.dumps(results, indent=2, default=str))
    else:
        print_summary(results)


@app.command()
@_guard
def demo(
    data_dir: DataDir = None,
    out: Out = None,
    overwrite: Overwrite = False,
    epochs: Annotated[int | None, typer.Option(help="Override the number of epochs.")] = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Fine-tune SmolLM2-135M with LoRA on PHEE sentences, attack it, print the table (~5 min on 2 CPU cores)."""
    from memlens.config import builtin_config

    _execute(
        builtin_config("demo"),
        {"data.dir": data_dir, "output.dir": out, "output.overwrite": overwrite or None, "training.epochs": epochs},
        quiet,
        as_json,
    )


@app.command("run")
@_guard
def run_cmd(
    config: Annotated[Path, typer.Argument(help="TOML run config (see README).")],
    data_dir: DataDir = None,
    out: Out = None,
    overwrite: Overwrite = False,
    model: Annotated[str | None, typer.Option(help="Override model.name.")] = None,
    allow_overlap: Annotated[bool, typer.Option(help="Allow texts shared by members and non-members.")] = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Run the experiment described by a TOML config."""
    from memlens.config import load_config

    _execute(
        load_config(config),
        {
            "data.dir": data_dir,
            "output.dir": out,
            "output.overwrite": overwrite or None,
            "model.name": model,
            "data.allow_overlap": allow_overlap or None,
        },
        quiet,
        as_json,
    )


@app.command("audit")
@_guard
def audit_cmd(
    config: Annotated[
        Path | None,
        typer.Argument(help="Optional TOML run config (its model, data, attacks, extraction …; no training)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="The fine-tuned model, or the base an --adapter belongs to.")
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="A peft adapter folder fine-tuned on --model.")] = None,
    members: Annotated[Path | None, typer.Option(help="The texts it was fine-tuned on (JSONL/CSV/Parquet/…).")] = None,
    nonmembers: Annotated[Path | None, typer.Option(help="Texts of the same kind it never saw.")] = None,
    validation: Annotated[
        Path | None, typer.Option(help="Other held-out texts: validation perplexity, ReCaLL's prefix.")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="Reference model R (default: the base, when --adapter is given).")
    ] = None,
    text_field: Annotated[str | None, typer.Option(help="The text field/column (default text).")] = None,
    out: Out = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Measure a model fine-tuned elsewhere (a checkpoint, or a base model plus a peft adapter): no training."""
    from memlens.config import RunConfig, load_config

    cfg = load_config(config) if config is not None else RunConfig(name="audit")
    files = {"members": members, "nonmembers": nonmembers, "validation": validation}
    if (any(files.values()) or config is None) and None in files.values():
        from memlens.errors import MemlensError

        raise MemlensError("an audit needs --members, --nonmembers and --validation (or a config with [data])")
    overrides: dict[str, object] = {f"data.{k}": v for k, v in files.items() if v is not None}
    if overrides:
        overrides |= {"data.source": "files", "data.n_members": 0, "data.n_nonmembers": 0, "data.n_validation": 0}
    _execute(
        cfg,
        overrides
        | {
            "model.name": model,
            "model.adapter": adapter,
            "attacks.reference_model": reference,
            "data.text_field": text_field,
            "output.dir": out,
            "output.overwrite": overwrite or None,
        },
        quiet,
        as_json,
        audit=True,
    )


@app.command("sweep")
@_guard
def sweep_cmd(
    file: Annotated[
        Path, typer.Argument(help="TOML sweep file: \\[base] run config, \\[grid] axes, \\[\\[variants]].")
    ],
    folder: Annotated[Path | None, typer.Option("--dir", help="Project folder with the results store.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials and a cost estimate only.")] = False,
    retry_failed: RetryFailed = False,
    backend: Backend = "local",
    address: Address = None,
    quiet: Quiet = False,
) -> None:
    """Run every trial of a sweep into a crash-safe results store (a killed sweep resumes where it stopped)."""
    from memlens import progress
    from memlens.experiments.sweep import (
        check_backend,
        dry_run_table,
        load_sweep,
        run_sweep,
        store_progress,
        throughput_note,
    )

    progress.set_enabled(not quiet)
    check_backend(backend, address)
    sweep = load_sweep(file)
    folder = folder or Path("runs") / sweep.name
    if dry_run:
        rows, total = dry_run_table(sweep)
        for label, overrides, cost in rows:
            typer.echo(f"{label:40s} {cost:>12s}  {overrides}")
        rate = throughput_note(sweep)
        typer.echo(f"{len(rows)} trials, estimated ~{total / 60:.0f} min in all (rough: {rate})")
        typer.echo(store_progress(folder, sweep, retry_failed=retry_failed, address=address))
        _placement(sweep, backend, address)
        return
    counts = run_sweep(sweep, folder, retry_failed=retry_failed, backend=backend, address=address)
    typer.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


def _placement(sweep, backend: str, address: str | None) -> None:
    """A dry run on Ray: what each trial asks the cluster for and (with ``address``) how many run at once."""
    if backend == "ray":
        from memlens.experiments.distributed import placement

        typer.echo(placement(sweep.resources, address, [t.config.model_dump(mode="json") for t in sweep.trials]))


@app.command("reproduce")
@_guard
def reproduce_cmd(
    preset: Annotated[str, typer.Argument(help="savine2025 or hou2025.")],
    scale: Annotated[str, typer.Option(help="tiny (CPU, ~20 min), small (CPU, hours) or full (GPU).")] = "tiny",
    folder: Annotated[Path | None, typer.Option("--dir", help="Project folder (default runs/PRESET-SCALE).")] = None,
    data_dir: DataDir = None,
    seeds: Annotated[
        str, typer.Option(help="Training seeds, comma-separated: each trial runs once per seed (e.g. 0,1,2).")
    ] = "0",
    data: Annotated[
        str, typer.Option(help="Dataset shipped with memlens: phee (medical) or sotu (State of the Union).")
    ] = "phee",
    model: Annotated[
        str | None,
        typer.Option(
            help="Pre-trained model of every trial instead of SmolLM2-135M-Instruct (built-in name, local folder, "
            ".gguf file or hub id), e.g. the study's own on a GPU; hou2025's model-size trial is left out."
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE set in every trial (a sweep axis or dotted config key, the value as in TOML), e.g. "
            "--set prefix_init=text; named in the sweep, so its store is its own. Repeatable.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the trials, the cost and (with --pilot) the power; run nothing.")
    ] = False,
    pilot: Annotated[
        Path | None,
        typer.Option(help="With --dry-run: a finished run of the preset (e.g. its tiny scale) to project from."),
    ] = None,
    findings_only: Annotated[
        bool,
        typer.Option(
            "--findings-only",
            help="Write findings.md and the report from the trials finished so far in --dir (also while the run "
            "goes on elsewhere); run nothing.",
        ),
    ] = False,
    retry_failed: RetryFailed = False,
    backend: Backend = "local",
    address: Address = None,
    quiet: Quiet = False,
) -> None:
    """Run a study's design and put its published findings beside memlens's numbers (findings.md, report)."""
    from memlens import progress
    from memlens.experiments.presets import preset_spec
    from memlens.experiments.sweep import check_backend, expand, run_sweep, store_progress
    from memlens.report.findings import write_findings

    progress.set_enabled(not quiet)
    if findings_only and (retry_failed or backend != "local" or address is not None):
        from memlens.errors import MemlensError

        raise MemlensError("--findings-only runs nothing: --retry-failed, --backend and --address are for a run")
    check_backend(backend, address)
    spec = preset_spec(preset, scale, _seed_list(seeds), data, model, _settings(settings or []))
    if data_dir is not None:
        if data != "phee":
            from memlens.errors import MemlensError

            raise MemlensError(f"--data-dir points at PHEE's files; {data} is shipped inside memlens")
        spec["base"]["data"]["dir"] = str(data_dir)
    if findings_only and (dry_run or pilot is not None):
        from memlens.errors import MemlensError

        raise MemlensError("--findings-only writes findings from a store; --dry-run and --pilot plan a run")
    folder_given, folder = folder, folder or Path("runs") / spec["name"]
    if dry_run or pilot is not None:
        if not dry_run:
            from memlens.errors import MemlensError

            raise MemlensError("--pilot only projects a run: use it with --dry-run")
        sweep = _preset_plan(preset, spec, pilot)
        typer.echo(store_progress(folder, sweep, retry_failed=retry_failed, address=address))
        _placement(sweep, backend, address)
        return
    if findings_only:
        _check_preset_store(folder, spec["name"])
    else:
        sweep = expand(spec, f"preset {preset}")
        counts = run_sweep(sweep, folder, retry_failed=retry_failed, backend=backend, address=address)
        typer.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    command = _reproduce_command(preset, scale, seeds, data, data_dir, folder_given, model, settings or [])
    typer.echo(str(write_findings(preset, folder, command, sweep=spec["name"])))
    _render(folder)


def _check_preset_store(folder: Path, sweep: str) -> None:
    """``--findings-only``: ``folder`` must hold a results store with this preset's sweep (one line if not); the
    findings read that sweep's trials only, whatever else the store holds."""
    from memlens.errors import MemlensError
    from memlens.experiments.store import Store

    if not (folder / "results.db").is_file():
        raise MemlensError(f"no results store in {folder}: run the preset without --findings-only first")
    store = Store(folder, create=False)
    try:
        names = [r[0] for r in store.db.execute("SELECT name FROM sweeps ORDER BY name")]
    finally:
        store.close()
    same = "give the preset's --scale, --seeds, --data, --model and --set as the run had them"
    if sweep not in names:
        raise MemlensError(
            f"{folder} holds no sweep {sweep!r} (it holds {', '.join(map(repr, names)) or 'none'}): {same}"
        )


def _reproduce_command(
    preset: str,
    scale: str,
    seeds: str,
    data: str,
    data_dir: Path | None,
    folder: Path | None,
    model: str | None = None,
    settings: list[str] | None = None,
) -> str:
    """The command that runs this preset, as findings.md shows it (the options that change what is run)."""
    import shlex

    words = ["memlens", "reproduce", preset, "--scale", scale]
    words += ["--seeds", seeds.replace(" ", "")] if _seed_list(seeds) != [0] else []
    words += ["--data", data] if data != "phee" else []
    words += ["--model", model] if model is not None else []
    words += [w for item in settings or [] for w in ("--set", item)]
    words += ["--data-dir", str(data_dir)] if data_dir is not None else []
    words += ["--dir", str(folder)] if folder is not None else []
    return " ".join(shlex.quote(w) for w in words)


def _preset_plan(preset: str, spec: dict, pilot: Path | None):
    """``reproduce --dry-run``: the trials and their cost; with a pilot run, each finding's CI half-width at
    this size and the texts per set needed to resolve ΔAUC = 0.03, and the wall time calibrated on the pilot.
    Returns the expanded sweep."""
    from memlens.experiments.presets import set_sizes
    from memlens.experiments.sweep import dry_run_table, expand, throughput_note

    sweep = expand(spec, f"preset {preset}")
    rows, total = dry_run_table(sweep)
    sizes = set_sizes(spec)
    typer.echo(f"{spec['name']}: {len(rows)} trials, {sizes[0]} members / {sizes[1]} non-members per trial")
    unknown = sum(cost.startswith("unknown") for _, _, cost in rows)  # e.g. a hub id not downloaded here
    left_out = (
        f"; {unknown} of the {len(rows)} trials not counted: their model's size is unknown here" if unknown else ""
    )
    typer.echo(f"estimate: ~{total / 60:.0f} min in all (rough: {throughput_note(sweep)}){left_out}")
    if pilot is None:
        return sweep
    from memlens.experiments.findings import evaluate_findings, load_scores
    from memlens.experiments.power import power_table, projected_seconds
    from memlens.experiments.store import Store

    store = Store(pilot, create=False)
    try:
        scores, trials = load_scores(store), store.trials()
    finally:
        store.close()
    if not scores.trials:
        from memlens.errors import MemlensError

        raise MemlensError(f"the pilot {pilot} holds no finished trial with per-text scores to project from")
    seconds = projected_seconds(trials, sweep)
    if seconds is not None:
        typer.echo(f"calibrated on the pilot's measured trial times: ~{seconds / 3600:.1f} h on the pilot's machine")
    findings = evaluate_findings(preset, scores)
    pilot_sizes = (scores.n_members, scores.n_nonmembers)
    typer.echo(f"pilot {pilot}: {pilot_sizes[0]} members / {pilot_sizes[1]} non-members")
    for measure, unit in (("auc", "AUC"), ("gap", "nats/token")):
        for r in power_table(findings, pilot_sizes, sizes, measure=measure):
            need = "—" if r.needed is None else f"{r.needed:,} texts per set"
            typer.echo(
                f"{r.finding} {r.what} ({unit}): pilot {r.diff:+.3f} ± {r.half_width:.3f} → ± {r.projected:.3f} "
                f"here (80% power from {r.detectable:.3f}); to resolve 0.03 with 80% power: {need}"
            )
    typer.echo(
        "Projections assume the effect does not change with size, epochs or seeds (see memlens.experiments.power)."
    )
    return sweep


def _settings(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` options as {dotted key: value}, sorted, each value read as TOML (``1e-3``, ``true``,
    ``["q", "v"]``) or else as a string (``text``)."""
    import tomllib

    from memlens.errors import MemlensError
    from memlens.experiments.sweep import config_key

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not (sep and key.strip() and raw.strip()):
            raise MemlensError(f"--set takes KEY=VALUE, e.g. --set prefix_init=text (got {item!r})")
        dotted = config_key(key.strip())
        if dotted in out:
            raise MemlensError(f"--set gives {dotted} twice")
        try:
            out[dotted] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[dotted] = raw.strip()
    return dict(sorted(out.items()))


def _seed_list(text: str) -> list[int]:
    from memlens.errors import MemlensError

    parts = [p.strip() for p in text.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise MemlensError(f"--seeds must be distinct non-negative integers separated by commas, got {text!r}")
    return [int(p) for p in parts]


def _render(folder: Path, out: Path | None = None) -> None:
    from memlens.report import render_report

    html, md = render_report(folder, out)
    typer.echo(f"{html}\n{md}")


@app.command("report")
@_guard
def report_cmd(
    folder: Annotated[
        Path, typer.Option("--dir", help="A sweep's project folder (results store) or one run's output folder.")
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the report (default: DIR/report).")] = None,
) -> None:
    """Render a self-contained HTML report and a Markdown summary from a results store or a run folder."""
    _render(folder, out)


@app.command("compare")
@_guard
def compare_cmd(
    a: Annotated[str, typer.Argument(help="Trial id or label (with --dir), or a run's output folder.")],
    b: Annotated[str, typer.Argument(help="The same kind as A, compared with it (differences are A − B).")],
    folder: Annotated[
        Path | None,
        typer.Option("--dir", help="Project folder with the results store (read only); without it A and B are runs."),
    ] = None,
    epoch: Annotated[int | None, typer.Option(help="Epoch to compare (default: the last both evaluated).")] = None,
    fpr: Annotated[float, typer.Option(help="FPR budget of the TPR difference.")] = 0.01,
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap replicates.")] = 1000,
) -> None:
    """Compare two trials of a store (--dir) or two run folders attack by attack on their paired per-text scores:
    ΔAUC (DeLong CI, Holm-adjusted p, paired-bootstrap CI) and ΔTPR at an FPR budget (paired-bootstrap CI)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from memlens.experiments.compare import compare

    if not 0 < fpr < 1 or bootstrap < 1:
        from memlens.errors import MemlensError

        raise MemlensError("--fpr must be in (0, 1) and --bootstrap at least 1")
    c = compare(a, b, store=folder, epoch=epoch, fprs=[fpr], n_boot=bootstrap)
    title = f"a = {c.a}  vs  b = {c.b}, epoch {c.rows[0].epoch}"
    table = Table(title=escape(title), title_justify="left")
    for col in ("attack", "AUC a", "AUC b", "ΔAUC [95% CI, DeLong]", "p (Holm)", "ΔAUC [paired bootstrap]"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    table.add_column(f"ΔTPR @ {100 * fpr:g}% FPR [bootstrap]", justify="right")
    table.add_column("verdict", justify="center")
    for r in c.rows:
        d, bt, t = r.auc_delong, r.auc_bootstrap, r.tpr[0]
        table.add_row(
            escape(r.attack),
            f"{d.a:.3f}",
            f"{d.b:.3f}",
            f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]",
            f"{r.p_holm:.3g}",
            f"[{bt.ci_low:+.3f}, {bt.ci_high:+.3f}]",
            f"{100 * t.diff:+.1f} pp [{100 * t.ci_low:+.1f}, {100 * t.ci_high:+.1f}]"
            if t.diff == t.diff
            else f"— ({t.method})",
            r.verdict,
        )
    console = Console()
    console.width = max(console.width, 150)
    console.print(table)
    n = c.rows[0]
    typer.echo(
        f"{n.n_members} members and {n.n_nonmembers} non-members, paired; verdicts from DeLong p-values "
        f"Holm-adjusted over {len(c.rows)} attacks (level {1 - 0.95:.2f})"
    )
    if c.gap is not None:
        g = c.gap
        typer.echo(
            f"loss gap (members' loss drop minus non-members', nats/token): a {g.a:.3f}, b {g.b:.3f}, "
            f"Δ {g.diff:+.3f} [{g.ci_low:+.3f}, {g.ci_high:+.3f}] (paired bootstrap) — {c.gap_verdict}"
        )


@results_app.command("export")
@_guard
def results_export(
    folder: Annotated[Path, typer.Option("--dir", help="Project folder with the results store.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, parquet or json.")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: DIR/results.FORMAT).")] = None,
) -> None:
    """Write one tidy results table (trial, epoch, attack, metric, value, CI)."""
    from memlens.experiments.store import Store

    store = Store(folder, create=False)
    typer.echo(str(store.export(out or folder / f"results.{fmt}", fmt)))


@results_app.command("verify")
@_guard
def results_verify(
    folder: Annotated[Path, typer.Option("--dir", help="Project folder with the results store.")],
    trial: Annotated[str, typer.Option(help="The trial to rerun: its id or its label (e.g. 'lora seed=0').")],
    tolerance: Annotated[
        float, typer.Option(help="Largest difference of a per-text score or measured value still called equal.")
    ] = 1e-4,
    quiet: Quiet = False,
) -> None:
    """Rerun a finished trial from its stored config (score cache off) and compare every per-text score and
    measured value with the store; exit 1 when they differ."""
    from memlens import progress
    from memlens.experiments.verify import verify_trial

    progress.set_enabled(not quiet)
    v = verify_trial(folder, trial, tolerance=tolerance)
    stored = "?" if v.seconds_stored is None else f"{v.seconds_stored:.0f} s"
    typer.echo(f"trial {v.trial} ({v.label}): rerun, score cache off, in {v.seconds:.0f} s (stored run: {stored})")
    typer.echo(f"per-text scores: {v.n_scores:,} in both, max |Δ| {v.max_score_diff:.3g}, {v.unmatched} in one only")
    typer.echo(
        f"measured values (and CI bounds): {v.n_values:,} in both, max |Δ| {v.max_value_diff:.3g}, "
        f"{v.unmatched_values} records in one only"
    )
    if v.worst is not None and v.max_value_diff > v.tolerance:
        typer.echo(f"largest difference: {v.worst}")
    for key in ("torch", "transformers", "peft", "torch_threads", "cuda", "packed_scoring"):
        a, b = v.stored_environment.get(key), v.environment.get(key)
        if key in v.stored_environment and a != b:  # a key an older memlens did not record is not a difference
            typer.echo(f"differs from the stored run: {key} {a} there, {b} here")
    if v.reproduced:
        typer.echo(f"reproduced (tolerance {v.tolerance:g})")
        return
    why = "numbers differ"
    if v.unmatched or v.unmatched_values:
        why = "the runs scored different texts or measures (check the data folder and the memlens version)"
    typer.echo(f"NOT reproduced (tolerance {v.tolerance:g}): {why}", err=True)
    raise typer.Exit(1)


@app.command("attacks")
def attacks_cmd() -> None:
    """List the membership-inference attacks (higher score = more likely a member)."""
    from memlens.attacks import ATTACKS

    for a in ATTACKS.values():
        needs = f" (needs {', '.join(sorted(a.needs))})" if a.needs else ""
        typer.echo(f"{a.name:12s} {a.description}{needs}")


@models_app.command("list")
def models_list() -> None:
    """Built-in models and whether they are installed."""
    from memlens.models.builtin import BUILTIN_MODELS

    for m in BUILTIN_MODELS.values():
        state = "installed" if m.installed() else f"not installed: {m.install}"
        typer.echo(f"{m.name:14s} {m.description} [{m.license}] — {state}")


@models_app.command("prepare")
@_guard
def models_prepare(
    name: Annotated[str, typer.Argument(help="Built-in name or .gguf file.")], quiet: Quiet = False
) -> None:
    """Convert a built-in (GGUF) model to safetensors once, so later runs load it in a fraction of a second."""
    from memlens import progress
    from memlens.models import prepare

    progress.set_enabled(not quiet)
    typer.echo(str(prepare(name)))


@data_app.command("download")
@_guard
def data_download(
    dataset: Annotated[str, typer.Argument(help="Dataset name: phee.")],
    dest: Annotated[Path, typer.Argument(help="Folder to write into.")],
) -> None:
    """Download a dataset from its public source (needs internet), checking sha256 checksums."""
    from memlens.data import download_phee
    from memlens.errors import MemlensError

    if dataset != "phee":
        raise MemlensError(f"unknown dataset {dataset!r}; available: phee")
    typer.echo(str(download_phee(dest)))


def _terminate(signum: int, frame) -> None:
    from memlens.errors import Terminated

    raise Terminated(signum)


def main() -> None:
    import signal
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notices are not for users
    for sig in (signal.SIGTERM, signal.SIGHUP):  # clean up as after Ctrl-C: no staging folder, no temp file left
        signal.signal(sig, _terminate)
    app(prog_name="memlens")


if __name__ == "__main__":
    main()
