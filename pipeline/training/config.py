"""What a fine-tuning run is: one frozen dataclass, built by `parakeet-ray finetune` from its flags."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spec_augment import SpecAugmentConfig

# Why a training row is skipped. The first group are bad rows (they count against --max-bad-fraction);
# `below_min_duration` is the user's own filter and never does.
BAD_REASONS = ("unreadable", "empty_text", "unencodable_text", "too_short_for_text", "too_long")
FILTER_REASONS = ("below_min_duration",)
SKIP_REASONS = BAD_REASONS + FILTER_REASONS


@dataclass(frozen=True)
class TrainConfig:
    train: str  # manifest(s): a file, a folder or glob of shards (Parquet/CSV/JSONL), or a transcribe OUTPUT
    output: str  # folder or URI: checkpoints (OUTPUT/_ray), OUTPUT/best, OUTPUT/last, OUTPUT/metrics.jsonl
    val: str | None = None
    where: str | None = None  # DuckDB condition over the train rows (applied by the driver before training)
    model: str | None = None  # start from this checkpoint (keeps its tokenizer) ...
    preset: str | None = None  # ... or from scratch with this architecture (trains a tokenizer on TRAIN, once)
    vocab_size: int = 128  # tokenizer size when training from scratch
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    batch_seconds: float = 120.0  # padded audio seconds per micro-batch per worker
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0
    freeze_encoder: bool = False  # train the prediction network and joint only
    min_duration: float = 0.0  # seconds; shorter utterances are skipped (reason below_min_duration)
    max_duration: float = 40.0  # seconds; longer utterances are skipped (reason too_long), like NeMo's manifests
    max_bad_fraction: float = 0.01  # fail the run when more of the training rows than this are bad
    buffer_batches: int = 16  # a worker sorts this many batches' worth of audio at a time (the shuffle buffer)
    checkpoint_every: int | None = 1000  # optimizer steps between checkpoints (also at every epoch end)
    keep_checkpoints: int = 2  # latest checkpoints kept under OUTPUT/_ray (OUTPUT/best is kept apart)
    val_every: int | None = None  # optimizer steps between validations (also at every epoch end)
    log_every: int = 10  # optimizer steps between progress lines / metrics rows
    sigma: float = 0.0  # TDT logit under-normalisation
    omega: float = 0.0  # probability of a step using the standard RNN-T loss (NeMo's omega)
    fused_loss: bool = True  # joint + loss slab by slab (joint_loss.py): logits never materialised
    spec_augment: SpecAugmentConfig | None = field(default_factory=SpecAugmentConfig)
    seed: int = 0
    eval_batch_size: int = 32
    decode_cpus: float = 1.0  # CPUs per Ray Data decode task
    storage_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # preset field overrides, e.g. {"encoder": {...}}

    def __post_init__(self):
        checks = [(self.batch_seconds > 0, "batch_seconds must be positive"), (self.grad_accum >= 1, "grad_accum must be >= 1"),
                  (0 <= self.max_bad_fraction <= 1, "max_bad_fraction must be within [0, 1]"),
                  (self.max_duration > self.min_duration >= 0, "need 0 <= min_duration < max_duration"),
                  (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"), (self.buffer_batches >= 1, "buffer_batches must be >= 1"),
                  (self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
                  (self.val_every is None or self.val_every >= 1, "val_every must be >= 1"), (self.log_every >= 1, "log_every must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        """Inverse of dataclasses.asdict (how the config travels to Ray Train workers)."""
        raw = dict(raw)
        if raw.get("spec_augment") is not None:
            raw["spec_augment"] = SpecAugmentConfig(**raw["spec_augment"])
        return cls(**raw)
