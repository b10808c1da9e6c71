"""The frames the stages hand each other: directed pairs ``src, dst, score`` (neighbour lists,
edges) and pHash pairs (``+ bits``). One definition each, pandas and Spark; and
:func:`cut_lineage`, which every stage uses to materialise a frame and drop its plan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

PAIR_SCHEMA = "src string, dst string, score float"  # Spark DDL of a neighbour/edge frame


def empty_pairs(*, bits: bool = False) -> pd.DataFrame:
    """An empty ``src, dst[, bits], score`` frame with the dtypes of a full one."""
    cols = {"src": pd.Series([], dtype=object), "dst": pd.Series([], dtype=object)}
    if bits:
        cols["bits"] = pd.Series([], dtype=np.int32)
    cols["score"] = pd.Series([], dtype=np.float32)
    return pd.DataFrame(cols)


def empty_pairs_spark(spark):
    """An empty Spark frame of :data:`PAIR_SCHEMA`."""
    return spark.createDataFrame([], PAIR_SCHEMA)


def _cut_lineage(df: Any, reliable: bool) -> Any:
    """Materialise ``df`` and drop its lineage (reliable checkpoint when a directory is set)."""
    return df.checkpoint(eager=True) if reliable else df.localCheckpoint(eager=True)


def cut_lineage(df: Any) -> Any:
    """Materialise ``df`` and drop its lineage (reliably when the SparkContext has a checkpoint
    directory, else ``localCheckpoint``): later stages then plan against a short tree."""
    return _cut_lineage(df, _has_checkpoint_dir(df))


def _has_checkpoint_dir(df: Any) -> bool:
    try:
        return bool(df.sparkSession.sparkContext.getCheckpointDir())
    except (AttributeError, NotImplementedError):  # Spark Connect: no SparkContext
        return False
