"""The training profile (jobs/train_embedder.py, conf/train.yaml): a separate root, same rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from listing_dedup.config.loader import check as _check
from listing_dedup.config.loader import load, to_plain


@dataclass(frozen=True)
class TrainDataConf:
    title_column: str = "title"  # the text the encoder reads (cleaned like the job's ingest)
    label_column: str = "label_group"  # same label = same product
    read_batch_rows: int = 8192  # pyarrow record batches: the input is streamed, never loaded whole
    max_title_chars: int = 1000  # same clean-up as input.max_title_chars of the dedup job
    max_rows: int = 0  # use only the first N rows (0 = all); for quick runs of mode full on a CPU

    def __post_init__(self) -> None:
        _check(bool(self.title_column), "data.title_column", "must not be empty")
        _check(bool(self.label_column), "data.label_column", "must not be empty")
        _check(self.read_batch_rows >= 1, "data.read_batch_rows", "must be >= 1")
        _check(self.max_title_chars >= 16, "data.max_title_chars", "must be >= 16")
        _check(self.max_rows >= 0, "data.max_rows", "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class TrainEncoderConf:
    # base encoder: a packaged name (minilm, e5-small) or a sentence-transformers directory
    model: str = "minilm"
    batch_size: int = 64
    max_seq_length: int = 64
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch / engine CPU threads; 0 = all cores of this machine
    # mode full: fine-tune only the top N transformer layers (the token embeddings and the
    # lower layers stay frozen: cheaper backward pass, less forgetting); 0 = all layers
    train_layers: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.model), "encoder.model", "must not be empty")
        _check(self.train_layers >= 0, "encoder.train_layers", "must be >= 0 (0 = all layers)")
        _check(1 <= self.batch_size <= 65536, "encoder.batch_size", "must be in [1, 65536]")
        _check(8 <= self.max_seq_length <= 512, "encoder.max_seq_length", "must be in [8, 512]")
        _check(self.device in ("auto", "cpu", "cuda"), "encoder.device", "must be auto, cpu or cuda")
        _check(self.threads >= 0, "encoder.threads", "must be >= 0 (0 = all cores)")


@dataclass(frozen=True)
class TrainHeadConf:
    """Projection head on the (L2-normalised) encoder output; its output is L2-normalised."""

    dim: int = 256  # projection dim = the embedding dim the dedup job indexes
    hidden_dim: int = 1024  # 0 = Linear -> BatchNorm; else Linear -> BN -> ReLU -> Dropout -> Linear -> BN
    dropout: float = 0.1
    # batch: BatchNorm after each Linear (best on a frozen encoder); none: no BatchNorm (use it
    # in mode full, where BatchNorm's running statistics drift from what the encoder learns)
    norm: str = "batch"

    def __post_init__(self) -> None:
        _check(8 <= self.dim <= 4096, "head.dim", "must be in [8, 4096]")
        _check(self.norm in ("batch", "none"), "head.norm", "must be batch or none")
        _check(0 <= self.hidden_dim <= 16384, "head.hidden_dim", "must be in [0, 16384] (0 = linear head)")
        _check(0.0 <= self.dropout < 1.0, "head.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainLossConf:
    kind: str = "arcface"  # arcface | curricularface (additive angular margin, curriculum on hard negatives)
    margin: float = 0.5  # angular margin m (radians)
    scale: float = 30.0  # logit scale s
    # class weights at the start: random (Xavier), or imprint = each class's normalised mean
    # embedding under the untrained model (the classifier starts where the classes are)
    init: str = "random"

    def __post_init__(self) -> None:
        _check(self.kind in ("arcface", "curricularface"), "loss.kind", "must be arcface or curricularface")
        _check(self.init in ("random", "imprint"), "loss.init", "must be random or imprint")
        _check(0.0 <= self.margin <= 1.5, "loss.margin", "must be in [0, 1.5] radians")
        _check(1.0 <= self.scale <= 128.0, "loss.scale", "must be in [1, 128]")


@dataclass(frozen=True)
class TrainOptimConf:
    epochs: int = 20
    lr: float = 1e-3  # head and margin-classifier weights
    encoder_lr: float = 2e-5  # encoder weights (mode full only)
    weight_decay: float = 1e-4
    batch_size: int = 256
    schedule: str = "cosine"  # cosine | constant
    patience: int = 0  # stop after this many epochs without a better held-out F1; 0 = never stop early

    def __post_init__(self) -> None:
        _check(1 <= self.epochs <= 1000, "optim.epochs", "must be in [1, 1000]")
        _check(0.0 < self.lr <= 10.0, "optim.lr", "must be in (0, 10]")
        _check(0.0 < self.encoder_lr <= 1.0, "optim.encoder_lr", "must be in (0, 1]")
        _check(self.weight_decay >= 0.0, "optim.weight_decay", "must be >= 0")
        _check(2 <= self.batch_size <= 65536, "optim.batch_size", "must be in [2, 65536]")
        _check(self.schedule in ("cosine", "constant"), "optim.schedule", "must be cosine or constant")
        _check(self.patience >= 0, "optim.patience", "must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TrainSplitConf:
    """Held-out groups for validation. With a ``fold`` column in the input, the rows of the
    highest (``max``) or lowest (``min``) fold are held out; without one, a GroupShuffleSplit
    over the label column holds out ``heldout_fraction`` of the groups (seeded). ``none``: a
    refit on every row with settings chosen on a held-out run (fixed ``optim.epochs``, the last
    epoch is kept, no thresholds in the overlay)."""

    heldout_fold: str = "max"  # max | min (used when the input has a fold column) | none (refit on all rows)
    heldout_fraction: float = 0.2  # used when it has none

    def __post_init__(self) -> None:
        _check(self.heldout_fold in ("max", "min", "none"), "split.heldout_fold", "must be max, min or none")
        _check(0.0 < self.heldout_fraction < 1.0, "split.heldout_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class TrainValidateConf:
    """Held-out F1 (row-wise, the job's edge rules) from exact kNN and a threshold sweep."""

    k: int = 50
    thresholds: Sequence[float] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    min2_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6)
    # after training: INB thresholds tried on the best epoch (each one round; the overlay
    # keeps the best, or none); the finer final threshold grid
    inb_thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8)
    final_step: float = 0.025

    def __post_init__(self) -> None:
        _check(1 <= self.k <= 2048, "validate.k", "must be in [1, 2048]")
        _check(len(self.thresholds) > 0, "validate.thresholds", "must not be empty")
        for name, vals in (
            ("thresholds", self.thresholds),
            ("min2_thresholds", self.min2_thresholds),
            ("inb_thresholds", self.inb_thresholds),
        ):
            for i, t in enumerate(vals):
                _check(-1.0 <= t <= 1.0, f"validate.{name}[{i}]", "must be a cosine in [-1, 1]")
        _check(0.001 <= self.final_step <= 0.5, "validate.final_step", "must be in [0.001, 0.5]")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "head"  # head: projection head on a frozen encoder | full: fine-tune the encoder too
    seed: int = 1234
    data: TrainDataConf = field(default_factory=TrainDataConf)
    encoder: TrainEncoderConf = field(default_factory=TrainEncoderConf)
    head: TrainHeadConf = field(default_factory=TrainHeadConf)
    loss: TrainLossConf = field(default_factory=TrainLossConf)
    optim: TrainOptimConf = field(default_factory=TrainOptimConf)
    split: TrainSplitConf = field(default_factory=TrainSplitConf)
    validate: TrainValidateConf = field(default_factory=TrainValidateConf)

    def __post_init__(self) -> None:
        _check(self.mode in ("head", "full"), "mode", "must be head or full")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def load_train_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> TrainConfig:
    """Like :func:`load_config`, for the training profile (root :class:`TrainConfig`)."""
    return load(TrainConfig, paths, overrides)
