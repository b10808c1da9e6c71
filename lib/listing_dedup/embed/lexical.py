"""The lexical signal: TF-IDF over character n-grams, fitted on the run's catalog, as a
dense vector that the same FAISS search as the neural embeddings can use.

    title -> lexical_form (lower case, no punctuation)
          -> hashed char n-gram counts      (HashingVectorizer: stateless, no vocabulary)
          -> sublinear tf * idf             (idf from document frequencies of THIS catalog)
          -> L2 normalise -> sparse random projection to ``dim`` -> L2 normalise

Why this shape: a vocabulary would have to be built on one machine; feature hashing needs
none, so every executor vectorises its own rows. Document frequencies are the one
catalog-wide statistic: each partition counts its non-zero features, Spark sums them, the
driver turns them into an idf vector (``n_features`` floats, 4 MB for 2^20) that is
broadcast. The sparse random projection (Achlioptas / Li et al., a fixed seeded matrix
rebuilt identically on every worker) keeps cosines within about ``1/sqrt(dim)``; on fold 1
of the Shopee data the 1024-d projection scores F1 0.789 against 0.791 for the exact sparse
TF-IDF cosine (docs/quality.md), and no n x n matrix is ever formed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from listing_dedup.faults import maybe_fail_once
from listing_dedup.ingest.titles import lexical_form


@dataclass(frozen=True)
class LexicalParams:
    """Everything that defines the vector space (so two runs with equal params and equal idf
    give equal vectors)."""

    analyzer: str = "char_wb"  # char_wb | char | word
    ngram_min: int = 2
    ngram_max: int = 4
    n_features: int = 2**20
    dim: int = 1024
    seed: int = 0
    sublinear_tf: bool = True

    def counts_fingerprint(self) -> dict:
        """What decides the hashed counts (the lexical signal's cached form, embeddings cache):
        the analyzer, n-gram range, hashing space, the title's lexical form and the hasher's
        library version. Not the idf, dim or seed: they apply to the counts each run."""
        import sklearn

        return {
            "signal": "lexical_counts",
            "code": 1,
            "analyzer": self.analyzer,
            "ngram": [self.ngram_min, self.ngram_max],
            "n_features": self.n_features,
            "sklearn": sklearn.__version__,
        }

    def vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        kwargs = {"token_pattern": r"(?u)\b\w+\b"} if self.analyzer == "word" else {}
        return HashingVectorizer(
            analyzer=self.analyzer,
            ngram_range=(self.ngram_min, self.ngram_max),
            n_features=self.n_features,
            alternate_sign=False,
            norm=None,
            lowercase=False,  # lexical_form already lower-cased
            **kwargs,
        )


def hashed_counts(titles: pd.Series | list, params: LexicalParams):
    """CSR matrix (n, n_features) of raw n-gram counts of each title's lexical form."""
    forms = [lexical_form(t) if isinstance(t, str) else "" for t in titles]
    return params.vectorizer().transform(forms)


def document_frequencies(counts) -> tuple[np.ndarray, np.ndarray]:
    """(feature indices, number of rows holding each) over the rows of ``counts``."""
    csr = counts.tocsr()
    cols = csr.indices
    if cols.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # each (row, feature) appears once in CSR, so counting column occurrences = document frequency
    feats, df = np.unique(cols, return_counts=True)
    return feats.astype(np.int64), df.astype(np.int64)


def idf_vector(features: np.ndarray, df: np.ndarray, n_docs: int, n_features: int) -> np.ndarray:
    """Smoothed idf as scikit-learn computes it: ln((1 + n) / (1 + df)) + 1. Features never
    seen get the idf of df = 0 (they cannot occur in this catalog's rows anyway)."""
    out = np.full(n_features, math.log((1 + n_docs) / 1) + 1.0, dtype=np.float32)
    out[features] = (np.log((1.0 + n_docs) / (1.0 + df.astype(np.float64))) + 1.0).astype(np.float32)
    return out


def _build_projection(n_features: int, dim: int, seed: int):
    from sklearn.random_projection import SparseRandomProjection

    rp = SparseRandomProjection(n_components=dim, random_state=seed, dense_output=True)
    rp.fit(np.zeros((1, n_features), dtype=np.float32))  # only the shape is used
    return rp.components_.T.tocsc().astype(np.float32)


def _projection_file(n_features: int, dim: int, seed: int) -> str:
    import os
    import tempfile

    import sklearn

    root = os.environ.get("LISTING_DEDUP_LOCAL_CACHE") or os.path.join(tempfile.gettempdir(), "listing_dedup")
    versions = f"sklearn{sklearn.__version__}_numpy{np.__version__}"
    return os.path.join(root, f"projection_{n_features}_{dim}_{seed}_{versions}.npz")


@functools.lru_cache(maxsize=4)
def projection_matrix(n_features: int, dim: int, seed: int):
    """The fixed sparse random projection (CSC, n_features x dim), same on every worker.

    Building it takes seconds (scikit-learn draws 2^20 x 1024 at density 1/1024), so each machine
    keeps the built matrix in a file (``$LISTING_DEDUP_LOCAL_CACHE`` or the temp folder, named by
    the parameters and the scikit-learn and numpy versions) that later processes load in milliseconds; the file
    holds exactly the matrix built (a worker that cannot read or write it builds its own)."""
    import os

    import scipy.sparse as sp

    path = _projection_file(n_features, dim, seed)
    try:
        with np.load(path) as z:
            return sp.csc_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    except (OSError, KeyError, ValueError):
        pass
    m = _build_projection(n_features, dim, seed)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.array(m.shape))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    except OSError:
        pass
    return m


def lexical_vectors(titles: pd.Series | list, idf: np.ndarray, params: LexicalParams) -> np.ndarray:
    """float32 (n, dim), rows L2-normalised (a title with no n-gram gives a zero row)."""
    return vectors_from_counts(hashed_counts(titles, params), idf, params)


def pack_counts(counts) -> list[np.ndarray]:
    """Each row of a CSR count matrix as one float32 array: its feature indices, then its counts
    (indices < 2^24 and integer counts are exact in float32): what the embeddings cache stores
    for the lexical signal."""
    csr = _canonical(counts)
    out = []
    for i in range(csr.shape[0]):
        a, b = csr.indptr[i], csr.indptr[i + 1]
        out.append(np.concatenate([csr.indices[a:b].astype(np.float32), csr.data[a:b].astype(np.float32)]))
    return out


def unpack_counts(packed, n_features: int):
    """The CSR count matrix (float32) of :func:`pack_counts`' arrays (None: an empty row)."""
    import scipy.sparse as sp

    rows = [np.asarray(p, dtype=np.float32) if p is not None else np.zeros(0, np.float32) for p in packed]
    lengths = np.array([len(r) // 2 for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([r[: len(r) // 2] for r in rows]) if rows else np.zeros(0, np.float32)
    data = np.concatenate([r[len(r) // 2 :] for r in rows]) if rows else np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(len(rows), n_features))


def _canonical(counts):
    """float32 CSR, duplicates summed and indices sorted: one form, whichever way the counts came."""
    x = counts.tocsr().astype(np.float32)
    x.sum_duplicates()
    x.sort_indices()
    return x


def vectors_from_counts(counts, idf: np.ndarray, params: LexicalParams) -> np.ndarray:
    """:func:`lexical_vectors` from the hashed counts (fresh or from the cache: the same floats)."""
    x = _canonical(counts)
    if params.sublinear_tf and x.nnz:
        x.data = np.log(x.data) + 1.0
    x.data *= idf[x.indices]  # the idf of each stored entry (no 2^20-wide broadcast)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = x.multiply(1.0 / np.maximum(norms, 1e-12)[:, None]).tocsr()
    proj = projection_matrix(params.n_features, params.dim, params.seed)
    z = np.empty((x.shape[0], params.dim), dtype=np.float32)
    # projected and normalised in row blocks: the same floats as one product over the batch, but
    # the temporaries stay small (on 31.8k titles: 0.5 s against 2.7 s, tests/test_lexical.py)
    for a in range(0, x.shape[0], _PROJECT_ROWS):
        block = (x[a : a + _PROJECT_ROWS] @ proj).toarray()
        norms = np.sqrt(np.add.reduce(block * block, axis=1, keepdims=True))  # np.linalg.norm's floats
        np.divide(block, np.maximum(norms, 1e-12), out=z[a : a + _PROJECT_ROWS])
    return z


_PROJECT_ROWS = 4096


# --------------------------------------------------------------------------------------
# Spark layer


def _fit_idf(df, col: str, to_counts, params: LexicalParams) -> np.ndarray:
    """Document frequencies of ``to_counts(column batch)`` (a CSR matrix a batch) over the whole
    catalog, summed by Spark; returns the idf vector."""
    from pyspark.sql import functions as F

    def _partition_df(batches):
        for pdf in batches:
            feats, counts = document_frequencies(to_counts(pdf[col]))
            yield pd.DataFrame({"feature": feats, "df": counts, "rows": 0}).astype("int64")
            yield pd.DataFrame({"feature": [-1], "df": [0], "rows": [len(pdf)]}).astype("int64")

    agg = (
        df.select(col)
        .mapInPandas(_partition_df, "feature long, df long, rows long")
        .groupBy("feature")
        .agg(F.sum("df").alias("df"), F.sum("rows").alias("rows"))
        .toPandas()
    )
    n_docs = int(agg.loc[agg["feature"] == -1, "rows"].sum())
    real = agg[agg["feature"] >= 0]
    return idf_vector(real["feature"].to_numpy(), real["df"].to_numpy(), n_docs, params.n_features)


def fit_idf(df, title_col: str, params: LexicalParams) -> np.ndarray:
    """Document frequencies of the whole catalog, summed by Spark; returns the idf vector."""
    return _fit_idf(df, title_col, lambda titles: hashed_counts(titles, params), params)


def lexical_counts(df, title_col: str, out_col: str, params: LexicalParams, *, fail_stage: str = ""):
    """Add ``out_col`` (array<float>): each title's hashed n-gram counts as :func:`pack_counts`
    packs them (the lexical signal's cached form: no idf, so any night's catalog can use them);
    null where the title is null."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def _counts(titles: pd.Series) -> pd.Series:
        maybe_fail_once("embed", fail_stage)
        present = titles.notna().to_numpy()
        packed = iter(pack_counts(hashed_counts(titles[present], params)) if present.any() else [])
        return pd.Series([next(packed) if p else None for p in present], index=titles.index, dtype=object)

    return df.withColumn(out_col, _counts(F.col(title_col)))


def fit_idf_counts(df, counts_col: str, params: LexicalParams) -> np.ndarray:
    """:func:`fit_idf` over packed counts (:func:`lexical_counts`): the same idf, no hashing."""
    return _fit_idf(df, counts_col, lambda packed: unpack_counts(packed, params.n_features), params)


def counts_to_vectors(params: LexicalParams, idf_broadcast, *, fail_stage: str = ""):
    """A function (run on the executors) from a batch of packed counts to the lexical vectors
    (float32, one row each):
    what :func:`embed_lexical_counts` applies, for a caller that applies it inside its own pass
    (the fusion, ``embed.fusion.fuse(transforms=...)``). Rows are null-free (every row has a title)."""

    def to_vectors(packed: pd.Series) -> np.ndarray:
        maybe_fail_once("embed", fail_stage)
        return vectors_from_counts(unpack_counts(packed, params.n_features), idf_broadcast.value, params)

    return to_vectors


def embed_lexical_counts(
    df, counts_col: str, out_col: str, params: LexicalParams, idf_broadcast, *, fail_stage: str = ""
):
    """:func:`embed_lexical` from packed counts: the same vectors, no hashing."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    to_vectors = counts_to_vectors(params, idf_broadcast, fail_stage=fail_stage)

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def _vec(packed: pd.Series) -> pd.Series:
        return pd.Series(list(to_vectors(packed)), index=packed.index)

    return df.withColumn(out_col, _vec(F.col(counts_col)))


def embed_lexical(df, title_col: str, out_col: str, params: LexicalParams, idf_broadcast, *, fail_stage: str = ""):
    """Add ``out_col`` (array<float>, ``params.dim`` long) computed on executors (``fail_stage``:
    ``testing.fail_once_stage``; this is part of the embed stage)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def _vec(titles: pd.Series) -> pd.Series:
        maybe_fail_once("embed", fail_stage)
        v = lexical_vectors(titles, idf_broadcast.value, params)
        return pd.Series(list(v))

    return df.withColumn(out_col, _vec(F.col(title_col)))
