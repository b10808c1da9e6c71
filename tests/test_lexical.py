import numpy as np
import pandas as pd
import pytest
from listing_dedup.embed.lexical import (
    LexicalParams,
    document_frequencies,
    embed_lexical,
    fit_idf,
    hashed_counts,
    idf_vector,
    lexical_vectors,
)
from listing_dedup.ingest.titles import lexical_form
from sklearn.feature_extraction.text import TfidfVectorizer

TITLES = [
    "Paper Bag Victoria Secret",
    "PAPERBAG VS ORIGINAL",
    "Kaos Polos Cotton Combed 30s",
    "kaos polos cotton combed 30S hitam",
    "Susu UHT Ultra Milk 1 Liter",
    "",
]


def test_document_frequencies_count_rows_not_occurrences():
    p = LexicalParams(analyzer="word", ngram_min=1, ngram_max=1, n_features=2**12)
    counts = hashed_counts(["a a a b", "a c", "c"], p)
    feats, df = document_frequencies(counts)
    by_feat = dict(zip(feats.tolist(), df.tolist(), strict=True))
    # exact counts per token (hash collisions are impossible to rule out in general, not here)
    h = p.vectorizer().transform(["a", "b", "c"]).indices
    assert [by_feat[int(i)] for i in h] == [2, 1, 2]


def test_unprojected_tfidf_equals_scikit_learn():
    """Hashing + our idf + sublinear tf + l2 gives the same cosines as TfidfVectorizer
    (modulo hash collisions, none at 2^20 for these few n-grams)."""
    p = LexicalParams(n_features=2**20)
    counts = hashed_counts(TITLES, p)
    feats, df = document_frequencies(counts)
    idf = idf_vector(feats, df, len(TITLES), p.n_features)
    x = counts.astype(np.float64)
    x.data = np.log(x.data) + 1
    x = x.multiply(idf[None, :]).tocsr()
    n = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    ours = (x.multiply(1 / np.maximum(n, 1e-12)[:, None]) @ x.multiply(1 / np.maximum(n, 1e-12)[:, None]).T).toarray()
    ref_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, lowercase=False)
    ref = ref_vec.fit_transform([lexical_form(t) for t in TITLES])
    np.testing.assert_allclose(ours, (ref @ ref.T).toarray(), atol=1e-6)


def test_projected_vectors_keep_cosines_and_order():
    p = LexicalParams()
    counts = hashed_counts(TITLES, p)
    idf = idf_vector(*document_frequencies(counts), len(TITLES), p.n_features)
    v = lexical_vectors(TITLES, idf, p)
    assert v.shape == (len(TITLES), 1024) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:5], axis=1), 1.0, atol=1e-5)
    assert not v[5].any()  # empty title -> zero vector, never NaN
    sims = v @ v.T
    # the two "kaos polos" titles are each other's nearest neighbour, far above the rest
    assert sims[2, 3] > 0.7
    assert sims[2, 3] > max(sims[2, [0, 1, 4]]) + 0.4
    # deterministic: a fresh call (projection rebuilt from the seed) gives the same vectors
    np.testing.assert_array_equal(v, lexical_vectors(TITLES, idf, p))


@pytest.mark.parametrize("parts", [1, 3])
def test_spark_idf_and_vectors_equal_single_machine(spark, parts):
    p = LexicalParams(dim=256)
    df = spark.createDataFrame(pd.DataFrame({"posting_id": [str(i) for i in range(len(TITLES))], "title": TITLES}))
    df = df.repartition(parts)
    idf = fit_idf(df, "title", p)
    local = idf_vector(*document_frequencies(hashed_counts(TITLES, p)), len(TITLES), p.n_features)
    np.testing.assert_allclose(idf, local, rtol=1e-6)
    out = embed_lexical(df, "title", "lex", p, spark.sparkContext.broadcast(idf)).toPandas()
    out = out.sort_values("posting_id", key=lambda s: s.astype(int))
    np.testing.assert_allclose(np.stack(out["lex"].to_numpy()), lexical_vectors(TITLES, local, p), atol=1e-6)


def test_blockwise_projection_gives_the_bits_of_one_product(monkeypatch):
    """vectors_from_counts projects and normalises in row blocks (small temporaries); the floats
    must be those of the plain formula over the whole batch: tf-idf rows L2-normalised, one sparse
    product with the projection, rows L2-normalised (written out here)."""
    import listing_dedup.embed.lexical as lex

    p = LexicalParams(n_features=2**16, dim=64)
    titles = [f"{t} item{i}" for i in range(7) for t in TITLES]
    counts = hashed_counts(titles, p)
    from listing_dedup.embed.lexical import projection_matrix, vectors_from_counts

    x = counts.tocsr().astype(np.float32)
    x.sum_duplicates()
    x.sort_indices()
    idf = np.random.default_rng(0).uniform(1, 3, p.n_features).astype(np.float32)
    x.data = np.log(x.data) + 1.0
    x = x.multiply(idf[np.newaxis, :]).tocsr()
    x = x.multiply(1.0 / np.maximum(np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()), 1e-12)[:, None]).tocsr()
    z = (x @ projection_matrix(p.n_features, p.dim, p.seed)).toarray().astype(np.float32)
    want = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    monkeypatch.setattr(lex, "_PROJECT_ROWS", 5)  # blocks of 5 rows, the last one short
    got = vectors_from_counts(counts, idf, p)
    assert got.dtype == np.float32 and got.shape == (len(titles), p.dim)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)  # every title has n-grams
