"""The report's figures, each returned as an inline SVG string (or ``None`` when its data is missing).

Figures are built on :class:`matplotlib.figure.Figure` objects and written straight to SVG: pyplot is never
imported, so no window opens and no global backend state changes. Text stays text (``svg.fonttype = none``),
so it is selectable and searchable in the page, and every ``id`` inside an SVG is prefixed with the figure's
name, so several figures can share one HTML page without clashing.

Inputs are pandas DataFrames:

- ``results``: the store's tidy rows (``label, epoch, attack, metric, value, ci_low, ci_high``);
- ``scores``: rows of the trials' ``scores.csv`` with a ``label`` column (``label, id, member, epoch, attack,
  score``; the pseudo-attack ``nll`` is the per-text mean NLL; texts never appear, only their ids);
- ``final``: one row per trial at its final epoch (``label, auc, ci_low, ci_high, val_ppl`` and, where a plot
  needs them, ``rank``, ``targets``, ``group``).

Every ``label`` must identify one trial.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from memlens.metrics import linear_fit

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MEMBER, NONMEMBER = "#c0392b", "#2e6fba"
STYLE = {
    "svg.fonttype": "none",  # real <text> elements
    "svg.hashsalt": "memlens",  # deterministic ids
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
METRIC_NAMES = {
    "canary_auc": "canary AUC vs controls",
    "canary_extraction_rate": "share of secrets extracted",
    "canary_exposure": "exposure (bits)",
}


def as_svg(plot: Callable[..., Figure | None]) -> Callable[..., str | None]:
    """Turn a function that builds a Figure (or returns None) into one that returns inline SVG (or None)."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs) -> str | None:
        import matplotlib

        with matplotlib.rc_context(cast(Any, STYLE)):
            fig = plot(*args, **kwargs)
            return None if fig is None else to_svg(fig, plot.__name__)

    wrapper.__annotations__ = plot.__annotations__ | {"return": "str | None"}
    return wrapper


def to_svg(fig: Figure, prefix: str) -> str:
    """``fig`` as an ``<svg>`` element for inline HTML: no XML prolog, no metadata, ids prefixed."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    refs = re.compile(r'(\bid="|href="#|url\(#)')
    return re.sub(r"<[^>]*>", lambda tag: refs.sub(rf"\g<1>{prefix}-", tag[0]), svg)  # tags only, never text


def palette(labels: Iterable[str]) -> dict[str, str]:
    """A stable colour per label (tab10, or tab20 beyond ten labels)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    labels = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: to_hex(cmap(i % cmap.N)) for i, label in enumerate(labels)}


def _new(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 3.4, **kw) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _text(label: object) -> str:
    """Text matplotlib shows as-is: "$" never starts mathtext, a leading "_" does not hide a legend entry."""
    s = str(label).replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _colors(labels: Iterable[str], colors: dict[str, str] | None) -> dict[str, str]:
    own = palette(labels)
    return own if colors is None else own | {k: v for k, v in colors.items() if k in own}


def _chance(ax: Axes, *, vertical: bool = False) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(0.5, color="#888888", linestyle=":", linewidth=1, label="chance (0.5)")


def _ticks(ax: Axes, n: int, *, integer: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(n, integer=integer))


def _log2_axis(ax: Axes, values: Iterable[float]) -> None:
    """A log2 x axis ticked at exactly the values present, written as plain numbers."""
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()


# -- curves over epochs ---------------------------------------------------------------------------------------
def _per_epoch(rows: pd.DataFrame, ylabel: str, title: str, colors: dict[str, str] | None) -> Figure | None:
    rows = rows.dropna(subset=["epoch", "value"])
    if rows.empty or rows["epoch"].nunique() < 2:
        return None
    fig, axes = _new()
    ax = axes[0, 0]
    cols = _colors(rows["label"], colors)
    for label in cols:
        g = rows[rows["label"] == label].sort_values("epoch")
        x = g["epoch"].to_numpy(float)
        ax.plot(x, g["value"], marker="o", markersize=3.5, color=cols[label], label=_text(label))
        if g["ci_low"].notna().any():
            ax.fill_between(x, g["ci_low"], g["ci_high"], color=cols[label], alpha=0.07, linewidth=0)
    ax.set(xlabel="epoch", ylabel=ylabel, title=_text(title))
    _ticks(ax, 10, integer=True)
    return fig


@as_svg
def auc_vs_epoch(
    results: pd.DataFrame, attack: str = "reference", *, colors: dict[str, str] | None = None
) -> Figure | None:
    """Memorization curve: the attack's AUC (95% CI band) after each evaluated epoch, one line per trial."""
    rows = results[(results["metric"] == "auc") & (results["attack"] == attack)]
    fig = _per_epoch(rows, "AUC", f"{attack} attack: AUC per epoch", colors)
    if fig is not None:
        ax = fig.axes[0]
        _chance(ax)
        _legend(ax)
    return fig


@as_svg
def val_ppl_vs_epoch(results: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure | None:
    """Validation perplexity after each evaluated epoch (epoch 0 = pre-trained), one line per trial."""
    rows = results[results["metric"] == "val_ppl"]
    fig = _per_epoch(rows, "validation perplexity", "validation perplexity per epoch", colors)
    if fig is not None:
        _legend(fig.axes[0])
    return fig


# -- per-text score distributions -----------------------------------------------------------------------------
def _final(scores: pd.DataFrame, attack: str) -> pd.DataFrame:
    """Each trial's rows of ``attack`` at its last scored epoch."""
    rows = scores[scores["attack"] == attack]
    last = rows.groupby("label")["epoch"].transform("max")
    return rows[rows["epoch"] == last]


def _split(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    s = rows["score"].to_numpy(float)
    m = rows["member"].to_numpy() == 1
    s_m, s_n = s[m], s[~m]
    return s_m[np.isfinite(s_m)], s_n[np.isfinite(s_n)]


def _corners(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC polyline without the points inside straight horizontal or vertical runs (the same drawing)."""
    if len(fpr) < 3:
        return fpr, tpr
    inside = ((fpr[:-2] == fpr[1:-1]) & (fpr[1:-1] == fpr[2:])) | ((tpr[:-2] == tpr[1:-1]) & (tpr[1:-1] == tpr[2:]))
    keep = np.r_[True, ~inside, True]
    return fpr[keep], tpr[keep]


@as_svg
def roc_curves(
    scores: pd.DataFrame, attack: str = "reference", *, colors: dict[str, str] | None = None
) -> Figure | None:
    """ROC curves of ``attack`` at each trial's final epoch, on linear and on log-log axes."""
    groups = _final(scores, attack).groupby("label", sort=False)
    return _roc_figure({label: _split(g) for label, g in groups}, colors)


@as_svg
def roc_by_attack(scores: pd.DataFrame, label: str) -> Figure | None:
    """Every attack's ROC curve for one trial (``label``) at its final epoch, linear and log-log: the attacks
    side by side where they differ most, at low false-positive rates."""
    rows = scores[scores["label"] == label]
    rows = rows[rows["epoch"] == rows["epoch"].max()]
    attacks = rows.groupby("attack", sort=True)
    curves = {a: _split(g) for a, g in attacks if a != "nll" and not str(a).startswith("extraction")}
    return _roc_figure(curves, palette(curves)) if len(curves) > 1 else None


def _roc_figure(split: dict[str, tuple[np.ndarray, np.ndarray]], colors: dict[str, str] | None) -> Figure | None:
    """ROC curves (member, non-member scores per curve name) on linear and log-log axes; None when empty."""
    from memlens.metrics import roc_auc, roc_points

    curves = {k: (*roc_points(m, n), roc_auc(m, n), len(n)) for k, (m, n) in split.items() if len(m) and len(n)}
    if not curves:
        return None
    fig, axes = _new(1, 2, width=8.6, height=3.6)
    cols = _colors(curves, colors)
    floor = 1.0 / max(v[3] for v in curves.values())
    for ax, log in zip(axes[0], (False, True), strict=True):
        for label, (fpr, tpr, auc, _) in curves.items():
            keep = (fpr > 0) & (tpr > 0) if log else slice(None)
            ax.plot(
                *_corners(fpr[keep], tpr[keep]),
                color=cols[label],
                linewidth=1.3,
                label=_text(f"{label} (AUC {auc:.3f})"),
            )
        lo = floor / 2 if log else 0.0
        ax.plot([lo, 1], [lo, 1], color="#888888", linestyle=":", linewidth=1, label="chance")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="log-log" if log else "linear")
        ax.set(xlim=(lo, 1), ylim=(lo, 1.05) if log else (0, 1.02), box_aspect=1)
        if log:
            ax.set(xscale="log", yscale="log")
    _legend(axes[0, 1])
    return fig


@as_svg
def score_histograms(scores: pd.DataFrame, attack: str = "loss", *, labels: list[str] | None = None) -> Figure | None:
    """Members vs non-members: histograms of ``attack`` scores, pre-trained (epoch 0) and fine-tuned (last
    epoch), one row per trial (``labels``, default all)."""
    rows = scores[scores["attack"] == attack]
    labels = [x for x in (labels or list(dict.fromkeys(rows["label"]))) if (rows["label"] == x).any()]
    panels = []
    for label in labels:
        g = rows[rows["label"] == label]
        last = g["epoch"].max()
        if last > 0 and (g["epoch"] == 0).any():
            panels.append((label, g[g["epoch"] == 0], g[g["epoch"] == last], int(last)))
    if not panels:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 2.3 * len(panels) + 0.3), layout="constrained")
    subfigures = np.atleast_1d(cast(Any, fig.subfigures(len(panels), 1)))
    for sub, (label, pre, post, last) in zip(subfigures, panels, strict=True):
        sub.suptitle(_text(label), x=0.01, ha="left", fontsize=10, fontweight="bold")
        row = sub.subplots(1, 2, sharex=True)
        for ax, part, when in ((row[0], pre, "pre-trained (epoch 0)"), (row[1], post, f"fine-tuned (epoch {last})")):
            m, n = _split(part)
            bins = np.histogram_bin_edges(np.r_[m, n], bins=min(30, max(5, (len(m) + len(n)) // 6)))
            ax.hist(n, bins=bins, color=NONMEMBER, alpha=0.55, label="non-members")
            ax.hist(m, bins=bins, color=MEMBER, alpha=0.55, label="members")
            ax.set(title=when, xlabel=_text(f"{attack} score (higher = more likely member)"), ylabel="texts")
            _ticks(ax, 5)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right upper")
    return fig


@as_svg
def perplexity_vs_memorization(
    scores: pd.DataFrame, attack: str = "reference", *, labels: list[str] | None = None, ncols: int = 2
) -> Figure | None:
    """Members only, final epoch: each text's mean NLL (= log perplexity) against its ``attack`` score, with the
    least-squares line and its R², one panel per trial (``labels``, default all).

    ``scores`` needs an ``id`` column to pair each text's NLL with its score.
    """
    nll, att = _final(scores, "nll"), _final(scores, attack)
    panels = []
    for label in labels or list(dict.fromkeys(att["label"])):
        a = att[(att["label"] == label) & (att["member"] == 1)]
        b = nll[(nll["label"] == label) & (nll["member"] == 1)]
        xy = b[["id", "epoch", "score"]].merge(a[["id", "epoch", "score"]], on=["id", "epoch"], suffixes=("_x", "_y"))
        x, y = xy["score_x"].to_numpy(float), xy["score_y"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
            panels.append((label, x[ok], y[ok], int(xy["epoch"].iloc[0])))
    if not panels:
        return None
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _new(nrows, ncols, width=4.2 * ncols, height=3.0 * nrows)
    for ax, (label, x, y, epoch) in zip(axes.flat, panels, strict=False):
        slope, intercept, r2 = linear_fit(x, y)
        ax.scatter(x, y, s=10, color=MEMBER, alpha=0.6, linewidths=0, label="members")
        ends = np.array([x.min(), x.max()])
        ax.plot(ends, slope * ends + intercept, color="#222222", linewidth=1.2, label=f"fit: R² = {r2:.2f}")
        ax.set_title(_text(f"{label} · epoch {epoch}"), loc="left", fontsize=9)
        ax.set(xlabel="NLL of the text, fine-tuned (log perplexity)", ylabel=_text(f"{attack} score"))
        _ticks(ax, 6)
        ax.legend(loc="best")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    return fig


# -- comparisons across trials ------------------------------------------------------------------------------
def _auc_rows(final: pd.DataFrame, column: str) -> pd.DataFrame:
    """Trials with an AUC and a value in ``column``, if that column takes at least two values."""
    if column not in final:
        return final.iloc[0:0]
    rows = final.dropna(subset=["auc", column])
    return rows if rows[column].nunique() >= 2 else rows.iloc[0:0]


def _errors(rows: pd.DataFrame) -> np.ndarray:
    """Asymmetric error-bar lengths from the CI columns (zero where no CI)."""
    auc = rows["auc"].to_numpy(float)
    lo = (auc - rows["ci_low"].to_numpy(float)).clip(0)
    hi = (rows["ci_high"].to_numpy(float) - auc).clip(0)
    return np.nan_to_num(np.vstack([lo, hi]))


@as_svg
def auc_vs_rank(
    final: pd.DataFrame, *, attack: str = "reference", colors: dict[str, str] | None = None
) -> Figure | None:
    """AUC (95% CI) at the final epoch against the LoRA rank; one line per ``group`` (the trials' other
    settings), through the mean AUC at each rank. Needs at least two ranks."""
    rows = _auc_rows(final, "rank")
    if rows.empty:
        return None
    rows = rows.assign(group=rows.get("group", "all trials")).sort_values("rank")
    fig, axes = _new(width=6.4, height=3.4)
    ax = axes[0, 0]
    cols = _colors(rows["group"], colors)
    for i, (group, g) in enumerate(rows.groupby("group", sort=False)):
        shift = 2 ** (0.03 * (i - (len(cols) - 1) / 2))  # keep overlapping error bars apart
        ax.errorbar(g["rank"] * shift, g["auc"], yerr=_errors(g), fmt="o", color=cols[group], capsize=3, markersize=4)
        mean = g.groupby("rank")["auc"].mean()
        ax.plot(mean.index * shift, mean.to_numpy(), color=cols[group], label=_text(group))
    _log2_axis(ax, rows["rank"])
    _chance(ax)
    ax.set(xlabel="LoRA rank", ylabel="AUC at the final epoch", title=_text(f"{attack} attack: AUC vs LoRA rank"))
    _legend(ax)
    return fig


@as_svg
def auc_by_targets(final: pd.DataFrame, *, attack: str = "reference") -> Figure | None:
    """One bar per trial from chance (0.5) to its final-epoch AUC, with the 95% CI, coloured by the adapted
    weight matrices (``targets``). Needs at least two target sets."""
    rows = _auc_rows(final, "targets")
    if rows.empty:
        return None
    rows = rows.sort_values(["targets", "auc"], ascending=[True, False])
    cols = palette(rows["targets"])
    fig, axes = _new(width=6.4, height=0.9 + 0.32 * len(rows))
    ax = axes[0, 0]
    ypos = np.arange(len(rows))[::-1]
    ax.barh(
        ypos,
        rows["auc"] - 0.5,
        left=0.5,
        xerr=_errors(rows),
        color=[cols[t] for t in rows["targets"]],
        capsize=3,
        error_kw={"linewidth": 1, "ecolor": "#333333"},
        height=0.7,
    )
    ax.set_yticks(ypos, [_text(x) for x in rows["label"]])
    for t, c in cols.items():
        ax.bar(0.5, 0, color=c, label=_text(t))  # legend entries only
    ax.axvline(0.5, color="#888888", linewidth=1)
    ax.grid(axis="y", visible=False)
    ax.set(
        xlabel="AUC at the final epoch (bars start at chance, 0.5)",
        title=_text(f"{attack} attack: AUC per target matrices"),
    )
    ax.legend(title="targets", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


@as_svg
def auc_by_block(final: pd.DataFrame, students: pd.DataFrame, *, attack: str = "reference") -> Figure | None:
    """Final-epoch AUC (95% CI) of trials that adapt one block each (``block``) against that block: the
    fine-tuned models and, where a trial was distilled, each objective's student (attacked on the same
    texts), through the mean at each block. Needs at least two blocks."""
    rows = _auc_rows(final, "block")
    if rows.empty:
        return None
    series = [("fine-tuned (teacher)", rows)]
    block = dict(zip(rows["trial"], rows["block"], strict=True))
    kids = students[students["trial"].isin(block)].dropna(subset=["auc"])
    series += [
        (f"student, {objective}", g.assign(block=g["trial"].map(block)))
        for objective, g in kids.groupby("objective", sort=True)
    ]
    fig, axes = _new(width=6.4, height=3.4)
    ax = axes[0, 0]
    cols = palette(name for name, _ in series)
    for i, (name, g) in enumerate(series):
        g = g.sort_values("block")
        shift = 0.08 * (i - (len(series) - 1) / 2)  # keep overlapping error bars apart
        x = g["block"].to_numpy(float) + shift
        ax.errorbar(x, g["auc"], yerr=_errors(g), fmt="o", color=cols[name], capsize=3, markersize=4)
        mean = g.groupby("block")["auc"].mean()
        ax.plot(mean.index.to_numpy(float) + shift, mean.to_numpy(), color=cols[name], label=_text(name))
    _ticks(ax, 10, integer=True)
    _chance(ax)
    ax.set(
        xlabel="adapted block (tuning.layers)",
        ylabel="AUC at the final epoch",
        title=_text(f"{attack} attack: AUC per adapted block"),
    )
    _legend(ax)
    return fig


@as_svg
def extraction_vs_repetitions(results: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure | None:
    """Metrics of texts repeated a known number of times in training (the ``repetitions`` field: canaries)
    against that number; one panel per metric, one line per trial, and the never-inserted controls
    (0 repetitions) as a dotted level."""
    import pandas as pd

    rows = results[results["kind"].isin(["extraction", "canary"])]
    rows = rows.assign(repetitions=pd.to_numeric(rows["repetitions"])).dropna(subset=["repetitions", "value"])
    if rows.empty or not (rows["repetitions"] > 0).any():
        return None
    metrics = list(dict.fromkeys(rows.loc[rows["repetitions"] > 0, "metric"]))
    fig, axes = _new(1, len(metrics), width=min(3.6 * len(metrics) + 1.6, 12), height=3.2)
    cols = _colors(rows["label"], colors)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label in cols:
            g = rows[(rows["metric"] == metric) & (rows["label"] == label)]
            mean = g[g["repetitions"] > 0].groupby("repetitions")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), marker="o", markersize=3.5, color=cols[label], label=_text(label))
            for level in g.loc[g["repetitions"] == 0, "value"]:
                ax.axhline(level, color=cols[label], linestyle=":", linewidth=1)
        if metric.endswith("_auc"):
            _chance(ax)
        if rows.loc[rows["metric"] == metric, "value"].between(0, 1).all():
            ax.set_ylim(-0.03, 1.03)  # a share or an AUC: show the whole range
        _log2_axis(ax, rows.loc[rows["repetitions"] > 0, "repetitions"])
        ax.set(xlabel="repetitions in training", title=_text(METRIC_NAMES.get(metric, metric)))
    if (rows["repetitions"] == 0).any():
        axes[0, -1].plot([], [], color="#888888", linestyle=":", label="controls (not inserted)")
    _legend(axes[0, -1])
    return fig


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats in both coordinates (lower is better in both)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    no_worse = (x[None, :] <= x[:, None]) & (y[None, :] <= y[:, None])
    better = (x[None, :] < x[:, None]) | (y[None, :] < y[:, None])
    return np.asarray(~(no_worse & better).any(axis=1))


@as_svg
def privacy_utility_frontier(
    final: pd.DataFrame, *, attack: str = "reference", colors: dict[str, str] | None = None
) -> Figure | None:
    """Each trial's final validation perplexity (utility, lower is better) against its attack AUC (privacy
    leak, lower is better), with the 95% CI of the AUC; Pareto-optimal trials are filled, joined and named, and
    DP-SGD trials carry the ε they spent."""
    rows = final.dropna(subset=["auc", "val_ppl"]) if {"auc", "val_ppl"} <= set(final) else final.iloc[0:0]
    if rows.empty:
        return None
    best = pareto_front(rows["auc"], rows["val_ppl"])
    cols = _colors(rows["label"], colors)
    fig, axes = _new(width=6.8, height=4.0)
    ax = axes[0, 0]
    ax.errorbar(rows["auc"], rows["val_ppl"], xerr=_errors(rows), fmt="none", ecolor="#bbbbbb", elinewidth=1)
    for (_, r), on_front in zip(rows.iterrows(), best, strict=True):
        style = {"s": 60, "edgecolors": "#222222"} if on_front else {"s": 30, "facecolors": "white"}
        ax.scatter(
            r["auc"], r["val_ppl"], color=cols[r["label"]], zorder=3, linewidths=1.2, **style, label=_text(r["label"])
        )
        eps = r.get("epsilon")
        dp = f" (ε={eps:.2g})" if eps is not None and np.isfinite(eps) else ""
        if on_front or dp:
            ax.annotate(
                _text(r["label"] + dp), (r["auc"], r["val_ppl"]), xytext=(6, 5), textcoords="offset points", fontsize=8
            )
    front = rows[best].sort_values("auc")
    ax.plot(front["auc"], front["val_ppl"], color="#222222", linewidth=1, drawstyle="steps-post", zorder=2)
    _chance(ax, vertical=True)
    ax.annotate("better ↙", xy=(0.02, 0.03), xycoords="axes fraction", color="#666666", fontsize=8)
    ax.set(
        xlabel=_text(f"{attack} attack AUC at the final epoch (privacy: lower is better)"),
        ylabel="validation perplexity (lower is better)",
        title="privacy–utility frontier",
    )
    _legend(ax)
    return fig


@as_svg
def auc_vs_gap(
    final: pd.DataFrame, *, attack: str = "reference", colors: dict[str, str] | None = None
) -> Figure | None:
    """Each trial's final-epoch attack AUC against its loss gap (both with 95% CIs): two measures of
    memorization that can rank trials differently (AUC is scale-free; the gap is in nats per token)."""
    need = {"auc", "gap", "gap_low", "gap_high"}
    rows = final.dropna(subset=["auc", "gap"]) if need <= set(final) else final.iloc[0:0]
    if len(rows) < 2:
        return None
    cols = _colors(rows["label"], colors)
    gap = rows["gap"].to_numpy(float)
    gap_err = np.nan_to_num(
        np.vstack([(gap - rows["gap_low"].to_numpy(float)).clip(0), (rows["gap_high"].to_numpy(float) - gap).clip(0)])
    )
    fig, axes = _new(width=6.8, height=4.0)
    ax = axes[0, 0]
    ax.errorbar(gap, rows["auc"], xerr=gap_err, yerr=_errors(rows), fmt="none", ecolor="#bbbbbb", elinewidth=1)
    for _, r in rows.iterrows():
        ax.scatter(r["gap"], r["auc"], color=cols[r["label"]], s=36, zorder=3, label=_text(r["label"]))
    ax.axhline(0.5, color="#999999", linestyle=":", linewidth=1)
    ax.axvline(0.0, color="#999999", linestyle=":", linewidth=1)
    ax.set(
        xlabel="loss gap at the final epoch (nats/token): members' loss drop minus non-members'",
        ylabel=_text(f"{attack} attack AUC"),
        title="two measures of memorization",
    )
    _legend(ax)
    return fig
