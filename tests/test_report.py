"""The HTML/Markdown sweep report: built from a real store of tiny-model trials, checked for structure,
self-containment, escaping and privacy, and rendered in headless Chromium."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import phee_texts, tiny_config

from memlens.errors import MemlensError
from memlens.experiments.store import Store
from memlens.experiments.sweep import expand, run_sweep
from memlens.report import plots
from memlens.report.data import load_report_data
from memlens.report.page import render_markdown, render_report

EVIL = "<script>alert(1)</script>"
SECRET = "Patient Zq-4417 developed violet hiccups after 12 mg of zorblatamine twice daily."
N_FIGURES = 11
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def write_texts(path: Path, prefix: str, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return str(path)


@pytest.fixture(scope="module")
def sweep_dir(tiny_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A store with three finished LoRA trials (ranks 2/4/8, targets q+v on block 0 or 1, or o; 2–3 epochs
    evaluated every epoch, extraction and canaries; one labelled with a script tag) and one failed trial whose
    error holds a script tag. A planted sentence is among the members."""
    tmp = tmp_path_factory.mktemp("report")
    members = [SECRET, *phee_texts("train", 23)]
    data = {
        "source": "files",
        "members": write_texts(tmp / "members.jsonl", "m", members),
        "nonmembers": write_texts(tmp / "nonmembers.jsonl", "n", phee_texts("test", 24)),
        "validation": write_texts(tmp / "validation.jsonl", "v", phee_texts("dev", 16)),
        "n_members": 0,
        "n_nonmembers": 0,
        "n_validation": 0,
    }
    base = tiny_config(
        tiny_dir,
        tmp / "unused",
        data=data,
        tuning={"method": "lora"},
        training={"epochs": 2, "eval_every": 1},
        scoring={"cache": False},
        extraction={"enabled": True, "n_texts": 4},
        canaries={"enabled": True, "kind": "digits", "n": 1, "repetitions": [1, 8], "n_candidates": 100},
    )
    base.pop("name"), base.pop("output")
    spec = {
        "name": "report-test",
        "base": base,
        "variants": [
            {"targets": ["q", "v"], "rank": 2, "layers": [0]},
            {"targets": ["q", "v"], "rank": 8, "layers": [1]},
            {"label": EVIL, "targets": ["o"], "rank": 4, "epochs": 3},
            {"label": "broken", "targets": ["no_such_proj"]},
        ],
    }
    folder = tmp / "store"
    assert run_sweep(expand(spec), folder) == {"done": 3, "failed": 1}
    store = Store(folder)
    failed = int(store.trials().query("status == 'failed'")["id"].iloc[0])
    store.fail(failed, f"ValueError: bad target {EVIL}\nsecond line & more", 0.5)
    store.close()
    return folder, members + phee_texts("test", 24)


@pytest.fixture(scope="module")
def report(sweep_dir, tmp_path_factory) -> tuple[str, str, Path]:
    html_path, md_path = render_report(sweep_dir[0], tmp_path_factory.mktemp("out"))
    return html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"), html_path


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of every heading."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.headings: list[str] = []
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("h1", "h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)


def parse(page: str) -> Tags:
    parser = Tags()
    parser.feed(page)
    parser.close()
    return parser


def test_page_structure(report):
    page, _, _ = report
    tags = parse(page)
    names = [t for t, _ in tags.tags]
    assert names.count("svg") >= N_FIGURES
    assert names.count("table") >= 2 + 3  # trials, headline, one per finished trial
    for heading in ("Trials", "Membership inference at the final epoch", "Failed trials", "Figures"):
        assert heading in tags.headings
    for heading in ("Extraction: members / non-members", "Canaries", "Canaries and repetitions"):
        assert heading in tags.headings
    for figure in (
        "Privacy–utility frontier",
        "AUC and loss gap",
        "Memorization per epoch",
        "ROC curves at the final epoch",
        "Every attack at low false-positive rates",
    ):
        assert figure in tags.headings
    assert "Paired comparisons with the first trial" in tags.headings
    assert "Not drawn" not in page
    ids = [a["id"] for _, a in tags.tags if "id" in a]
    assert len(ids) == len(set(ids)), "element ids must be unique across the inline SVGs"


def test_page_is_self_contained(report):
    page, _, _ = report
    tags = parse(page)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & {t for t, _ in tags.tags}
    for tag, attrs in tags.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if value and not name.startswith("xmlns"):
                assert not re.search(r"https?://|//|javascript:", value), (tag, name, value)
    outside_xmlns = re.sub(r'\bxmlns(:\w+)?="[^"]*"', "", page)
    assert "http://" not in outside_xmlns and "https://" not in outside_xmlns
    assert "@import" not in page and not re.search(r"url\((?!#)", page)


def test_text_from_the_store_is_escaped(report):
    page, md, _ = report
    assert EVIL not in page and EVIL not in md
    assert html.escape(EVIL) in page
    assert html.escape(f"ValueError: bad target {EVIL}") in page
    assert "second line &amp; more" in page
    assert not [t for t, _ in parse(page).tags if t == "script"]


def test_no_text_of_the_data_in_the_report(report, sweep_dir):
    page, md, _ = report
    _, texts = sweep_dir
    for out in (page, md):
        assert "zorblatamine" not in out.lower() and "violet hiccups" not in out
        assert not [t for t in texts if len(t) > 30 and (t in out or html.escape(t) in out)]


def test_markdown_summary(report):
    _, md, _ = report
    assert md.startswith("# memlens report · report-test\n")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| trial | epoch | reference AUC"))
    table = lines[lines.index(header) : lines.index(header) + 5]
    assert len(table) == 5 and all(line.startswith("| ") for line in table)  # header, rule, 3 trials
    assert re.search(r"\| targets=q\+v rank=8 layers=1 \| 2 \| 0\.\d{3} \\\[0\.\d{3}, 0\.\d{3}\\\] \|", md)
    assert (
        "## Failed trials" in md
        and "ValueError: bad target &lt;script&gt;alert(1)&lt;/script&gt; … second line &amp; more" in md
    )
    assert "| targets=q+v rank=2 layers=0 | canary x8 |" in md and "Not drawn" not in md
    # 24 non-members cannot resolve a 1% FPR: no number that looks measured, a footnote that says why
    assert "| — \\* |" in md and "\\* TPR @ 1% FPR not estimable: needs ≥ 100 non-members" in md
    assert "\\* TPR @ 0.1% FPR not estimable: needs ≥ 1000 non-members" in md
    # every attack's table: TPR at low FPR first, the strongest marked, what each attack costs
    assert "| attack | TPR @ 0.1% FPR \\[95% CI\\] | TPR @ 1% FPR \\[95% CI\\] | AUC epoch" in md
    assert md.count(" ★ |") == 3 and "★ strongest attack here" in md
    assert "| scoring pass + the pre-trained pass (or one of reference\\_model) |" in md


def test_not_estimable_tpr_is_footnoted_in_the_page(report):
    page = report[0]
    assert '<td class="num">— *</td>' in page
    assert '<p class="meta">* TPR @ 1% FPR not estimable: needs ≥ 100 non-members</p>' in page


def test_show_text_and_files(sweep_dir, report):
    _, _, html_path = report
    data = load_report_data(sweep_dir[0])
    assert r"show\_text was requested" in render_markdown(data, [], show_text=True)
    assert "requested" not in render_markdown(data, [])
    assert sorted(p.name for p in html_path.parent.iterdir()) == ["report.html", "report.md"]  # no temp files


def test_headless_chromium_renders_the_page(report, tmp_path):
    _, _, html_path = report
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.fail("Chromium is needed for this test: install it with `sudo apt-get install -y chromium` (Debian)")
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = html_path.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<svg") >= N_FIGURES
    assert "Privacy–utility frontier" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,3000", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_bad_stores_are_refused(tmp_path, sweep_dir):
    with pytest.raises(MemlensError, match="no results store"):
        render_report(tmp_path / "empty")
    store = Store(tmp_path / "pending")
    store.register_sweep("s", {}, "h", [("c", "a trial", {"tuning": {"method": "lora"}})])
    store.close()
    with pytest.raises(MemlensError, match=r"no finished trial .*\(1 pending\)"):
        render_report(tmp_path / "pending")
    with pytest.raises(MemlensError, match="attack 'nope' is not in the results store"):
        render_report(sweep_dir[0], tmp_path / "out", attack="nope")


def test_every_plot_copes_with_missing_data():
    results = pd.DataFrame(
        columns=["label", "trial", "epoch", "kind", "attack", "metric", "value", "ci_low", "ci_high"]
    )
    scores = pd.DataFrame(columns=["id", "member", "epoch", "attack", "score", "label"])
    final = pd.DataFrame(columns=["label", "auc", "ci_low", "ci_high", "val_ppl", "rank", "targets", "group"])
    assert plots.auc_vs_epoch(results) is None
    assert plots.val_ppl_vs_epoch(results) is None
    assert plots.extraction_vs_repetitions(results.assign(repetitions=[])) is None
    assert plots.roc_curves(scores) is None
    assert plots.roc_by_attack(scores, "x") is None
    assert plots.score_histograms(scores) is None
    assert plots.perplexity_vs_memorization(scores) is None
    assert plots.auc_vs_rank(final) is None
    assert plots.auc_by_targets(final) is None
    assert plots.privacy_utility_frontier(final) is None
    assert plots.auc_vs_gap(final) is None
    one_rank = pd.DataFrame({"label": ["a", "b"], "auc": [0.6, 0.7], "ci_low": 0.5, "ci_high": 0.8, "rank": [8, 8]})
    assert plots.auc_vs_rank(one_rank) is None


def test_repetitions_plot_and_pareto_front():
    rows = pd.DataFrame(
        {"label": "a", "kind": "canary", "metric": "canary_extraction_rate", "repetitions": [0, 1, 10]}
        | {"value": [0.0, 0.1, 0.5]}
    )
    svg = plots.extraction_vs_repetitions(rows.assign(attack="canary x1"))
    assert svg.startswith("<svg") and "share of secrets extracted" in svg
    assert plots.extraction_vs_repetitions(rows.assign(kind="extraction", repetitions=None)) is None
    auc, ppl = np.array([0.6, 0.7, 0.65, 0.9]), np.array([20.0, 10.0, 30.0, 9.0])
    assert plots.pareto_front(auc, ppl).tolist() == [True, True, False, True]


def test_paired_comparison_table_agrees_with_memlens_compare(sweep_dir, report):
    from memlens.experiments.compare import compare

    data = load_report_data(sweep_dir[0])
    assert data.comparisons is not None and data.comparisons.baseline.id == 1
    second, checks = data.comparisons.rows[0]
    c = compare(str(second.id), "1", store=sweep_dir[0], n_boot=200)
    ref = next(r for r in c.rows if r.attack == "reference")
    assert checks["auc"].difference.diff == pytest.approx(ref.auc_bootstrap.diff)
    assert checks["gap"].difference.diff == pytest.approx(c.gap.diff)
    assert all(x.p_holm >= x.difference.p_value for _, ch in data.comparisons.rows for x in ch.values())
    _, md, _ = report
    assert "## Paired comparisons with the first trial" in md and "Δ loss gap, nats/token" in md


def test_a_single_run_folder_is_reportable_and_stays_overwritable(tiny_dir, tmp_path):
    from helpers import invoke, write_config

    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, out, attacks={"bootstrap": 50}))
    assert invoke("run", str(cfg)).exit_code == 0
    result = invoke("report", "--dir", str(out))
    assert result.exit_code == 0, result.output
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "Membership inference at the final epoch" in page and str(out) in page
    assert not (out / "results.db").exists()  # the run folder gains its report, nothing else
    again = invoke("run", str(cfg), "--overwrite")
    assert again.exit_code == 0, again.output


def test_dp_trials_carry_their_epsilon_on_the_frontier_and_in_the_headline_table():
    from memlens.report.tables import headline_table

    numbers = ["ci_low", "ci_high", "auc0", "blind", "blind_low", "blind_high", "gap", "gap_low", "gap_high"]
    numbers += ["nonmember_drop", "nonmember_low", "nonmember_high", "val_ppl0", "tpr"]
    base = dict.fromkeys(numbers, 0.5) | {"epoch": 2, "tpr_note": None, "beats_blind": True}
    final = pd.DataFrame(
        [
            base | {"label": "plain", "auc": 0.9, "val_ppl": 20.0, "epsilon": None, "epsilon_audit": 1.25},
            base | {"label": "private", "auc": 0.55, "val_ppl": 40.0, "epsilon": 8.0, "epsilon_audit": 0.0},
        ]
    )
    svg = plots.privacy_utility_frontier(final, attack="loss")
    assert "private (ε=8)" in svg and "plain (ε" not in svg
    table = headline_table(final, "loss")
    assert table.headers[-1] == "ε spent (DP) / audited ≥"
    assert [row[-1].text for row in table.rows] == ["— / 1.25", "8.00 / 0.00"]
    assert headline_table(final.drop(columns=["epsilon", "epsilon_audit"]), "loss").headers[-1] != table.headers[-1]


def test_a_sweep_over_mitigations_lands_on_one_frontier(tiny_dir, tmp_path):
    """A real sweep: plain, DP-SGD (ε = 8, audited with sentence canaries) and dedup trials of one recipe; the
    report's frontier labels the DP point with its ε and the headline table carries ε spent and audited."""
    base = tiny_config(tiny_dir, "unused", tuning={"method": "lora"}, training={"epochs": 2, "lr": 3e-3})
    base.pop("name"), base.pop("output")
    private = {"privacy.dp": True, "privacy.epsilon": 8.0, "privacy.delta": 1e-3}
    audited = {"privacy.audit": 40, "privacy.audit_canaries": "sentences"}
    variants = [
        {"label": "plain"} | audited,
        {"label": "private"} | private | audited,
        {"label": "dedup", "mitigation.method": "dedup"},
    ]
    assert run_sweep(expand({"name": "levers", "base": base, "variants": variants}), tmp_path) == {"done": 3}
    html_path, _ = render_report(tmp_path, tmp_path / "report")
    page = html_path.read_text(encoding="utf-8")
    assert "Privacy–utility frontier" in page and re.search(r"private \(ε=[0-9.]+\)", page)
    assert "ε spent (DP) / audited ≥" in page
    info = {r.label: r.info for r in Store(tmp_path, create=False).trials().itertuples()}
    assert info["private"]["privacy"]["dp"] and info["private"]["privacy"]["audit"]["canaries_kind"] == "sentences"
    assert info["dedup"]["mitigation"]["method"] == "dedup" and info["plain"]["privacy"]["dp"] is False


def test_a_store_made_before_newer_record_fields_reports_read_only(sweep_dir, tmp_path):
    """A store written by an older memlens (still being written by it: opened read-only, so not migrated)
    lacks the newer record columns; reports and findings read it with those fields empty (this crashed with
    KeyError 'objective' on the presets' stores)."""
    import sqlite3

    old = tmp_path / "old"
    shutil.copytree(sweep_dir[0], old)
    with sqlite3.connect(old / "results.db") as db:
        db.execute("ALTER TABLE results DROP COLUMN objective")
    data = load_report_data(old)
    assert data.students.empty and not data.final.empty
    with sqlite3.connect(old / "results.db") as db:  # reading did not migrate the store
        assert "objective" not in {r[1] for r in db.execute("PRAGMA table_info(results)")}
    assert load_report_data(sweep_dir[0]).final.equals(data.final)


def test_a_fine_tune_that_made_unseen_texts_worse_is_called_diverged():
    from memlens.report.summary import diverged, diverged_notes

    def drop(value, low, high):
        return {"value": value, "ci_low": low, "ci_high": high}

    assert diverged(drop(-1.42, -1.49, -1.34))  # perplexity 4.1-fold, the whole interval beyond 1.5-fold
    assert not diverged(drop(-0.5, -0.9, -0.1))  # the interval reaches below 1.5-fold (log 1.5 = 0.405)
    assert not diverged(drop(0.9, 0.85, 0.95)) and not diverged(None) and not diverged(drop(-2.0, None, None))

    def rows(trial, before_after):
        return [
            {"trial": trial, "kind": "effect", "metric": "nonmember_drop", "epoch": e, "value": v, "ci_low": lo,
             "ci_high": hi}
            for e, (v, lo, hi) in enumerate(before_after)
        ]  # fmt: skip

    start = (-0.1, -0.2, 0.0)
    results = rows(1, (start, (-1.42, -1.49, -1.34))) + rows(2, (start, (-2.05, -2.13, -1.97)))
    results += rows(3, ((0.5, 0.4, 0.6), (0.9, 0.85, 0.95)))
    prefix = {"tuning": {"method": "prefix"}, "training": {"seed": 0}}
    trials = pd.DataFrame(
        [
            {"id": 1, "label": "prefix seed=0", "config": prefix},
            {"id": 2, "label": "prefix seed=1", "config": prefix | {"training": {"seed": 1}}},
            {"id": 3, "label": "prompt seed=0", "config": {"tuning": {"method": "prompt"}, "training": {"seed": 0}}},
        ]
    )
    (note,) = diverged_notes(pd.DataFrame(results), trials)  # one configuration, two seeds
    assert note.startswith("trials prefix seed=0, prefix seed=1: fine-tuning (the worst of them) raised the "
                           "non-members' loss by 2.05 nats/token [1.97, 2.13]")  # fmt: skip
    assert "perplexity 7.8-fold" in note and "prompt" not in note


def test_findings_say_how_many_seeds_each_configuration_has():
    from types import SimpleNamespace

    from memlens.report.findings import _seed_words

    def words(*seeds):
        return _seed_words(SimpleNamespace(configs=[SimpleNamespace(seeds=n) for n in seeds]))

    assert words(3, 3) == ", and the training seeds of each configuration (3 seeds)"
    assert words(1, 3, 2) == ", and the training seeds of each configuration (1, 2 or 3 seeds)"
    assert "one training seed per configuration, so the intervals do not cover" in words(1, 1)
    assert words() == ""  # no finished trial yet


def test_a_fine_tune_that_learnt_then_over_fitted_is_called_over_fitting():
    from memlens.report.summary import diverged_notes

    def row(epoch, value, low, high):
        return {"trial": 1, "kind": "effect", "metric": "nonmember_drop", "epoch": epoch, "value": value,
                "ci_low": low, "ci_high": high}  # fmt: skip

    trials = pd.DataFrame([{"id": 1, "label": "big lora seed=0", "config": {"tuning": {"method": "lora"}}}])
    learnt = [row(1, 0.49, 0.45, 0.53), row(2, 0.29, 0.25, 0.33), row(4, -0.61, -0.66, -0.56)]
    (note,) = diverged_notes(pd.DataFrame(learnt), trials)
    assert note.startswith("trial big lora seed=0: fine-tuning first lowered the non-members' loss (by 0.49 "
                           "nats/token [0.45, 0.53] at epoch 1), then raised it by 0.61 nats/token "
                           "[0.56, 0.66]"), note  # fmt: skip
    assert (
        "by epoch 4 (their perplexity 1.8-fold; more than 1.5-fold, the whole 95% CI included, is taken as "
        "diverged): over-fitting; fewer epochs"
        in note
        and "usual causes" not in note
    )
    never = [row(1, -0.05, -0.1, 0.01), row(4, -0.61, -0.66, -0.56)]  # no epoch with a drop shown above 0
    (note,) = diverged_notes(pd.DataFrame(never), trials)
    assert "usual causes: a learning rate" in note and "over-fitting" not in note
