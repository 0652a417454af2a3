"""Knowledge distillation: the KD objectives as per-token losses, a smaller student, and the student's training.

The logit objectives compare the teacher's and the student's next-token distributions at every position that
predicts a label (a transfer text's tokens after its start token), softened by a temperature T and scaled by T²
(Hinton et al.) so that gradients keep their size as T changes:

- ``forward_kl``: KL(p_teacher ‖ p_student), the classic KD loss (mean-seeking);
- ``reverse_kl``: KL(p_student ‖ p_teacher) (mode-seeking, as MiniLLM);
- ``mixed``: α · forward KL + (1 − α) · the LM loss on the transfer text itself.

``sequence`` (sequence-level KD, Kim & Rush 2016) needs no loss of its own: the student is trained with the LM
loss on texts the teacher generated (:mod:`memlens.experiments.distillation`), so it works across tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable

from memlens.errors import MemlensError


def kd_loss(student_logits, teacher_logits, labels, *, objective: str, temperature: float = 1.0, alpha: float = 0.5):
    """The mean per-token KD loss (a scalar tensor) over the positions whose next token is a label.

    ``student_logits``, ``teacher_logits``: (B, L, V) for the same input ids; ``labels``: (B, L) token ids with
    −100 where a token is not learned (padding, context), as for the LM loss: position j predicts label j + 1.
    Only the (n, V) rows of labelled positions are ever normalised (no padding enters the softmax).
    """
    import torch.nn.functional as F

    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)}"
        )
    keep = labels[:, 1:] != -100  # (B, L−1): position j predicts token j + 1
    s, t = student_logits[:, :-1][keep].float(), teacher_logits[:, :-1][keep].float()  # (n, V)
    log_s, log_t = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    scale = temperature**2
    if objective == "reverse_kl":
        return (log_s.exp() * (log_s - log_t)).sum(-1).mean() * scale
    forward = (log_t.exp() * (log_t - log_s)).sum(-1).mean() * scale
    if objective == "forward_kl":
        return forward
    if objective == "mixed":
        return alpha * forward + (1 - alpha) * F.cross_entropy(s, labels[:, 1:][keep])
    raise ValueError(f"kd_loss takes forward_kl, reverse_kl or mixed, not {objective!r}")


def kd_objective(teacher, *, objective: str, temperature: float, alpha: float) -> Callable:
    """``loss(student, ids, mask, labels)`` for :func:`memlens.tuning.train`: the teacher's logits (no gradient,
    teacher in eval mode) and the student's, reduced by :func:`kd_loss`."""
    import torch

    teacher.eval()

    def loss(student, ids, mask, labels):
        with torch.no_grad():  # a prompt-tuned teacher prepends its virtual positions: keep the text's
            t = teacher(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]
        s = student(input_ids=ids, attention_mask=mask).logits
        return kd_loss(s, t, labels, objective=objective, temperature=temperature, alpha=alpha)

    return loss


def check_shared_vocabulary(teacher_tok, student_tok, teacher, student, objective: str) -> None:
    """Refuse a logit objective between models whose vocabularies (token → id, output size) differ."""
    same = teacher_tok.get_vocab() == student_tok.get_vocab()
    sizes = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if not same or sizes[0] != sizes[1]:
        raise MemlensError(
            f"distillation objective {objective!r} compares logits, which needs the teacher's vocabulary in the "
            f"student (vocabularies {'match' if same else 'differ'}, output sizes {sizes[0]} and {sizes[1]}); "
            "use objective 'sequence' (trains on the teacher's generations) or a student of the same family"
        )


def blocks(model):
    """The model's list of decoder blocks (``nn.ModuleList``) and the attribute path it lives at."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        owner, found = base, True
        for part in path.split("."):
            if not hasattr(owner, part):
                found = False
                break
            owner = getattr(owner, part)
        if found:
            return owner, path
    raise MemlensError(f"cannot find the decoder blocks of {type(base).__name__} to make a smaller student")


def keep_blocks(model, keep: list[int]):
    """Remove every decoder block not in ``keep`` (indices, in order), in place; returns ``model``.

    Each kept block's attention gets its new index (the KV cache is indexed by it) and the config its new depth.
    """
    import torch

    layers, path = blocks(model)
    if not keep or any(not 0 <= i < len(layers) for i in keep) or sorted(set(keep)) != list(keep):
        raise MemlensError(f"blocks to keep must be distinct, increasing indices below {len(layers)}, got {keep}")
    kept = torch.nn.ModuleList(layers[i] for i in keep)
    for new, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new  # type: ignore[assignment]
    owner_path, _, attr = path.rpartition(".")
    owner = model
    for part in owner_path.split("."):
        owner = getattr(owner, part)
    setattr(owner, attr, kept)
    config = model.config
    for name in ("layer_types",):
        value = getattr(config, name, None)
        if isinstance(value, list) and len(value) == len(layers):
            setattr(config, name, [value[i] for i in keep])
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(config, name):
            setattr(config, name, len(keep))
    return model


def half_depth(model):
    """The model with every other decoder block (0, 2, 4, …) kept: the smaller student ``student = "half"``."""
    layers, _ = blocks(model)
    return keep_blocks(model, list(range(0, len(layers), 2)))
