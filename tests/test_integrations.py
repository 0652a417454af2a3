"""MemlensCallback inside a real transformers.Trainer: it measures, writes a store the report reads, and
changes nothing about training."""

from __future__ import annotations

import pytest
from helpers import assert_one_line_error, invoke, phee_texts

from memlens.errors import MemlensError
from memlens.integrations import MemlensCallback
from memlens.models import load_model

MEMBERS, NONMEMBERS, VALIDATION = phee_texts("train", 24), phee_texts("test", 24), phee_texts("dev", 8)
# the training arguments both trainers share: 2 epochs of 3 steps, a loss logged at every step, CPU, no files
TRAINING = {
    "num_train_epochs": 2,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "seed": 0,
    "use_cpu": True,
}


def train(tiny_dir, tmp_path, callbacks):
    """Fine-tune the tiny model on the members with a plain Trainer (2 epochs); the loss of every step."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    lm = load_model(str(tiny_dir), device="cpu")
    tok = lm.tokenizer
    rows = [{"input_ids": tok(t, truncation=True, max_length=48)["input_ids"]} for t in MEMBERS]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), dataloader_num_workers=0, **TRAINING)
    torch.manual_seed(0)
    trainer = Trainer(
        model=lm.model,
        args=args,
        train_dataset=rows,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        processing_class=tok,
        callbacks=callbacks,
    )
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_the_callback_measures_and_leaves_training_alone(tiny_dir, tmp_path):
    out = tmp_path / "store"
    callback = MemlensCallback(MEMBERS, NONMEMBERS, validation=VALIDATION, out=out, bootstrap=100)
    with_callback = train(tiny_dir, tmp_path, [callback])
    without = train(tiny_dir, tmp_path, [])
    assert with_callback == pytest.approx(without, abs=1e-6) and len(without) == 6
    aucs = {(r.epoch, r.attack): r for r in callback.records if r.kind == "mia" and r.metric == "auc"}
    assert {e for e, _ in aucs} == {0, 1, 2} and (2, "reference") in aucs
    assert aucs[(2, "loss")].value > aucs[(0, "loss")].value
    assert [r.metric for r in callback.records if r.kind == "effect" and r.epoch == 2] == [
        "loss_gap", "member_drop", "nonmember_drop"
    ]  # fmt: skip
    result = invoke("report", "--dir", str(out))
    assert result.exit_code == 0, result.output
    assert "Membership inference at the final epoch" in (out / "report" / "report.html").read_text(encoding="utf-8")
    # a second training into the same store adds a trial; the first one's rows are kept
    from memlens.experiments.store import Store

    before = Store(out, create=False).results()
    again = MemlensCallback(MEMBERS, NONMEMBERS, out=out, bootstrap=0, attacks=("loss",))
    train(tiny_dir, tmp_path, [again])
    store = Store(out, create=False)
    assert len(store.trials()) == 2
    first = store.results().query("trial == 1")
    assert len(first) == len(before) and first["value"].tolist() == pytest.approx(before["value"].tolist(), nan_ok=True)


def test_bad_callback_arguments_are_clear_errors(tmp_path):
    with pytest.raises(MemlensError, match="needs members and non-members"):
        MemlensCallback([], NONMEMBERS)
    with pytest.raises(MemlensError, match="every must be 'epoch' or a positive step count"):
        MemlensCallback(MEMBERS, NONMEMBERS, every=0)
    with pytest.raises(MemlensError, match="unknown attack"):
        MemlensCallback(MEMBERS, NONMEMBERS, attacks=("psychic",))
    assert_one_line_error(invoke("report", "--dir", str(tmp_path / "nothing")), "no results store")


def test_every_n_steps(tiny_dir, tmp_path):
    callback = MemlensCallback(MEMBERS, NONMEMBERS, out=tmp_path / "store", every=3, bootstrap=0, attacks=("loss",))
    train(tiny_dir, tmp_path, [callback])
    assert sorted({r.epoch for r in callback.records if r.metric == "auc"}) == [0, 3, 6]  # steps: 3 a epoch


def test_the_callback_in_trls_sft_trainer(tiny_dir, tmp_path):
    """TRL's SFTTrainer (plain-text dataset): the callback measures every epoch and changes no loss."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def sft(callbacks):
        lm = load_model(str(tiny_dir), device="cpu")
        args = SFTConfig(
            output_dir=str(tmp_path / "sft"), max_length=48, packing=False, dataset_text_field="text", **TRAINING
        )
        data = Dataset.from_dict({"text": MEMBERS})
        trainer = SFTTrainer(
            model=lm.model, args=args, train_dataset=data, processing_class=lm.tokenizer, callbacks=callbacks
        )
        trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    callback = MemlensCallback(MEMBERS, NONMEMBERS, out=tmp_path / "store", bootstrap=50, attacks=("loss", "reference"))
    assert sft([callback]) == pytest.approx(sft([]), abs=1e-6)
    assert sorted({(r.epoch, r.attack) for r in callback.records if r.metric == "auc"}) == [
        (0, "loss"), (1, "loss"), (1, "reference"), (2, "loss"), (2, "reference")
    ]  # fmt: skip
