"""One TOML file describes a run: model, data, fine-tuning method, training, attacks, output.

Every table and field is optional; omitted ones take the defaults below. Unknown fields are an error, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memlens.errors import MemlensError

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PathField = Annotated[Path, Field(strict=False)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what numpy and torch accept  # TOML has no path type: a string is a path


class _Section(BaseModel):
    # strict: "3" is not an int, 16.0 is not a count, "no" is not a bool (an int is still a float)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class ModelConfig(_Section):
    """Which pre-trained model to fine-tune (built-in name, local dir, ``.gguf`` file or Hugging Face id).
    ``adapter`` (``memlens audit`` only): a peft adapter folder, fine-tuned elsewhere, loaded on that model.
    ``dtype = "auto"``: bfloat16 on CUDA, float32 on CPU.
    ``quantization`` (CUDA + bitsandbytes): load the frozen base in ``4bit`` (NF4, double quantization, compute in
    ``dtype``) or ``8bit`` — QLoRA when the method is an adapter (full and head fine-tuning are refused).
    ``device_map = "auto"``: spread the layers over every visible GPU (then CPU memory) with accelerate, for a
    model larger than one GPU; inputs go to the first layer's device."""

    name: Annotated[str, Field(min_length=1)] = "smollm2-135m"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    adapter: PathField | None = None
    quantization: Literal["4bit", "8bit"] | None = None
    device_map: Literal["auto"] | None = None

    @model_validator(mode="after")
    def _quantized_on_cuda(self) -> ModelConfig:
        if self.quantization and self.device == "cpu":
            raise ValueError("model.quantization needs a CUDA GPU (bitsandbytes' kernels); drop it for device cpu")
        if self.device_map and self.device == "cpu":
            raise ValueError("model.device_map spreads a model over GPUs; drop it for device cpu")
        return self


class DataConfig(_Section):
    """Member / non-member / validation texts.

    ``source = "phee"`` reads PHEE from ``dir`` (or ``$MEMLENS_DATA_DIR``; without either, the copy shipped inside
    memlens): train = members, test = non-members, dev = validation. ``source = "sotu"``: sentences of the US State
    of the Union addresses since 1946, shipped inside memlens (public domain; ``memlens/data/sotu/README.md``),
    split the same way. ``source = "files"`` reads the three JSONL/CSV files named below (optionally ``.gz``).
    ``source = "hf"`` reads the ``splits`` (members, non-members, validation; default train, test, validation)
    of the Hugging Face dataset ``dataset`` (a hub id, with ``dataset_config``; or a local ``save_to_disk``
    folder of a ``DatasetDict``).
    Counts are sampled without replacement with ``seed``; ``0`` or a count above what exists takes all.
    """

    source: Literal["phee", "sotu", "files", "hf"] = "phee"
    dir: PathField | None = None
    members: PathField | None = None
    nonmembers: PathField | None = None
    validation: PathField | None = None
    text_field: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    splits: Annotated[list[str], Field(min_length=3, max_length=3)] | None = None  # default: HF_SPLITS
    n_members: Annotated[int, Field(ge=0)] = 200
    n_nonmembers: Annotated[int, Field(ge=0)] = 200
    n_validation: Annotated[int, Field(ge=0)] = 100
    max_tokens: PositiveInt = 128
    seed: Seed = 0
    allow_overlap: bool = False


class TuningConfig(_Section):
    """The fine-tuning method and its parameters; each method reads only its own fields.

    - ``lora``: ``targets`` (q k v o gate up down, groups attn / mlp / all, or module names), ``rank``,
      ``alpha``, ``dropout``, ``layers`` (indices, or ``"last:N"`` / ``"first:N"``; default all).
    - ``ia3``: ``targets`` (default k, v, down) and ``layers``.
    - ``prefix`` / ``prompt`` / ``ptuning``: ``virtual_tokens``; ``prompt`` also ``prompt_init`` (``random`` or
      ``text``, with ``prompt_init_text``); ``prefix`` also ``prefix_init`` (``random``, peft's, the default; or
      ``text``: the model's own keys and values of ``prompt_init_text``, so that training starts from the
      pre-trained model's behaviour after that text — random prefixes can wreck it); ``ptuning`` also
      ``encoder_hidden``.
    - ``full`` and ``head`` take no parameters.
    """

    method: Literal["full", "head", "lora", "ia3", "prefix", "prompt", "ptuning"] = "lora"
    targets: list[str] | None = None
    rank: Annotated[int, Field(gt=0, le=65536)] = 8
    alpha: float = 16.0
    dropout: Fraction = 0.05
    layers: list[Annotated[int, Field(ge=0)]] | str | None = None
    virtual_tokens: Annotated[int, Field(gt=0, le=65536)] = 20
    prompt_init: Literal["random", "text"] = "random"
    prompt_init_text: str = "Sentences from medical case reports describing drug effects:"
    prefix_init: Literal["random", "text"] | None = None  # None: random
    encoder_hidden: PositiveInt = 128

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("targets must not be empty (leave it out for the method's default)")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | str | None) -> list[int] | str | None:
        if isinstance(v, str):
            side, _, n = v.partition(":")
            if side not in ("last", "first") or not n.isdigit() or int(n) < 1:
                raise ValueError("layers must be a list of indices or 'last:N' / 'first:N'")
        if isinstance(v, list) and not v:
            raise ValueError("layers must not be empty (leave it out for all layers)")
        return v


class TrainingConfig(_Section):
    """Optimisation. ``lr = None`` takes the method's default (see ``memlens.tuning.DEFAULT_LR``).

    Memorization is evaluated at epoch 0 (the pre-trained model), every ``eval_every`` epochs, at each epoch in
    ``eval_at`` and after the last epoch. ``save_checkpoints`` keeps the trainable weights at each evaluated
    epoch (small for adapters; for ``full`` it is the whole model). ``gradient_checkpointing``: keep only each
    block's input during the forward pass and recompute the rest in the backward pass (transformers'
    non-reentrant checkpointing): activation memory falls from every block's to one block's, for about a third
    more compute; the trained weights are the same. Not with DP-SGD.
    """

    epochs: Annotated[int, Field(ge=0)] = 3
    eval_every: Annotated[int, Field(ge=0)] = 1
    eval_at: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    save_checkpoints: bool = False
    lr: Annotated[float, Field(gt=0)] | None = None
    batch_size: PositiveInt = 16
    grad_accum: PositiveInt = 1
    warmup_ratio: Fraction = 0.0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    seed: Seed = 0
    packing: bool | None = None  # None: False (padded, length-grouped batches)
    gradient_checkpointing: bool | None = None  # None: False


class ScoringConfig(_Section):
    """The batched scoring pass. ``cache``: reuse statistics of the same weights on the same tokens from disk."""

    batch_size: PositiveInt = 16
    cache: bool = True


class AttackConfig(_Section):
    """Membership-inference attacks and how their AUC is reported.

    The default attacks all come from the one scoring pass. ``lowercase`` adds a pass over the lower-cased
    texts and ``recall`` a pass over the texts after a prefix of ``recall_shots`` validation texts (never a
    scored text). ``k``: the fractions of Min-K% and Min-K%++. ``blind``: also fit the model-free baseline
    (text features + logistic regression) whose AUC every attack must beat to mean anything.
    ``reference_model``: the Reference attack's R — by default the pre-trained model itself (its epoch-0
    statistics); or any other causal LM (built-in name, local folder, ``.gguf`` file or hub id), loaded once
    before fine-tuning, scored on its own tokenization of the texts (cached) and released.
    ``frequency_corpus`` (``dc_pdd``): where token frequencies come from — ``sotu`` (general English shipped with
    memlens; the default), ``validation``, ``pool`` (unused texts of the members' split) or a JSONL/CSV file.
    ``distinct``: count each distinct text once in the attacks' AUC and TPR and in the loss gap (exact
    duplicates after normalisation, within the members and within the non-members; the split audit reports
    them); ``false`` weights every copy.
    ``reference_models`` (``rmia``, ``lira``): K models memlens fine-tunes with the target's own recipe, each
    on a random sample (as many texts as the target's members) of the ``population`` — ``pool`` (unused texts
    of the members' split, the default), ``validation`` or a JSONL/CSV file; never a scored text. Before
    sampling, ``population_size`` texts (default 500) are set aside as RMIA's population samples z, which no
    model trains on. Cached by recipe and data, so a sweep trains them once. ``rmia_a``: RMIA's offline
    scaling (default: tuned on the reference models as the paper does, 0.3 with a single one); ``rmia_gamma``:
    its likelihood-ratio threshold (default 1). ``neighbours`` (``neighbour``): how many perturbed copies of each
    text are scored (default 8).
    """

    names: list[str] = Field(default_factory=lambda: ["loss", "reference", "zlib", "min_k", "min_k_plus"])
    k: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    recall_shots: PositiveInt = 5
    reference_model: str | None = None
    frequency_corpus: str | None = None  # None: "sotu"
    fpr: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.001, 0.01, 0.05])
    bootstrap: Annotated[int, Field(ge=0)] = 1000
    blind: bool = True
    distinct: bool = True
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    seed: Seed = 0
    reference_models: PositiveInt | None = None
    population: str | None = None  # None: "pool"
    population_size: Annotated[int, Field(ge=10)] | None = None  # None: 500
    rmia_a: Annotated[float, Field(ge=0, le=1)] | None = None  # None: tuned (0.3 with one reference model)
    rmia_gamma: Annotated[float, Field(gt=0)] | None = None  # None: 1
    neighbours: Annotated[int, Field(ge=2, le=64)] | None = None  # None: 8

    @model_validator(mode="after")
    def _references_used(self) -> AttackConfig:
        from memlens.attacks import ATTACKS

        users = [n for n in self.names if "references" in ATTACKS[n].needs]
        if users and not self.reference_models:
            raise ValueError(f"attack(s) {users} need reference models: set attacks.reference_models (e.g. 2)")
        if self.reference_models and not users:
            raise ValueError("attacks.reference_models trains models only rmia and lira use: add one to names")
        return self

    @field_validator("names")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        from memlens.attacks import ATTACKS

        unknown = [n for n in names if n not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; available: {sorted(ATTACKS)}")
        if not names:
            raise ValueError("at least one attack is needed")
        return names


class ExtractionConfig(_Section):
    """Prefix-prompted extraction after fine-tuning: ``n_texts`` members (and as many non-members, the baseline)
    are split at ``prefix`` (a token count, or a fraction: 0.5 = the midpoint) and the model continues them
    for the true suffix's length. ``temperatures``: also sample at each (``num_samples`` per prefix, best kept
    by ``select``)."""

    enabled: bool = False
    n_texts: Annotated[int, Field(ge=1)] = 100
    prefix: Annotated[float, Field(gt=0)] = 0.5
    greedy: bool = True
    temperatures: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    num_samples: PositiveInt = 1
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    select: Literal["ngram_share", "token_accuracy", "rouge_l", "bleu", "exact_match"] = "ngram_share"
    batch_size: PositiveInt = 16

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: float) -> float:
        if v >= 1 and not float(v).is_integer():
            raise ValueError(f"a prefix of 1 or more is a token count and must be a whole number (got {v})")
        return v

    @property
    def prefix_length(self) -> float | int:
        """The prefix as :func:`memlens.extraction.extract` takes it: a fraction below 1, else a token count."""
        return self.prefix if self.prefix < 1 else int(self.prefix)


class CanaryConfig(_Section):
    """Planted canaries: ``n`` synthetic records per repetition count are added to the training texts (never
    to the member set that is attacked); as many held-out controls come from the same generator."""

    enabled: bool = False
    kind: Literal["patient", "digits"] = "patient"
    n: PositiveInt = 2
    repetitions: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    n_candidates: Annotated[int, Field(gt=0, le=10**7)] = 1000
    seed: Seed = 0


class MitigationConfig(_Section):
    """A lever that lowers memorization; the attacked members are unchanged.

    - ``dedup``: fine-tune on one copy of each group of exact or near-duplicate training texts (the split
      audit's definition; planted canaries included), so that no text is learned several times over.
    - ``dynamiccut`` (after Fang et al.'s DynamicCut): fine-tune once, rank the members by their memorization
      intensity (``rank_by = "loss_drop"``: the pre-trained minus fine-tuned mean token loss, averaged over
      the epochs; or any configured attack's label, e.g. ``"lira"`` — its per-text score averaged over the
      epochs, which with reference models separates what was memorized from what any fine-tune on the domain
      would learn), leave the top ``fraction`` out and fine-tune again from the pre-trained model; with
      ``control = true`` also fine-tune without a random ``fraction`` of the members (same size), the control
      that says whether the ranking mattered. ``rank_method`` ranks with another tuning method (e.g. ``lora``
      for a ``full`` run; at its default learning rate), to test whether the ranking transfers.
    """

    method: Literal["dedup", "dynamiccut"] = "dedup"
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    rank_by: str = "loss_drop"
    rank_method: Literal["full", "head", "lora", "ia3", "prefix", "prompt", "ptuning"] | None = None
    control: bool = True


_PER_BATCH_PROMPT = (
    "peft computes the soft prompt once per batch, so opacus would see one sample instead of one per text"
)
DP_UNSUPPORTED = {
    "ia3": "peft keeps IA³ vectors where opacus computes no per-sample gradients (they would silently go unclipped)",
    "prompt": _PER_BATCH_PROMPT,
    "ptuning": _PER_BATCH_PROMPT,
}  # the methods DP-SGD refuses, and why; full, head, lora and prefix are supported


class PrivacyConfig(_Section):
    """Differentially private fine-tuning (DP-SGD) and a check of its claim.

    ``dp = true``: every optimiser step takes each training text with probability ``batch_size · grad_accum / N``
    (Poisson sampling; ``poisson = false``: shuffled fixed batches, for which the accountant's ε is only an
    approximation), clips each text's gradient to ``max_grad_norm`` (per-sample gradients through opacus, for
    the trainable parameters only), adds Gaussian noise of standard deviation ``noise_multiplier ·
    max_grad_norm`` and averages over the expected batch. Give ``epsilon`` (the noise is chosen to spend it over
    the whole run at ``delta``) or ``noise_multiplier``; the ``accountant`` (opacus ``prv`` or ``rdp``) reports
    the ε spent. Works for ``full``, ``head``, ``lora`` and ``prefix``.

    ``audit = m``: plant ``m`` audit canaries, each trained on with probability ½, and turn the membership test
    on them into a lower bound on ε at ``audit_confidence`` (one-run auditing, Steinke, Nasr & Jagielski 2023),
    for DP and non-DP runs alike. ``audit_canaries``: what they are —
    ``records`` (default): templated patient records with random fields (a small model learns one copy weakly);
    ``sentences``: English sentences of the State of the Union addresses shipped with memlens, none equal to a
    text of the run (natural text, learned from one copy as a training text is; recommended);
    ``words``: eight random words from that vocabulary (no grammar, no domain);
    ``pool``: unused texts of the members' split (the members' own distribution; not with reference models,
    which draw on the same pool).
    """

    dp: bool = False
    epsilon: Annotated[float, Field(gt=0)] | None = None
    noise_multiplier: Annotated[float, Field(ge=0)] | None = None
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    accountant: Literal["prv", "rdp"] = "prv"
    poisson: bool = True
    audit: Annotated[int, Field(ge=0)] = 0
    audit_confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    audit_canaries: Literal["records", "sentences", "words", "pool"] | None = None  # None: records

    @model_validator(mode="after")
    def _noise(self) -> PrivacyConfig:
        if self.dp and (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("dp = true needs exactly one of epsilon (the budget) or noise_multiplier")
        if not self.dp and (self.epsilon is not None or self.noise_multiplier is not None):
            raise ValueError("epsilon and noise_multiplier apply only with dp = true")
        if self.audit_canaries is not None and not self.audit:
            raise ValueError("privacy.audit_canaries applies with privacy.audit = m (the number of audit canaries)")
        if 0 < self.audit < 20:
            raise ValueError(f"privacy.audit needs 0 (no audit) or at least 20 canaries (got {self.audit})")
        return self


KDObjective = Literal["forward_kl", "reverse_kl", "mixed", "sequence"]
LOGIT_OBJECTIVES = ("forward_kl", "reverse_kl", "mixed")  # these compare logits: teacher and student share a vocabulary


class DistillationConfig(_Section):
    """Knowledge distillation of the fine-tuned model (the teacher) into a student, which is then attacked on
    the teacher's members and non-members exactly as the teacher is (does membership survive distillation?).

    - ``student``: ``"same"`` (a fresh copy of the pre-trained model), ``"half"`` (the pre-trained model with
      every other block removed, a smaller student) or any model name ``model.name`` accepts.
    - ``transfer``: the student's training texts, never the teacher's members: ``"pool"`` (texts of the
      members' split that are neither members nor non-members), ``"validation"`` (the validation set, whose
      perplexity is then no longer held out), ``"generations"`` (the teacher's own samples from the start
      token) or a JSONL/CSV file; ``n_transfer`` of them (0: all).
    - ``objectives``: one student per objective, each from the same starting weights: ``forward_kl``
      (KL(teacher ‖ student) per token at ``temperature``, × T²), ``reverse_kl`` (KL(student ‖ teacher)),
      ``mixed`` (``alpha`` · forward KL + (1 − ``alpha``) · the LM loss on the transfer texts) and
      ``sequence`` (the LM loss on the teacher's continuations of the transfer texts' first ``prompt_tokens``
      tokens: works across tokenizers). The logit objectives need a shared vocabulary.
    - ``control``: also train the same student on the transfer texts with the plain LM loss and no teacher
      (not with ``generations``): transfer texts from the members' distribution can raise the members' AUC
      by themselves; a student's AUC minus the control's is what it inherited from the teacher.
    - ``epochs``, ``lr``, ``batch_size``: the student's training (default: the run's ``[training]``; ``lr``
      default 1e-4); every student parameter is trained.
    """

    enabled: bool = True
    student: str = "same"
    transfer: str = "pool"
    n_transfer: Annotated[int, Field(ge=0)] = 200
    objectives: list[KDObjective] = Field(default_factory=lambda: list[KDObjective](["forward_kl"]), min_length=1)
    control: bool = True
    temperature: Annotated[float, Field(gt=0)] = 1.0
    alpha: Fraction = 0.5
    prompt_tokens: PositiveInt = 8
    epochs: PositiveInt | None = None
    lr: Annotated[float, Field(gt=0)] | None = None
    batch_size: PositiveInt | None = None

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("objectives must not repeat")
        return v

    @field_validator("student", "transfer")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class OutputConfig(_Section):
    """Where results go. ``{name}`` and ``{time}`` in ``dir`` are filled in; an existing non-empty folder is
    refused unless ``overwrite``. ``resume``: keep the fine-tune's state after each epoch in ``.DIR.resume``
    beside the folder, so that the same run started again after an interruption goes on from there (deleted
    when the results are written; :mod:`memlens.experiments.resume`)."""

    dir: PathField = Path("runs/{name}")
    overwrite: bool = False
    save_adapter: bool = False
    resume: bool = True

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("dir must not be empty")
        return v


class RunConfig(_Section):
    """A whole run."""

    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    attacks: AttackConfig = Field(default_factory=AttackConfig)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    canaries: CanaryConfig = Field(default_factory=CanaryConfig)
    mitigation: MitigationConfig | None = None  # None (no [mitigation] table): train on every text as given
    privacy: PrivacyConfig | None = None  # None (no [privacy] table): ordinary training, no audit canaries
    distillation: DistillationConfig | None = None  # None (no [distillation] table): no student
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from memlens.files import safe_label

        try:
            return safe_label(v, "run name")
        except MemlensError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _quantized_base(self) -> RunConfig:
        q = self.model.quantization
        if q and self.tuning.method in ("full", "head"):
            raise ValueError(
                f"tuning.method {self.tuning.method!r} would train the {q} weights themselves; a quantized base "
                "takes an adapter method (lora, ia3, prefix, prompt, ptuning)"
            )
        if q and self.privacy is not None and self.privacy.dp:
            raise ValueError("DP-SGD on a quantized base is not verified: drop model.quantization or privacy.dp")
        return self

    @model_validator(mode="after")
    def _audit_pool(self) -> RunConfig:
        pool = self.attacks.population in (None, "pool")
        if (
            self.privacy is not None
            and self.privacy.audit_canaries == "pool"
            and self.attacks.reference_models
            and pool
        ):
            raise ValueError(
                "privacy.audit_canaries = 'pool' and attacks.reference_models both draw on the unused texts of the "
                "members' split: use audit_canaries = 'sentences'"
            )
        return self

    @model_validator(mode="after")
    def _private_method(self) -> RunConfig:
        if self.privacy is not None and self.privacy.dp and self.tuning.method in DP_UNSUPPORTED:
            why = DP_UNSUPPORTED[self.tuning.method]
            raise ValueError(f"DP-SGD cannot train tuning.method {self.tuning.method!r}: {why}")
        if self.privacy is not None and self.privacy.dp and self.training.gradient_checkpointing:
            raise ValueError(
                "training.gradient_checkpointing cannot be combined with DP-SGD: opacus's per-text gradient hooks "
                "would see every recomputed forward pass again"
            )
        return self

    @model_validator(mode="after")
    def _ranked_by_a_measure(self) -> RunConfig:
        m = self.mitigation
        if m is None or m.method != "dynamiccut" or m.rank_by == "loss_drop":
            return self
        from memlens.attacks import attack_labels

        labels = [label for label, _, _ in attack_labels(self.attacks.names, self.attacks.k)]
        if m.rank_by not in labels:
            raise ValueError(
                f"mitigation.rank_by {m.rank_by!r} is neither loss_drop nor a configured attack ({', '.join(labels)})"
            )
        return self

    @model_validator(mode="after")
    def _one_lever(self) -> RunConfig:
        dynamic = self.mitigation is not None and self.mitigation.method == "dynamiccut"
        if dynamic and self.distillation is not None and self.distillation.enabled:
            raise ValueError("DynamicCut and distillation cannot be combined in one run: run them apart")
        from memlens.attacks import run_only

        only = run_only(self.attacks.names)
        if only and self.distillation is not None and self.distillation.enabled:
            raise ValueError(f"attack(s) {only} are not run on distilled students: run them apart")
        if "gradient_norm" in self.attacks.names:
            if self.tuning.method in DP_UNSUPPORTED:
                why = DP_UNSUPPORTED[self.tuning.method].replace("opacus would", "per-text gradients would")
                raise ValueError(f"gradient_norm cannot measure tuning.method {self.tuning.method!r}: {why}")
            if self.privacy is not None and self.privacy.dp:
                raise ValueError("gradient_norm and DP-SGD both hook per-text gradients: run them apart")
        return self

    def output_dir(self) -> Path:
        """``output.dir`` with ``{name}`` and ``{time}`` (UTC, YYYYmmdd-HHMMSS) filled in."""
        from datetime import UTC, datetime

        now = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return Path(str(self.output.dir).replace("{name}", self.name).replace("{time}", now)).expanduser()

    def identity(self) -> str:
        """The config's identity (16 hex digits): everything but ``[output]``. Fields left unset (``None``) are
        not part of it, so that a newer memlens adding an optional field still matches an older store or a
        half-finished run; any set value, defaults included, is."""
        import hashlib
        import json

        data = self.model_dump(mode="json", exclude={"output"}, exclude_none=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        """The fully resolved config as TOML (None values are omitted)."""
        import tomli_w

        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


METHOD_FIELDS: dict[str, tuple[str, ...]] = {  # the [tuning] fields each method reads (TuningConfig's docstring)
    "full": (),
    "head": (),
    "lora": ("targets", "rank", "alpha", "dropout", "layers"),
    "ia3": ("targets", "layers"),
    "prefix": ("virtual_tokens", "prefix_init"),
    "prompt": ("virtual_tokens", "prompt_init"),
    "ptuning": ("virtual_tokens", "encoder_hidden"),
}


def fields_read(tuning: dict, also: tuple[str, ...] = ()) -> dict:
    """The part of a ``[tuning]`` table (as stored) that its method reads — and the methods in ``also`` (e.g.
    DynamicCut's ``mitigation.rank_method``, which fine-tunes with the same table): the method, their fields
    (:data:`METHOD_FIELDS`) and ``prompt_init_text`` where one starts from that text; the whole table for a
    method it does not know."""
    methods = {tuning.get("method", "lora"), *also}
    if not methods <= set(METHOD_FIELDS):
        return tuning
    kept = {k: tuning.get(k) for k in ("method", *(f for m in sorted(methods) for f in METHOD_FIELDS[m]))}
    if kept.get("prefix_init") == "random":  # peft's start, as when unset
        kept["prefix_init"] = None
    if ("prefix" in methods and tuning.get("prefix_init") == "text") or (
        "prompt" in methods and tuning.get("prompt_init") == "text"
    ):
        kept["prompt_init_text"] = tuning.get("prompt_init_text")
    return kept


def computation_key(config: dict) -> str:
    """What a trial computes and keeps, as 16 hex digits, from its config as stored (``model_dump(mode="json")``,
    maybe an older memlens's): everything but the ``name`` (a label, written only into results.json), where the
    output goes (``[output]`` but ``save_adapter``, which adds the adapter to it), the ``[tuning]`` fields its
    method does not read (:func:`fields_read`) and unset fields. Trials of two sweeps with one key compute the
    same thing; :meth:`RunConfig.identity` (a store's config hash) keeps them all."""
    import hashlib
    import json

    def drop_none(v):
        return {k: drop_none(x) for k, x in v.items() if x is not None} if isinstance(v, dict) else v

    data = {k: v for k, v in config.items() if k not in ("output", "name")}
    if isinstance(data.get("tuning"), dict):
        rank_method = (data.get("mitigation") or {}).get("rank_method")
        data["tuning"] = fields_read(data["tuning"], (rank_method,) if rank_method else ())
    data = drop_none(data)
    if (config.get("output") or {}).get("save_adapter"):
        data["save_adapter"] = True
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    got = first.get("input")
    shown = "" if isinstance(got, dict) or first["type"] == "missing" else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f"; and {more} more problem(s)" if more else ""
    return f"invalid config {source}: field '{field}': {msg}{shown}{tail}"


def parse_config(data: dict[str, Any], source: str = "") -> RunConfig:
    """Validate a config mapping; raise :class:`MemlensError` naming the first bad field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise MemlensError(_describe(err, source)) from None


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a TOML file; a missing, non-UTF-8 or malformed file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise MemlensError(f"{what} file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise MemlensError(f"{what} file {path} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise MemlensError(f"{what} file {path} is not UTF-8 text") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run config."""
    return parse_config(read_toml(path), str(path))


def builtin_config(name: str) -> RunConfig:
    """A config shipped with memlens (``memlens/configs/NAME.toml``), e.g. ``demo``."""
    file = resources.files("memlens") / "configs" / f"{name}.toml"
    if not file.is_file():
        raise MemlensError(f"no built-in config named {name!r}")
    return parse_config(tomllib.loads(file.read_text(encoding="utf-8")), f"(built-in {name})")


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with dotted-key overrides applied (``{"training.epochs": 2}``), re-validated."""
    data = cfg.model_dump(mode="python")
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:  # an optional section left out ([mitigation], [privacy] ...): its defaults
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return parse_config(data, "(with command-line overrides)")


def configuration_key(config: dict[str, Any]) -> str:
    """A trial's config (as a dict) as a key, without ``training.seed`` and ``[output]``: equal for the seeds
    of one configuration."""
    import json

    cfg = {k: v for k, v in config.items() if k != "output"}
    cfg["training"] = {k: v for k, v in cfg.get("training", {}).items() if k != "seed"}
    return json.dumps(cfg, sort_keys=True, default=str)
