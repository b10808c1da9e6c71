"""Labelled training input, streamed: pyarrow record batches, never the whole table at once.

The input is a Parquet file or a folder of Parquet files (read in sorted path order, so row
numbers are stable between passes) with at least ``posting_id``, the title column and the
label column; an optional integer ``fold`` column decides the held-out split.

Only the small per-row columns (id, label, fold) are kept in memory, once; titles are
streamed batch by batch whenever an encoder needs them (:func:`iter_titles`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from listing_dedup.config import TrainDataConf, TrainSplitConf
from listing_dedup.errors import InputError
from listing_dedup.ingest.titles import clean_title

log = logging.getLogger(__name__)


def parquet_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*.parquet") if not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
        )
        if files:
            return files
        raise InputError(f"--input {path}: folder holds no .parquet files")
    raise InputError(f"--input {path}: no such file or folder")


def _iter_batches(files: list[Path], columns: list[str], batch_rows: int, max_rows: int) -> Iterator[pa.RecordBatch]:
    seen = 0
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise InputError(f"--input: cannot read {f} as Parquet: {e}") from None
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            if max_rows and seen + batch.num_rows > max_rows:
                batch = batch.slice(0, max_rows - seen)
            if batch.num_rows:
                yield batch
            seen += batch.num_rows
            if max_rows and seen >= max_rows:
                return


@dataclass(frozen=True)
class LabelledIndex:
    """Row-aligned small columns of the training input and the held-out split."""

    path: str
    ids: np.ndarray  # object (str)
    labels: np.ndarray  # object (str)
    folds: np.ndarray | None  # int64, or None without a fold column
    heldout: np.ndarray  # bool: row is in a held-out (validation) group
    split: str  # how the split was made, in words

    @property
    def n(self) -> int:
        return len(self.ids)

    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.heldout)

    def heldout_rows(self) -> np.ndarray:
        return np.flatnonzero(self.heldout)


def read_index(path: str | Path, data: TrainDataConf, split: TrainSplitConf, seed: int) -> LabelledIndex:
    files = parquet_files(path)
    names = set(pq.read_schema(files[0]).names)
    need = ["posting_id", data.title_column, data.label_column]
    missing = [c for c in need if c not in names]
    if missing:
        raise InputError(
            f"--input {path}: missing column(s) {', '.join(missing)} (has {', '.join(sorted(names))}); "
            "training needs posting_id, a title and a label_group"
        )
    has_fold = "fold" in names
    cols = ["posting_id", data.label_column] + (["fold"] if has_fold else [])
    ids, labels, folds = [], [], []
    for b in _iter_batches(files, cols, data.read_batch_rows, data.max_rows):
        t = b.to_pydict()
        ids.extend(t["posting_id"])
        labels.extend(t[data.label_column])
        if has_fold:
            folds.extend(t["fold"])
    ids_a = np.asarray(ids, dtype=object)
    labels_a = np.asarray([None if v is None else str(v) for v in labels], dtype=object)
    if len(ids_a) == 0:
        raise InputError(f"--input {path}: no rows")
    bad = int(sum(v is None for v in ids_a)) + int(sum(v is None for v in labels_a))
    if bad:
        raise InputError(f"--input {path}: {bad} null posting_id/{data.label_column} value(s); clean the input first")
    ids_a = ids_a.astype(str).astype(object)
    if len(set(ids_a)) != len(ids_a):
        raise InputError(f"--input {path}: posting_id values are not unique")

    if split.heldout_fold == "none":
        folds_a = np.asarray(folds, dtype=np.int64) if has_fold and all(f is not None for f in folds) else None
        heldout = np.zeros(len(ids_a), dtype=bool)
        how = "no rows held out (split.heldout_fold none: refit on every row)"
    elif has_fold:
        if any(f is None for f in folds):
            raise InputError(f"--input {path}: the fold column has nulls")
        folds_a = np.asarray(folds, dtype=np.int64)
        distinct = np.unique(folds_a)
        if len(distinct) < 2:
            raise InputError(f"--input {path}: the fold column holds one fold only ({distinct[0]}); need >= 2")
        held = int(distinct.max() if split.heldout_fold == "max" else distinct.min())
        heldout = folds_a == held
        how = f"fold {held} held out (folds {', '.join(map(str, distinct))} in the input)"
        crossing = len(set(labels_a[heldout]) & set(labels_a[~heldout]))
        if crossing:
            log.warning("%d label groups have rows on both sides of the fold split", crossing)
    else:
        from sklearn.model_selection import GroupShuffleSplit

        folds_a = None
        if len(set(labels_a)) < 2:
            raise InputError(f"--input {path}: one label group only; cannot hold out groups")
        gss = GroupShuffleSplit(n_splits=1, test_size=split.heldout_fraction, random_state=seed)
        _, test_idx = next(gss.split(np.zeros(len(ids_a)), groups=labels_a))
        heldout = np.zeros(len(ids_a), dtype=bool)
        heldout[test_idx] = True
        how = (
            f"GroupShuffleSplit by {data.label_column}: {split.heldout_fraction:g} of the groups held out (seed {seed})"
        )
    if split.heldout_fold != "none" and (heldout.all() or not heldout.any()):
        raise InputError(f"--input {path}: the held-out split is empty on one side ({how})")
    log.info(
        "training input %s: %d rows, %d groups; %s: %d train rows, %d held-out rows",
        path,
        len(ids_a),
        len(set(labels_a)),
        how,
        int((~heldout).sum()),
        int(heldout.sum()),
    )
    return LabelledIndex(str(path), ids_a, labels_a, folds_a, heldout, how)


def iter_titles(path: str | Path, data: TrainDataConf) -> Iterator[tuple[int, list[str]]]:
    """``(first row number, cleaned titles)`` per record batch, in row order."""
    files = parquet_files(path)
    offset = 0
    for b in _iter_batches(files, [data.title_column], data.read_batch_rows, data.max_rows):
        titles = [clean_title(t, data.max_title_chars) for t in b.column(0).to_pylist()]
        yield offset, titles
        offset += len(titles)
