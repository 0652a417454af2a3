"""Chat and instruction records: read from any format, context before the completion, only the completion
scored and learned, token by token against the template."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import phee_texts, tiny_config

from memlens.config import DataConfig, parse_config
from memlens.data import load_splits, read_jsonl
from memlens.data.sources import Text
from memlens.errors import MemlensError
from memlens.models import load_model
from memlens.scoring import score_ids
from memlens.tokens import FALLBACK_REPLY, encode_records

TEMPLATE = (
    "{% for m in messages %}<eos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<eos>assistant\n{% endif %}"
)


@pytest.fixture()
def chat_tok(tiny):
    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def chat(i: int, reply: str) -> dict:
    return {
        "id": f"c{i}",
        "messages": [{"role": "user", "content": f"Report {i}?"}, {"role": "assistant", "content": reply}],
    }


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_and_instruction_records_are_read_from_jsonl(tmp_path):
    rows = [
        chat(0, "Rash."),
        {"id": "p1", "prompt": "Q: why?", "completion": " Because."},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello."}]},
    ]
    got = read_jsonl(write(tmp_path / "x.jsonl", rows))
    assert got[0] == Text("c0", "Rash.", (("user", "Report 0?"),)) and got[0].kind == "chat"
    assert got[1] == Text("p1", " Because.", "Q: why?") and got[1].kind == "instruction"
    assert got[2].prompt == (("user", "Hi"),) and got[2].text == "Hello." and got[2].kind == "chat"
    for bad, msg in [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "must end with the assistant's reply"),
        ({"messages": "Hi"}, "list of {role, content}"),
        ({"prompt": "Hi", "completion": 3}, "must both be strings"),
    ]:
        with pytest.raises(MemlensError, match=msg):
            read_jsonl(write(tmp_path / "bad.jsonl", [bad]))


def test_mixed_formats_across_the_sets_are_one_error(tmp_path):
    members = write(tmp_path / "m.jsonl", [chat(i, f"Reply {i}.") for i in range(4)])
    plain = write(tmp_path / "n.jsonl", [{"text": f"Text {i}."} for i in range(4)])
    cfg = DataConfig(source="files", members=members, nonmembers=plain, validation=members, allow_overlap=True)
    with pytest.raises(MemlensError, match=r"mix record formats .*members: chat, nonmembers: text"):
        load_splits(cfg)


def test_the_completion_is_exactly_the_templates_reply_and_is_scored_alone(tiny, chat_tok):
    records = [Text(f"c{i}", r, (("user", f"Report {i}?"),)) for i, r in enumerate(["Rash.", "Severe nausea today."])]
    enc = encode_records(chat_tok, records, 64)
    for r, ids, k in zip(records, enc.ids, enc.first, strict=True):
        context = f"<eos>user\n{r.prompt[0][1]}<eos>\n<eos>assistant\n"
        assert ids[:k] == chat_tok(context, add_special_tokens=False)["input_ids"]
        assert ids[k:] == chat_tok(f"{r.text}<eos>\n", add_special_tokens=False)["input_ids"]
    stats = score_ids(tiny.model, enc.ids, 0, starts=enc.starts)
    for i, (ids, k) in enumerate(zip(enc.ids, enc.first, strict=True)):  # a direct computation
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        direct = [float(logp[j - 1, ids[j]]) for j in range(k, len(ids))]
        np.testing.assert_allclose(stats.logprob[i, : len(direct)], direct, atol=1e-4)
        assert stats.lengths[i] == len(ids) - k


def test_without_a_chat_template_the_turns_are_written_as_lines(tiny):
    r = Text("c", "Rash.", (("user", "Report?"),))
    enc = encode_records(tiny.tokenizer, [r], 64)
    tok, k = tiny.tokenizer, enc.first[0]
    assert enc.ids[0][:k] == [tok.eos_token_id, *tok(f"user: Report?\n{FALLBACK_REPLY}")["input_ids"]]
    assert enc.ids[0][k:] == tok("Rash.", add_special_tokens=False)["input_ids"]


def test_a_run_on_chat_records_trains_and_scores_the_replies(tiny_dir, tmp_path):
    """End to end on chat data: the reply is what is measured; the user turn (shared by all) is context."""
    replies = phee_texts("train", 24) + phee_texts("test", 24) + phee_texts("dev", 12)
    rows = [chat(i, t) for i, t in enumerate(replies)]
    files = {
        k: write(tmp_path / f"{k}.jsonl", part) for k, part in (("m", rows[:24]), ("n", rows[24:48]), ("v", rows[48:]))
    }
    data = {"source": "files", "members": str(files["m"]), "nonmembers": str(files["n"]), "validation": str(files["v"])}
    data["max_tokens"] = 256  # nothing cut
    from memlens.experiments import run

    cfg = tiny_config(tiny_dir, tmp_path / "out", data=data | {"dir": None}, training={"epochs": 3})
    cfg["data"].pop("dir")
    results = run(parse_config(cfg))
    assert results["data"]["format"] == "chat"
    from memlens.report.summary import summary_lines

    assert "chat records: only the completions are trained on and scored; prompts are context" in summary_lines(results)
    tok = load_model(str(tiny_dir)).tokenizer  # no chat template: the fallback; the reply's tokens are scored
    replies_scored = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in replies)
    assert results["data"]["scored_tokens"] == replies_scored  # members, non-members and validation
    auc = next(r for r in results["records"] if r["metric"] == "auc" and r["attack"] == "loss" and r["epoch"] == 3)
    assert auc["value"] > 0.5


def test_a_hugging_face_dataset_dict_on_disk_is_a_source(tmp_path, monkeypatch):
    """source = "hf": a DatasetDict saved with save_to_disk (built here, offline), chat records included; a hub
    id that cannot be loaded is one error line."""
    import datasets  # a dev dependency (through trl)

    rows = [chat(i, f"Reply number {i}.") for i in range(12)]
    parts = {"train": rows[:5], "test": rows[5:9], "validation": rows[9:]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in parts.items()}).save_to_disk(tmp_path / "dd")
    splits = load_splits(DataConfig(source="hf", dataset=str(tmp_path / "dd"), n_members=0, n_nonmembers=0))
    assert [len(s) for s in (splits.members, splits.nonmembers, splits.validation)] == [5, 4, 3]
    assert splits.members[0] == Text("c0", "Reply number 0.", (("user", "Report 0?"),))

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'org/missing' on the Hub (offline)\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        MemlensError, match=r"cannot load Hugging Face dataset 'org/missing' split 'train': .*offline\)$"
    ):
        load_splits(DataConfig(source="hf", dataset="org/missing"))
    with pytest.raises(MemlensError, match=r"needs data\.dataset"):
        load_splits(DataConfig(source="hf"))


def test_a_template_that_refuses_the_turns_is_one_error(chat_tok):
    chat_tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}" + TEMPLATE
    )
    with pytest.raises(MemlensError, match=r"record 's1': the tokenizer's chat template refused it: no system role"):
        encode_records(chat_tok, [Text("s1", "Hi.", (("system", "Be terse."), ("user", "Hello")))], 64)
    ok = encode_records(chat_tok, [Text("u1", "Hi.", (("user", "Hello"),)), Text("p", "plain")], 64)
    assert ok.first[1] == 1 and ok.ids[1][0] == chat_tok.eos_token_id  # a plain text among chats: start token only
