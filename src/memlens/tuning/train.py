"""The training loop: causal-LM loss on the member texts, length-grouped batches, AdamW with a schedule.

The loss is the mean NLL over all real tokens of an optimiser step (gradient accumulation weighs each
micro-batch by its token count, so accumulating equals one big batch). Padding never counts.
On CPU a fixed seed gives the same weights, run after run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memlens import progress
from memlens.config import PrivacyConfig, TrainingConfig
from memlens.tokens import grouped_batches, pad_batch, padding_fraction


class MasterWeights:
    """float32 master copies of the trainable weights a model holds in bfloat16 / float16 (mixed precision).

    The forward and backward passes run in the model's precision; each micro-batch's gradient is added to the
    master's float32 gradient as soon as autograd has it (a post-accumulate hook, which frees the half-precision
    one), the optimizer updates the masters, and each step rounds them into the model. Updating bf16 weights
    directly loses every change below half a unit in the last place (~0.2–0.4% of the weight): a fine-tune at
    a small learning rate would silently stall. Cost: 4 bytes per trainable weight, plus AdamW's state in
    float32. Weights already in float32 (peft keeps adapters in float32) are their own masters. ``hooks =
    False`` (DP-SGD, which writes each step's gradient itself): :meth:`take_grads` copies them instead."""

    def __init__(self, params: list, *, hooks: bool = True) -> None:
        import torch

        half = (torch.bfloat16, torch.float16)
        self.pairs = [(p, torch.nn.Parameter(p.detach().float()) if p.dtype in half else p) for p in params]
        self.weights = [m for _, m in self.pairs]
        copies = [(p, m) for p, m in self.pairs if m is not p]
        self.dtype = "float32" if copies else None  # what results.json records (None: no copies needed)
        self.handles = [p.register_post_accumulate_grad_hook(self._adder(m)) for p, m in copies] if hooks else []

    @staticmethod
    def _adder(master):
        def add(p) -> None:
            g = p.grad.float()
            master.grad = g if master.grad is None else master.grad.add_(g)
            p.grad = None

        return add

    def take_grads(self) -> None:
        """Each master's gradient := its model weight's gradient, in float32 (a gradient set outside backward)."""
        for p, m in self.pairs:
            if m is not p and p.grad is not None:
                m.grad, p.grad = p.grad.float(), None

    def round_into_model(self) -> None:
        """The model's half-precision weights := the updated masters, rounded."""
        import torch

        with torch.no_grad():
            for p, m in self.pairs:
                if m is not p:
                    p.copy_(m)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@dataclass
class TrainState:
    """Where a fine-tune stood after ``epoch``: all an interrupted one needs to go on exactly as if it had never
    stopped. ``tensors``: the trainable weights (float32 masters, in :attr:`MasterWeights.weights` order), AdamW's
    moments and step counts, the torch RNG state(s); ``meta``: the rest, JSON-serialisable (AdamW's parameter
    groups, the schedule, the batch sampler's RNG, the summary so far)."""

    epoch: int
    tensors: dict[str, Any]
    meta: dict


def train(
    model,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    cfg: TrainingConfig,
    *,
    lr: float,
    on_epoch_end: Callable[[int], None] | None = None,
    starts: Sequence[int] | None = None,
    privacy: PrivacyConfig | None = None,
    loss_fn: Callable | None = None,
    on_state: Callable[[TrainState], None] | None = None,
    resume_from: TrainState | None = None,
) -> dict:
    """Fine-tune ``model`` in place on token sequences ``ids``; return a summary (losses, tokens/s, time).

    ``on_epoch_end(epoch)`` is called after each epoch (1-based), e.g. to evaluate memorization. ``starts[i]``
    (default 1): the first token of sequence ``i`` in the loss (a prompt before it is context only, as SFT
    trainers do for completions). ``privacy`` with ``dp = true`` trains with DP-SGD
    (:mod:`memlens.tuning.private`); the summary then has ``privacy`` (ε spent, σ, C, sampling).
    ``loss_fn(model, ids, mask, labels)`` replaces the LM loss by another mean per-token loss over the same
    labelled positions (e.g. a distillation objective, :mod:`memlens.tuning.distill`); not with DP-SGD.
    Trainable weights held in bfloat16 (a model loaded in half precision, as on CUDA by default) or float16
    are updated through float32 master copies (:class:`MasterWeights`), so small updates are not rounded away
    (float16 has no loss scaling here: its gradients can underflow; prefer bfloat16).
    ``cfg.packing``: each step's texts in packed rows (:func:`packed_rows`) where the model is verified to
    isolate them, with the LM loss and without DP-SGD; otherwise padded rows. ``cfg.gradient_checkpointing``:
    recompute each block's activations in the backward pass (turned off again when training ends).
    ``on_state(state)`` is given a :class:`TrainState` after each epoch (after ``on_epoch_end``); training
    started with ``resume_from=state`` (same model, data and config; :func:`check_state`) goes on from the
    epoch after it and ends with the same weights as one that never stopped — bit for bit where training is
    deterministic (on CPU; on CUDA only with deterministic kernels). ``resume_from``'s tensors are consumed
    (cleared). Not with DP-SGD.
    """
    import torch
    from transformers import get_scheduler

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    first = np.ones(len(ids), dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
    learned = (lengths - first).clip(min=0)  # tokens in the loss, per sequence
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    device = params[0].device
    if privacy is not None and privacy.dp and (on_state is not None or resume_from is not None):
        raise ValueError("DP-SGD's accountant and noise cannot be resumed: train it in one go")
    private = None
    if privacy is not None and privacy.dp:
        if loss_fn is not None:
            raise ValueError("DP-SGD trains on the LM loss only; loss_fn cannot be combined with it")
        from memlens.tuning.private import PrivateSteps

        batch = cfg.batch_size * cfg.grad_accum
        private = PrivateSteps(model, privacy, n=len(ids), batch=batch, epochs=cfg.epochs, seed=cfg.seed)
        steps_per_epoch = private.steps_per_epoch
    else:
        steps_per_epoch = math.ceil(math.ceil(len(ids) / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    packed = bool(cfg.packing) and private is None and loss_fn is None and can_pack(model, ids, pad_id, starts)
    epochs: list[dict] = []
    n_tokens, t_train, pad_frac, spent = 0, 0.0, [], ""
    checkpointing = bool(cfg.gradient_checkpointing)
    if checkpointing:
        if private is not None:
            raise ValueError("gradient checkpointing cannot be combined with DP-SGD")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    masters = MasterWeights(params, hooks=private is None)  # hooks on the model from here: removed in `finally`
    opt = torch.optim.AdamW(masters.weights, lr=lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(
        cfg.schedule,
        opt,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=max(total_steps, 1),
    )
    done = 0  # epochs finished before this call (a resumed fine-tune)
    try:
        if resume_from is not None:
            done = resume_from.epoch
            loop = _restore(resume_from, model, masters, opt, sched, rng)
            resume_from.tensors.clear()  # consumed: the copies are in the model and optimizer now
            epochs, n_tokens, t_train, pad_frac = (
                loop["epochs"],
                loop["train_tokens"],
                loop["train_seconds"],
                loop["pad"],
            )
        what = f"fine-tuning from epoch {done}" if done else "fine-tuning"
        with progress.bar(what, total_steps - done * steps_per_epoch, "steps") as bar:
            for epoch in range(done + 1, cfg.epochs + 1):
                model.train()
                if private is not None:
                    windows = private.epoch(lengths, cfg.batch_size, rng)
                else:
                    batches = grouped_batches(lengths, cfg.batch_size, rng)
                    windows = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                if not packed:
                    pad_frac.append(padding_fraction(lengths, [b for w in windows for b in w]))
                real, slots = 0, 0
                t0 = time.perf_counter()
                loss_sum, tok_sum = 0.0, 0
                for window in windows:
                    window_tokens = int(sum(learned[b].sum() for b in window))
                    if window_tokens == 0 and private is None:
                        continue
                    for rows in window:
                        if packed:
                            batch_ids, positions, labels = packed_rows([ids[i] for i in rows], first[rows], pad_id)
                            batch_ids, positions, labels = batch_ids.to(device), positions.to(device), labels.to(device)
                            real, slots = real + int(lengths[rows].sum()), slots + batch_ids.numel()
                            n_lab = int((labels[:, 1:] != -100).sum())
                            if n_lab:
                                loss = model(
                                    input_ids=batch_ids, position_ids=positions, labels=labels, use_cache=False
                                ).loss
                                (loss * (n_lab / window_tokens)).backward()
                                loss_sum, tok_sum = loss_sum + float(loss.detach()) * n_lab, tok_sum + n_lab
                            continue
                        batch_ids, mask = pad_batch([ids[i] for i in rows], pad_id)
                        batch_ids, mask = batch_ids.to(device), mask.to(device)
                        cols = torch.arange(batch_ids.shape[1], device=device)
                        context = cols[None, :] < torch.as_tensor(first[rows], device=device)[:, None]
                        labels = batch_ids.masked_fill((mask == 0) | context, -100)
                        if private is not None:
                            nll, n_lab = private.backward(batch_ids, mask, labels)
                            loss_sum, tok_sum = loss_sum + nll, tok_sum + n_lab
                            continue
                        n_lab = int((labels[:, 1:] != -100).sum())
                        if n_lab == 0:
                            continue
                        if loss_fn is None:
                            loss = model(input_ids=batch_ids, attention_mask=mask, labels=labels).loss
                        else:
                            loss = loss_fn(model, batch_ids, mask, labels)
                        (loss * (n_lab / window_tokens)).backward()
                        loss_sum += float(loss.detach()) * n_lab
                        tok_sum += n_lab
                    if private is not None:
                        private.noised()  # every step adds noise, even one that sampled no text
                    masters.take_grads()
                    if private is None and cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(masters.weights, cfg.max_grad_norm)
                    opt.step()
                    masters.round_into_model()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    bar.advance(1)
                    bar.note(f"epoch {epoch}/{cfg.epochs} loss {loss_sum / max(tok_sum, 1):.3f}{spent}")
                dt = time.perf_counter() - t0
                if packed:
                    pad_frac.append(1 - real / max(slots, 1))
                t_train += dt
                n_tokens += int(sum(lengths[b].sum() for w in windows for b in w))
                if private is not None:  # the accountant takes ~1 s, so once an epoch, not every step
                    spent = f" ε {private.epsilon():.2f} after epoch {epoch}"
                epochs.append({"epoch": epoch, "train_loss": loss_sum / max(tok_sum, 1), "seconds": dt})
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
                    opt.zero_grad(set_to_none=True)  # an evaluation's backward pass (gradient norms) leaves none
                if on_state is not None:
                    loop = {"epochs": epochs, "train_tokens": n_tokens, "train_seconds": t_train, "pad": pad_frac}
                    on_state(_capture(epoch, model, masters, opt, sched, rng, loop))
    finally:
        masters.close()
        summary = private.close() if private is not None else None
        if checkpointing:
            model.gradient_checkpointing_disable()
    model.eval()
    return {
        "epochs": epochs,
        "steps": total_steps,
        "lr": lr,
        "train_tokens": n_tokens,
        "train_seconds": t_train,
        "tokens_per_second": n_tokens / t_train if t_train else float("nan"),
        "padding_fraction": float(np.mean(pad_frac)) if pad_frac else 0.0,
        "packed": packed,
        "gradient_checkpointing": checkpointing,
        "master_weights": masters.dtype,
        "privacy": summary,
    }


def _trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _capture(epoch: int, model, masters: MasterWeights, opt, sched, rng, loop: dict) -> TrainState:
    """A copy (on the CPU) of everything the next epoch depends on."""
    import torch

    tensors = {f"weight.{i}": w.detach().to("cpu", copy=True) for i, w in enumerate(masters.weights)}
    sd = opt.state_dict()
    for i, state in sd["state"].items():  # i: the weight's index; state: exp_avg, exp_avg_sq (like it), step (0-d)
        tensors |= {f"adam.{i}.{k}": v.detach().to("cpu", copy=True) for k, v in state.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if masters.weights[0].device.type == "cuda":
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    meta = {
        "names": _trainable_names(model),
        "param_groups": sd["param_groups"],
        "schedule": sched.state_dict(),
        "sampler": rng.bit_generator.state,
        "loop": loop,
    }
    return TrainState(epoch, tensors, meta)


ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}
SCHEDULE_STATE = {"base_lrs", "last_epoch", "_step_count", "_last_lr", "lr_lambdas"}


def check_state(state: TrainState, model) -> None:
    """Raise ``ValueError`` saying why ``state`` cannot resume training ``model`` (its trainable weights, by name
    and shape, on their device); checked before anything is changed."""
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    t, meta, n = state.tensors, state.meta, len(named)
    if not isinstance(meta, dict) or meta.get("names") != [name for name, _ in named]:
        raise ValueError("its trainable weights are not this model's")
    for i, (name, p) in enumerate(named):
        w = t.get(f"weight.{i}")
        if w is None or tuple(w.shape) != tuple(p.shape):
            raise ValueError(f"trainable weight {name} does not fit this model")
    if f"weight.{n}" in t:
        raise ValueError("it holds more trainable weights than this model")
    adam: dict[str, set[str]] = {}
    for key in t:
        if key.startswith("adam."):
            index, _, name = key.removeprefix("adam.").partition(".")
            adam.setdefault(index, set()).add(name)
    for index, names in adam.items():
        if not index.isdigit() or int(index) >= n or names != ADAM_STATE:
            raise ValueError(f"its optimizer state for weight {index} is not AdamW's for this model")
        shape = tuple(named[int(index)][1].shape)
        if any(tuple(t[f"adam.{index}.{k}"].shape) != shape for k in ("exp_avg", "exp_avg_sq")):
            raise ValueError(f"its optimizer state for weight {index} does not fit it")
    groups = meta.get("param_groups")
    if not (isinstance(groups, list) and len(groups) == 1 and groups[0].get("params") == list(range(n))):
        raise ValueError("its optimizer groups are not this model's")
    loop = meta.get("loop")
    if not (isinstance(loop, dict) and {"epochs", "train_tokens", "train_seconds", "pad"} <= loop.keys()):
        raise ValueError("its training summary is incomplete")
    schedule = meta.get("schedule")
    if not (isinstance(schedule, dict) and schedule.keys() >= SCHEDULE_STATE):
        raise ValueError("its learning-rate schedule is incomplete")
    sampler = meta.get("sampler")
    try:
        if not isinstance(sampler, dict):
            raise TypeError
        np.random.Generator(np.random.PCG64()).bit_generator.state = sampler
    except (TypeError, ValueError, KeyError):
        raise ValueError("its batch sampler's state is not a PCG64 state") from None
    rng = t.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise ValueError("its torch RNG state is missing or malformed")
    cuda = sum(k.startswith("rng.cuda.") for k in t)
    here = torch.cuda.device_count() if named and named[0][1].device.type == "cuda" else 0
    if cuda != here:
        raise ValueError(f"it was saved with {cuda} GPU RNG states; this run has {here}")


def _restore(state: TrainState, model, masters: MasterWeights, opt, sched, rng) -> dict:
    """Put ``state`` (checked by :func:`check_state` first) back into the optimizer, schedule, RNGs and weights;
    return its loop summary."""
    import torch

    check_state(state, model)
    t = state.tensors
    adam: dict[int, dict] = {}
    for key, v in t.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            adam.setdefault(int(index), {})[name] = v
    opt.load_state_dict({"state": adam, "param_groups": state.meta["param_groups"]})
    sched.load_state_dict(state.meta["schedule"])
    rng.bit_generator.state = state.meta["sampler"]
    torch.set_rng_state(t["rng.torch"])
    if masters.weights[0].device.type == "cuda":
        torch.cuda.set_rng_state_all([t[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())])
    with torch.no_grad():
        for i, w in enumerate(masters.weights):
            w.copy_(t[f"weight.{i}"])
    masters.round_into_model()
    return state.meta["loop"]


PACK_ROW = 128  # tokens per packed training row (at least the longest text)


def can_pack(model, ids: Sequence[Sequence[int]], pad_id: int, starts: Sequence[int] | None) -> bool:
    """Whether ``model`` trains on packed rows: not a prompt-learning adapter (its virtual tokens precede every
    row) and an architecture the scoring engine verified to isolate packed texts; otherwise a warning."""
    from memlens.scoring.engine import _is_prompt_learning, packing_verified

    ok = not _is_prompt_learning(model) and packing_verified(model, ids, pad_id, 16, starts)
    if not ok:
        progress.warn("training.packing: this model cannot be trained on packed rows here; padded batches instead")
    return ok


def packed_rows(seqs: Sequence[Sequence[int]], first: Sequence[int], pad_id: int, width: int = PACK_ROW):
    """``(input_ids, position_ids, labels)``, each ``(R, W)``: ``seqs`` packed best-fit into rows of
    ``max(width, longest)`` tokens, position ids restarting at every text, labels −100 before each text's
    ``first`` learned token and on a row's unused tail. Called without an attention mask and with
    ``use_cache=False``, ``transformers`` turns the restarts into a block-diagonal causal mask (with a cache it
    would not: the texts would attend to each other)."""
    import torch

    from memlens.scoring.engine import best_fit

    sizes = np.array([len(s) for s in seqs], dtype=np.int64)
    bins = best_fit(sizes, max(width, int(sizes.max(initial=1))))
    used = max(int(sizes[b].sum()) for b in bins)
    input_ids = torch.full((len(bins), used), pad_id, dtype=torch.long)
    positions = torch.zeros((len(bins), used), dtype=torch.long)
    labels = torch.full((len(bins), used), -100, dtype=torch.long)
    for r, b in enumerate(bins):  # a loop over texts, not tokens
        col = 0
        for i in b:
            seq, n, k = torch.as_tensor(seqs[i], dtype=torch.long), len(seqs[i]), int(first[i])
            input_ids[r, col : col + n], positions[r, col : col + n] = seq, torch.arange(n)
            labels[r, col + k : col + n] = seq[k:]
            col += n
        positions[r, col:] = torch.arange(used - col)
    return input_ids, positions, labels
