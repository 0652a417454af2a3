"""Measure memorization during your own ``transformers.Trainer`` (or TRL ``SFTTrainer``) training.

::

    from memlens.integrations import MemlensCallback

    callback = MemlensCallback(members=train_texts, nonmembers=heldout_texts, validation=other_texts,
                               out="runs/my-training")
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
    # then: memlens report --dir runs/my-training

At the start of training the model is scored once (the pre-trained statistics: epoch 0 of every attack and
the Reference attack's reference), then after every epoch (``every="epoch"``) or every ``every`` optimizer
steps, with memlens's batched engine and the same attacks, CIs, loss gap and pre-trained control as
``memlens run``. Rows go into a memlens results store (one trial per training, rewritten after each
evaluation, so a stopped training keeps what was measured; earlier trainings in the same store are kept).
Training itself is untouched: scoring runs in eval mode under ``torch.inference_mode``, draws from no torch
random generator, and restores the train mode (tested: the same loss trajectory with and without the
callback). On multi-process training only the main process scores.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from memlens.errors import MemlensError


class MemlensCallback(TrainerCallback):
    """Score ``members`` vs ``nonmembers`` (lists of strings) at the start of training and then ``every``
    ``"epoch"`` or every ``every`` steps; write the rows into the results store in ``out``.

    ``attacks``/``k``/``bootstrap``/``max_tokens``/``batch_size`` are as in a run config's ``[attacks]``,
    ``[data]`` and ``[scoring]``; ``validation`` (optional) gives the validation perplexity."""

    def __init__(
        self,
        members: list[str],
        nonmembers: list[str],
        *,
        validation: list[str] | None = None,
        out: str | Path = "runs/trainer",
        name: str = "trainer",
        every: str | int = "epoch",
        attacks: tuple[str, ...] = ("loss", "reference", "zlib", "min_k", "min_k_plus"),
        k: tuple[float, ...] = (0.2,),
        bootstrap: int = 1000,
        max_tokens: int = 128,
        batch_size: int = 16,
    ) -> None:
        from memlens.config import parse_config

        if not members or not nonmembers:
            raise MemlensError("MemlensCallback needs members and non-members (non-empty lists of texts)")
        if every != "epoch" and not (isinstance(every, int) and every > 0):
            raise MemlensError(f"every must be 'epoch' or a positive step count, got {every!r}")
        self.cfg = parse_config(
            {
                "name": name,
                "data": {"max_tokens": max_tokens},
                "attacks": {"names": list(attacks), "k": list(k), "bootstrap": bootstrap, "blind": False},
                "scoring": {"batch_size": batch_size, "cache": False},
                "output": {"dir": str(out)},
            },
            "MemlensCallback",
        )
        self.texts, self.n_members = [*members, *nonmembers], len(members)
        self.validation = list(validation or [])
        self.every = every
        self.scores: dict[int, dict] = {}
        self.records: list = []
        self._inputs = None
        self._started = time.perf_counter()
        self._trial: int | None = None  # this training's trial in the store (one per callback instance)

    # -- Trainer events ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        if not state.is_world_process_zero:
            return
        tok = processing_class or kw.get("tokenizer")
        if tok is None or model is None:
            raise MemlensError("MemlensCallback needs the Trainer's model and tokenizer (processing_class)")
        from types import SimpleNamespace

        from memlens.data.sources import as_records
        from memlens.experiments.runner import encode_inputs, frequency_corpus, stage_records, stage_scores
        from memlens.tokens import ensure_pad_token, scored_texts

        ensure_pad_token(tok)
        from memlens.attacks import run_only

        if run_only(self.cfg.attacks.names):
            raise MemlensError(f"MemlensCallback cannot run {run_only(self.cfg.attacks.names)}: use memlens run")
        if self.cfg.attacks.frequency_corpus == "pool":
            raise MemlensError(
                "MemlensCallback has no data pool: set attacks.frequency_corpus to sotu, validation or a file"
            )
        corpus = frequency_corpus(self.cfg, SimpleNamespace(validation=as_records(self.validation)))
        self._tok, self._inputs = tok, encode_inputs(self.cfg, tok, self.texts, self.validation, corpus=corpus)
        self._scored = scored_texts(tok, self.texts, self._inputs.target)
        self._base = self._score(model, "pre-trained")
        self.scores[0] = stage_scores(self.cfg, self._base, None, self._scored, self._inputs)
        self.records += stage_records(self.cfg, self.scores[0], self._ppl(self._base), 0, self.n_members)
        self._save(state)

    def on_epoch_end(self, args, state, control, model=None, **kw):
        if self.every == "epoch":
            self._evaluate(state, model, round(state.epoch or 0))

    def on_step_end(self, args, state, control, model=None, **kw):
        if isinstance(self.every, int) and state.global_step % self.every == 0:
            self._evaluate(state, model, state.global_step)

    # -- helpers -----------------------------------------------------------------------------------------
    def _evaluate(self, state, model, point: int) -> None:
        """Score ``model`` now and record it at ``point`` (the epoch, or the step when ``every`` is a count)."""
        if not state.is_world_process_zero or self._inputs is None or point in self.scores:
            return
        from memlens.experiments.runner import effect_records, stage_records, stage_scores

        stats = self._score(model, f"epoch {point}" if self.every == "epoch" else f"step {point}")
        self.scores[point] = stage_scores(self.cfg, stats, self._base["target"], self._scored, self._inputs)
        now, before = self.scores[point], self.scores[0]
        self.records += stage_records(self.cfg, now, self._ppl(stats), point, self.n_members, pretrained=before)
        self.records += effect_records(self.cfg, before["nll"], now["nll"], point, self.n_members)
        self._save(state)

    def _score(self, model, label: str) -> dict:
        from memlens.experiments.runner import score_stage

        assert self._inputs is not None  # set at on_train_begin
        return score_stage(model, self._inputs, self.cfg, "trainer", label)

    def _ppl(self, stats: dict) -> float:
        return stats["validation"].perplexity() if self.validation else float("nan")

    def _save(self, state) -> None:
        """Rewrite the one trial of the store with every row so far, and its per-text scores."""
        import os
        import tempfile

        from memlens.experiments.outputs import write_outputs
        from memlens.experiments.store import Store

        store = Store(self.cfg.output.dir)
        try:
            config = self.cfg.model_dump(mode="json")
            config["tuning"] = {"method": "trainer"}  # trained by the user's Trainer, not by memlens
            if self._trial is None:  # a new trial for every training: an earlier one in the same store is kept
                from datetime import UTC, datetime

                stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                label = f"{self.cfg.name} {stamp[:19]}"
                store.register_sweep(self.cfg.name, {"trainer": True}, "trainer", [(f"trainer {stamp}", label, config)])
                self._trial = int(store.trials()["id"].max())
            trial = self._trial
            last = max(self.scores)
            info = {
                "training": {"epochs": [{"epoch": e} for e in sorted(self.scores) if e]},
                "tuning": {"method": "trainer"},
                "data": {"n_members": self.n_members, "n_nonmembers": len(self.texts) - self.n_members},
                "trainer": {"global_step": state.global_step, "epoch": state.epoch, "last": last},
            }
            rows = [r.to_dict() for r in self.records]
            results = {"records": rows, "name": self.cfg.name} | info
            ids = [f"m{i}" for i in range(self.n_members)] + [f"n{i}" for i in range(len(self.texts) - self.n_members)]
            folder = store.trial_dir(trial)
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".trainer-") as tmp:
                write_outputs(Path(tmp), self.cfg.to_toml(), results, ids, self.n_members, self.scores)
                for f in Path(tmp).iterdir():  # each file replaced whole: a reader never sees a part of one
                    os.replace(f, folder / f.name)
            store.finish(trial, rows, info, time.perf_counter() - self._started)
        finally:
            store.close()
