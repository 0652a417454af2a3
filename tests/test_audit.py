import json
from itertools import combinations

import pytest
from helpers import PHEE, phee_texts

from memlens.data import read_phee
from memlens.data.audit import find_duplicates, normalize
from memlens.data.sources import Text

BASE = phee_texts("train", 300)  # distinct sentences; the clean-split test checks no pair among them is ≥ 0.5
KEYS = [
    "members/members",
    "members/nonmembers",
    "members/validation",
    "nonmembers/nonmembers",
    "nonmembers/validation",
    "validation/validation",
]


def texts(prefix: str, start: int, stop: int) -> list[Text]:
    """``BASE[start:stop]`` with ids ``{prefix}{index in BASE}``."""
    return [Text(f"{prefix}{i}", BASE[i]) for i in range(start, stop)]


def char_jaccard(a: str, b: str, n: int = 5) -> float:
    """Independent reference: Jaccard of the n-character substrings of the normalised texts."""
    sa, sb = ({t[i : i + n] for i in range(len(t) - n + 1)} for t in (normalize(a), normalize(b)))
    return len(sa & sb) / len(sa | sb)


def brute_force(sets: dict[str, list[Text]], threshold: float, n: int = 5) -> set[tuple]:
    """Every pair by exhaustive comparison, as ``(set_a, id_a, set_b, id_b, kind)``."""
    items = [(name, t.id, normalize(t.text)) for name, ts in sets.items() for t in ts]
    grams = [{t[i : i + n] for i in range(len(t) - n + 1)} for _, _, t in items]
    found = set()
    for (i, (sa, a, ta)), (j, (sb, b, tb)) in combinations(enumerate(items), 2):
        if ta == tb:
            found.add((sa, a, sb, b, "exact"))
        elif len(grams[i] & grams[j]) >= threshold * len(grams[i] | grams[j]):
            found.add((sa, a, sb, b, "near"))
    return found


def reported(report) -> set[tuple]:
    return {p[:5] for p in report.pairs}


def swap(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def planted() -> dict[str, list[Text]]:
    """Three sets of distinct PHEE sentences plus one planted duplicate of each kind, within and across sets."""
    variant = "  " + BASE[10].upper().replace(" ", " \t  ") + " !!"  # only case, whitespace and punctuation differ
    return {
        "members": [*texts("m", 0, 100), Text("m-copy", BASE[5])],
        "nonmembers": [
            *texts("n", 100, 200),
            Text("n-variant", variant),
            Text("n-near", swap(BASE[142], "chronic", "severe")),
        ],
        "validation": [*texts("v", 200, 250), Text("v-near", swap(BASE[20], "woman", "man"))],
    }


PLANTED_EXACT = {("members", "m5", "members", "m-copy"), ("members", "m10", "nonmembers", "n-variant")}
PLANTED_NEAR = {("members", "m20", "validation", "v-near"), ("nonmembers", "n142", "nonmembers", "n-near")}


def test_normalize():
    assert normalize("The rash, again.") == normalize("the rash again") == "the rash again"
    assert normalize("  TNF-alpha\t(10 mg)!\n") == "tnf alpha 10 mg"
    assert normalize("") == normalize(" ... ") == ""


def test_planted_duplicates_are_found_with_their_ids():
    sets = planted()
    assert normalize(sets["nonmembers"][-2].text) == normalize(BASE[10]) and sets["nonmembers"][-2].text != BASE[10]
    for original, near in [(BASE[20], sets["validation"][-1]), (BASE[142], sets["nonmembers"][-1])]:
        assert 0.8 <= char_jaccard(original, near.text) < 1
    report = find_duplicates(sets)
    assert {p[:4] for p in report.exact} == PLANTED_EXACT
    assert {p[:4] for p in report.near} == PLANTED_NEAR
    assert all(p.similarity == 1.0 for p in report.exact)
    for p in report.near:
        a, b = ({t.id: t.text for t in sets[s]}[i] for s, i in [(p.set_a, p.id_a), (p.set_b, p.id_b)])
        assert p.similarity == pytest.approx(char_jaccard(a, b)) and 0.8 <= p.similarity < 1
    assert report.counts() == {
        "members/members": {"exact": 1, "near": 0},
        "members/nonmembers": {"exact": 1, "near": 0},
        "members/validation": {"exact": 0, "near": 1},
        "nonmembers/nonmembers": {"exact": 0, "near": 1},
        "nonmembers/validation": {"exact": 0, "near": 0},
        "validation/validation": {"exact": 0, "near": 0},
    }


@pytest.mark.parametrize("threshold", [0.8, 0.5])
def test_matches_exhaustive_comparison(threshold):
    sets = planted()
    assert reported(find_duplicates(sets, near_threshold=threshold)) == brute_force(sets, threshold)


def test_clean_split_has_no_duplicates():
    sets = {"members": texts("m", 0, 150), "nonmembers": texts("n", 150, 250), "validation": texts("v", 250, 300)}
    assert brute_force(sets, 0.5) == set()  # the sentences really are distinct
    report = find_duplicates(sets)
    assert report.pairs == []
    assert report.counts() == {key: {"exact": 0, "near": 0} for key in KEYS}


def test_finds_the_duplicates_phee_train_itself_has():
    report = find_duplicates({"members": read_phee(PHEE, "train")})
    exact = {(p.id_a, p.id_b) for p in report.exact}
    assert exact == {("7718983_3", "7718983_1"), ("19904536_1", "19904536_15")}  # verbatim; extra spaces
    assert all(p.similarity >= 0.8 for p in report.near)
    assert not exact & {(p.id_a, p.id_b) for p in report.near}


def test_threshold_is_respected():
    changed = BASE[30]
    for old, new in [
        ("clinical", "medical"),
        ("clinician", "physician"),
        ("lethal", "deadly"),
        ("avoidance", "prevention"),
    ]:
        changed = swap(changed, old, new)
    sim = char_jaccard(BASE[30], changed)
    assert 0.6 < sim < 0.8
    sets = {"members": [Text("a", BASE[30])], "nonmembers": [Text("b", changed)]}
    assert find_duplicates(sets).pairs == []
    (pair,) = find_duplicates(sets, near_threshold=0.6).pairs
    assert pair == ("members", "a", "nonmembers", "b", "near", pytest.approx(sim))
    assert find_duplicates(sets, near_threshold=sim).pairs != []  # the threshold itself is included


def test_to_dict_holds_ids_and_counts_but_no_text():
    sets = planted()
    report = find_duplicates(sets)
    out = report.to_dict(show_examples=1)
    dumped = json.dumps(out)
    for ts in sets.values():
        for t in ts:
            assert t.text[:20] not in dumped and normalize(t.text)[:20] not in dumped
    assert out["counts"] == report.counts() and list(out["examples"]) == KEYS
    assert out["sets"] == {"members": 101, "nonmembers": 102, "validation": 51}
    assert out["examples"]["members/nonmembers"]["exact"] == [{"ids": ["m10", "n-variant"], "similarity": 1.0}]
    assert all(len(shown) <= 1 for kinds in out["examples"].values() for shown in kinds.values())
    assert report.to_dict(show_examples=0)["examples"]["members/members"] == {"exact": [], "near": []}


def test_short_and_empty_texts():
    sets = {"a": [Text("1", "Hi!"), Text("2", "hi"), Text("3", ""), Text("4", "?"), Text("5", "ho")]}
    assert {(p.id_a, p.id_b, p.kind) for p in find_duplicates(sets).pairs} == {("1", "2", "exact"), ("3", "4", "exact")}


def test_bad_parameters():
    for kw in [{"near_threshold": 0}, {"near_threshold": 1.5}, {"ngram": 0}, {"num_perm": 0}]:
        with pytest.raises(ValueError):
            find_duplicates({"a": []}, **kw)
