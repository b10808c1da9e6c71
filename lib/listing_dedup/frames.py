"""The frames the stages hand each other: directed pairs ``src, dst, score`` (neighbour lists,
edges) and pHash pairs (``+ bits``). One definition each, pandas and Spark."""

from __future__ import annotations

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
