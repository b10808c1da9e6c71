"""The embeddings cache (lib/listing_dedup/sink/cache.py) on small frames in the session's Spark:
keys, reuse of only what is cached, fingerprints that change with the model, staged writes that a
crash leaves uncommitted, the retention command and its safety against a concurrent run.
(Through the job: tests/reliability, the rerun, crash and concurrent-dates runs.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from listing_dedup.cli import main as cli_main
from listing_dedup.embed.encoder import TextEncoderBuilder
from listing_dedup.embed.image import ImageEncoderBuilder
from listing_dedup.embed.model_dir import write_model_json
from listing_dedup.errors import SinkError
from listing_dedup.sink.cache import (
    EMBEDDINGS,
    USED,
    CachedSignal,
    EmbeddingCache,
    compact,
    content_digest_column,
    fingerprint_column,
    fingerprint_id,
    image_digests,
    need_column,
)
from listing_dedup.sink.delta import DeltaSink, read_table
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[1]
FP = {"signal": "text", "model": "toy", "max_seq_length": 64}


def frame(spark, rows):
    return spark.createDataFrame(rows, "posting_id string, title string")


def marked(run: float):
    """An embed_fn whose vectors say which run computed them: [len(title), run]."""

    def fn(df):
        return df.withColumn("v", F.array(F.length("title").cast("float"), F.lit(run).cast("float")))

    return fn


def expected_key(fp: dict, title: str) -> str:
    """The documented key, computed here with hashlib: sha256(fingerprint id, NUL, sha256(title))[:32],
    the fingerprint id being sha256 of the sorted-key JSON, first 16 hex digits."""
    fp_id = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    digest = hashlib.sha256(title.encode()).hexdigest()
    return hashlib.sha256(f"{fp_id}\0{digest}".encode()).hexdigest()[:32]


def one_run(spark, root, rows, run_date, run: float, fp=FP, commit=True):
    c = EmbeddingCache(str(root), run_id=f"run{run}")
    out = c.embed(
        spark,
        frame(spark, rows),
        signal="text",
        fingerprint=fp,
        digest=content_digest_column(F.col("title")),
        out_col="v",
        embed_fn=marked(run),
        keep=lambda df: df.persist(),
    )
    got = {r.posting_id: list(r.v) for r in out.collect()}
    staged = c.stage(run_date)
    c.check(staged)
    if commit:
        c.commit(staged)
    return c, got, staged


A = [("a1", "rice cooker"), ("a2", "rice cooker"), ("b1", "mouse wireless")]
B = [("a1", "rice cooker"), ("b1", "mouse wireless"), ("c1", "hijab voal"), ("c2", "hijab voal motif")]


def test_reuses_cached_vectors_and_embeds_only_new_content(spark, tmp_path):
    c1, got1, _ = one_run(spark, tmp_path, A, "2026-01-01", 1)
    assert got1 == {"a1": [11.0, 1.0], "a2": [11.0, 1.0], "b1": [14.0, 1.0]}
    assert (c1.uses["text"].keys, c1.uses["text"].reused, c1.uses["text"].computed) == (2, 0, 2)  # 2 distinct titles
    emb = read_table(str(tmp_path), EMBEDDINGS)
    assert sorted(emb["key"]) == sorted(expected_key(FP, t) for t in ("rice cooker", "mouse wireless"))
    assert set(emb["signal"]) == {"text"} and set(emb["run_date"]) == {"2026-01-01"}

    c2, got2, _ = one_run(spark, tmp_path, B, "2026-01-02", 2)
    # the two cached titles keep run 1's vectors; only the two new ones were computed by run 2
    assert got2 == {"a1": [11.0, 1.0], "b1": [14.0, 1.0], "c1": [10.0, 2.0], "c2": [16.0, 2.0]}
    assert (c2.reused, c2.computed) == (2, 2)
    emb = read_table(str(tmp_path), EMBEDDINGS)
    assert len(emb) == 4 and not emb["key"].duplicated().any()
    used = read_table(str(tmp_path), USED)
    assert sorted(used.loc[used["run_date"] == "2026-01-02", "key"]) == sorted(
        expected_key(FP, t) for t in ("rice cooker", "mouse wireless", "hijab voal", "hijab voal motif")
    )

    # a rerun of a date: everything reused, nothing appended, its used keys replaced (not doubled)
    v = DeltaTable(str(tmp_path / EMBEDDINGS)).version()
    c3, got3, staged3 = one_run(spark, tmp_path, B, "2026-01-02", 3)
    assert got3 == got2 and (c3.reused, c3.computed) == (4, 0)
    assert [s.table for s in staged3] == [USED]
    assert DeltaTable(str(tmp_path / EMBEDDINGS)).version() == v
    assert (read_table(str(tmp_path), USED)["run_date"] == "2026-01-02").sum() == 4


def test_a_changed_fingerprint_never_reuses_vectors(spark, tmp_path):
    one_run(spark, tmp_path, A, "2026-01-01", 1)
    c, got, _ = one_run(spark, tmp_path, A, "2026-01-02", 2, fp={**FP, "max_seq_length": 128})
    assert (c.reused, c.computed) == (0, 2)
    assert all(v[1] == 2.0 for v in got.values())


FP_LEX = {"signal": "lexical", "n_features": 1024}


def test_signals_of_one_content_share_one_pass_and_each_computes_only_what_it_lacks(spark, tmp_path):
    """Text and lexical read the same title: ``embed_signals`` looks both up and computes the
    contents either lacks in one ``embed_fn`` pass. A signal's cached vector wins where it has one
    (whatever ``embed_fn`` returns there), and only the vectors a signal lacked are staged."""
    one_run(spark, tmp_path, A, "2026-01-01", 1)  # text vectors of "rice cooker" and "mouse wireless"
    c = EmbeddingCache(str(tmp_path), run_id="run2")

    def both(df):  # text: computed for every row it is given (the cache must keep its own there);
        # lexical: only where asked, as the job's encoders do with a null title
        df = df.withColumn("v", F.array(F.length("title").cast("float"), F.lit(2.0).cast("float")))
        return df.withColumn(
            "w",
            F.when(F.col(need_column("lexical")), F.array(F.length("title").cast("float"), F.lit(20.0).cast("float"))),
        )

    out = c.embed_signals(
        spark,
        frame(spark, B),
        signals=[CachedSignal("text", FP, "v"), CachedSignal("lexical", FP_LEX, "w")],
        digest=content_digest_column(F.col("title")),
        embed_fn=both,
        keep=lambda df: df.persist(),
        content_cols=["title"],
    )
    assert sorted(out.columns) == ["posting_id", "title", "v", "w"]  # no working column of the lookup
    got = {r.posting_id: (list(r.v), list(r.w)) for r in out.collect()}
    assert got == {
        "a1": ([11.0, 1.0], [11.0, 20.0]),  # text from run 1's cache
        "b1": ([14.0, 1.0], [14.0, 20.0]),
        "c1": ([10.0, 2.0], [10.0, 20.0]),
        "c2": ([16.0, 2.0], [16.0, 20.0]),
    }
    assert (c.uses["text"].keys, c.uses["text"].reused, c.uses["text"].computed) == (4, 2, 2)
    assert (c.uses["lexical"].keys, c.uses["lexical"].reused, c.uses["lexical"].computed) == (4, 0, 4)
    staged = c.stage("2026-01-02")
    c.commit(staged)
    emb = read_table(str(tmp_path), EMBEDDINGS)
    new = emb[emb["run_date"] == "2026-01-02"]
    want = {expected_key(FP, t) for t in ("hijab voal", "hijab voal motif")}
    want |= {expected_key(FP_LEX, t) for t in ("rice cooker", "mouse wireless", "hijab voal", "hijab voal motif")}
    assert set(new["key"]) == want and len(new) == 6
    assert sorted(new["signal"]) == ["lexical"] * 4 + ["text"] * 2


def test_uncommitted_run_leaves_the_cache_as_it_was(spark, tmp_path):
    one_run(spark, tmp_path, A, "2026-01-01", 1)
    before = DeltaTable(str(tmp_path / EMBEDDINGS)).version(), DeltaTable(str(tmp_path / USED)).version()
    _, _, staged = one_run(spark, tmp_path, B, "2026-01-02", 2, commit=False)  # crashed before its commits
    assert {s.table for s in staged} == {EMBEDDINGS, USED} and all(s.files for s in staged)
    assert (DeltaTable(str(tmp_path / EMBEDDINGS)).version(), DeltaTable(str(tmp_path / USED)).version()) == before
    c, got, _ = one_run(spark, tmp_path, B, "2026-01-02", 3)  # the rerun computes them itself
    assert (c.reused, c.computed) == (2, 2) and got["c1"] == [10.0, 3.0]


def test_fingerprints_follow_the_model(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "config.json").write_text('{"hidden_size": 32}')
    (st / "model.safetensors").write_bytes(b"\0" * 64)
    b = TextEncoderBuilder(path=str(st), kind="sentence-transformers", max_seq_length=64)
    same = TextEncoderBuilder(path=str(st), kind="sentence-transformers", max_seq_length=64, batch_size=7)
    assert fingerprint_id(b.fingerprint()) == fingerprint_id(same.fingerprint())  # batch size: same vectors
    longer = TextEncoderBuilder(path=str(st), kind="sentence-transformers", max_seq_length=128)
    assert fingerprint_id(longer.fingerprint()) != fingerprint_id(b.fingerprint())
    gpu_half = TextEncoderBuilder(path=str(st), kind="sentence-transformers", device="cuda", fp16=True)
    assert fingerprint_id(gpu_half.fingerprint()) != fingerprint_id(b.fingerprint())
    before = fingerprint_id(b.fingerprint())
    (st / "model.safetensors").write_bytes(b"\1" * 64)  # weights rewritten in place, same name and size
    assert fingerprint_id(b.fingerprint()) != before

    # a fine-tuned model directory: its own files and its base encoder's decide
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    head = {"kind": "linear", "dim": 8}
    meta = {"base_dim": 32, "head_spec": head, "max_seq_length": 48, "mode": "head", "training": {}}
    write_model_json(tuned, base_model=str(st), **meta)
    (tuned / "model.safetensors").write_bytes(b"\2" * 16)
    t = TextEncoderBuilder(path=str(tuned), kind="listing-dedup", max_seq_length=64)
    fp = t.fingerprint()
    assert fp["max_seq_length"] == 48  # the directory's own length wins
    tuned2 = tmp_path / "tuned2"
    shutil.copytree(tuned, tuned2)
    (tuned2 / "model.safetensors").write_bytes(b"\3" * 16)  # another fine-tuning run
    t2 = TextEncoderBuilder(path=str(tuned2), kind="listing-dedup", max_seq_length=64)
    assert fingerprint_id(t2.fingerprint()) != fingerprint_id(fp)
    (st / "model.safetensors").write_bytes(b"\4" * 64)  # its base encoder changed
    assert fingerprint_id(t.fingerprint()) != fingerprint_id(fp)

    w = tmp_path / "w.pth"
    w.write_bytes(b"weights")
    i1 = ImageEncoderBuilder(weights_path=str(w)).fingerprint()
    w.write_bytes(b"other weights")
    assert fingerprint_id(ImageEncoderBuilder(weights_path=str(w)).fingerprint()) != fingerprint_id(i1)


def test_image_digests_hash_the_bytes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"jpeg-a")
    values = pd.Series([b"jpeg-a", "a.jpg", str(tmp_path / "a.jpg"), "missing.jpg", None, b""])
    got = image_digests(values, str(tmp_path)).tolist()
    h = hashlib.sha256(b"jpeg-a").hexdigest()
    assert got == [h, h, h, None, None, None]


def test_compact_drops_vectors_no_recent_date_used_and_keeps_a_concurrent_append(spark, tmp_path, monkeypatch):
    root = str(tmp_path)
    one_run(spark, tmp_path, [("x1", "old only")], "2026-01-01", 1)
    one_run(spark, tmp_path, A, "2026-01-02", 2)
    # a concurrent run (another date) stored "rice cooker" a second time, and used it
    other = EmbeddingCache(root, run_id="other")
    dup = spark.createDataFrame(
        [(expected_key(FP, "rice cooker"), "text", fingerprint_id(FP), [11.0, 9.0], "other")],
        "key string, signal string, fingerprint string, vector array<float>, run_id string",
    )
    other.sink.commit(other.sink.stage(dup, EMBEDDINGS, "2026-01-03"), mode="append")
    one_run(spark, tmp_path, B, "2026-01-04", 4)
    assert len(read_table(root, EMBEDDINGS)) == 1 + 2 + 1 + 2

    # while compaction rewrites the table, a running job appends a new vector
    real_stage, late = DeltaSink.stage, {"done": False}

    def stage(self, df, table, run_date, **kw):
        if table == EMBEDDINGS and not late["done"]:
            late["done"] = True
            new = spark.createDataFrame(
                [(expected_key(FP, "late"), "text", fingerprint_id(FP), [4.0, 5.0], "late")], dup.schema
            )
            real = real_stage(self, new, EMBEDDINGS, "2026-01-05")
            DeltaSink(root).commit(real, mode="append")
        return real_stage(self, df, table, run_date, **kw)

    monkeypatch.setattr(DeltaSink, "stage", stage)
    res = compact(spark, root, keep_runs=2)  # the dates 2026-01-04 and 2026-01-02 used keys
    monkeypatch.undo()
    assert res.dates == ("2026-01-02", "2026-01-04") and res.version is not None
    emb = read_table(root, EMBEDDINGS)
    keys = {expected_key(FP, t) for t in ("rice cooker", "mouse wireless", "hijab voal", "hijab voal motif", "late")}
    assert set(emb["key"]) == keys  # "old only" dropped, the late append kept
    assert not emb["key"].duplicated().any()  # one copy of "rice cooker"
    assert (res.rows_before, res.rows_after) == (6, 4)
    # a run after compaction still reuses what was kept
    c, _, _ = one_run(spark, tmp_path, B, "2026-01-06", 6)
    assert (c.reused, c.computed) == (4, 0)


def test_compact_cache_command(cli_spark, tmp_path, capsys):
    wh = str(tmp_path / "wh")
    assert cli_main(["compact-cache", "--warehouse", wh]) == 2
    assert "no embeddings cache" in capsys.readouterr().err
    one_run(cli_spark, tmp_path / "wh", A, "2026-01-01", 1)
    one_run(cli_spark, tmp_path / "wh", [("z", "zz")], "2026-01-02", 2)
    rc = cli_main(["compact-cache", "--warehouse", wh, "--keep-runs", "1", "--conf", str(REPO / "conf/local.yaml")])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith(f"compacted {wh}: 3 -> 1 vectors (2 dropped), kept the keys of 1 run dates")
    assert read_table(wh, EMBEDDINGS)["key"].tolist() == [expected_key(FP, "zz")]


def test_compact_cache_entry_point_bad_arguments():
    r = subprocess.run(
        [sys.executable, "jobs/compact_cache.py", "--warehouse", "w", "--keep-runs", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: --keep-runs must be >= 1 (see --help)"


def test_vectors_column_roundtrip_keeps_float32(spark, tmp_path):
    rows = [("p1", "kaos polos")]
    c, got, _ = one_run(spark, tmp_path, rows, "2026-01-01", 0.1)
    stored = read_table(str(tmp_path), EMBEDDINGS)["vector"].iloc[0]
    np.testing.assert_array_equal(np.asarray(stored, dtype=np.float32), np.float32([10.0, 0.1]))
    # none of the lookup's working columns (digest, keys, cached vectors, need flags) reaches the table
    assert not [f for f in read_table(str(tmp_path), EMBEDDINGS).columns if f.startswith("_cache")]


def test_lexical_counts_give_the_same_idf_and_vectors_as_the_titles(spark):
    """The lexical signal's cached form (hashed counts, packed) gives bit-identical idf and vectors
    to hashing the titles, so a night that reuses counts scores exactly as a cold one."""
    from listing_dedup.embed.lexical import (
        LexicalParams,
        embed_lexical,
        embed_lexical_counts,
        fit_idf,
        fit_idf_counts,
        hashed_counts,
        lexical_counts,
        pack_counts,
        unpack_counts,
    )

    p = LexicalParams(n_features=2**16, dim=64)
    titles = ["Rice cooker digital Miyako 1.8 liter", "MIYAKO rice cooker 1.8L", "", "hijab voal", "aaa aaa aaa"]
    counts = hashed_counts(titles, p)
    packed = pack_counts(counts)
    assert [len(x) for x in packed] == [2 * n for n in np.diff(counts.tocsr().indptr)]
    back = unpack_counts(packed, p.n_features)
    assert (back != counts.astype(np.float32)).nnz == 0

    df = spark.createDataFrame([(f"p{i}", t) for i, t in enumerate(titles)], "posting_id string, title string")
    idf = fit_idf(df, "title", p)
    with_counts = lexical_counts(df.repartition(2), "title", "c", p).persist()
    np.testing.assert_array_equal(fit_idf_counts(with_counts, "c", p), idf)
    bc = spark.sparkContext.broadcast(idf)
    want = {r.posting_id: np.asarray(r.v, np.float32) for r in embed_lexical(df, "title", "v", p, bc).collect()}
    got = {
        r.posting_id: np.asarray(r.v, np.float32) for r in embed_lexical_counts(with_counts, "c", "v", p, bc).collect()
    }
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with_counts.unpersist()
    # a null title (the cache's "this signal's vector is cached") gets null counts, the others theirs
    some = lexical_counts(df.withColumn("title", F.when(F.col("posting_id") != "p1", F.col("title"))), "title", "c", p)
    by_id = {r.posting_id: r.c for r in some.collect()}
    assert by_id["p1"] is None
    np.testing.assert_array_equal(np.asarray(by_id["p0"], np.float32), packed[0])


def test_fusing_cached_counts_in_one_pass_equals_fusing_the_titles_vectors(spark):
    """With the cache, the job projects the lexical counts inside the fusion's pass
    (``fuse(transforms=...)``); the fused vectors must be the bits a cold run fuses from the
    lexical vectors of the titles (``embed_lexical``), text block included."""
    from listing_dedup.embed.fusion import Layout, fuse
    from listing_dedup.embed.lexical import (
        LexicalParams,
        counts_to_vectors,
        embed_lexical,
        fit_idf,
        lexical_counts,
    )

    p = LexicalParams(n_features=2**16, dim=64)
    titles = ["Rice cooker digital Miyako 1.8 liter", "MIYAKO rice cooker 1.8L", "hijab voal", "aaa aaa aaa", "x"]
    rng = np.random.default_rng(5)
    text = rng.standard_normal((len(titles), 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    rows = [(f"p{i}", t, text[i].tolist()) for i, t in enumerate(titles)]
    df = spark.createDataFrame(rows, "posting_id string, title string, v_text array<float>")
    bc = spark.sparkContext.broadcast(fit_idf(df, "title", p))
    layout = Layout.of({"text": 8, "lexical": p.dim}, {"text": 0.7, "lexical": 0.3})
    cold = fuse(embed_lexical(df, "title", "v_lexical", p, bc), {"text": "v_text", "lexical": "v_lexical"}, layout)
    one_pass = fuse(
        lexical_counts(df.repartition(3), "title", "c", p),
        {"text": "v_text", "lexical": "c"},
        layout,
        transforms={"lexical": counts_to_vectors(p, bc)},
    )
    want = {r.posting_id: np.asarray(r.emb, np.float32) for r in cold.collect()}
    got = {r.posting_id: np.asarray(r.emb, np.float32) for r in one_pass.collect()}
    assert want.keys() == got.keys() == {f"p{i}" for i in range(len(titles))}
    for k in want:
        assert want[k].shape == (8 + p.dim,)
        np.testing.assert_array_equal(got[k], want[k])


def _cache_files(root: Path) -> list[Path]:
    return sorted((root / EMBEDDINGS).rglob("*.parquet"))


def test_an_unreadable_cache_file_is_recomputed_with_a_warning(spark, tmp_path, caplog):
    """Issue 29 row 10: a file of the cache's snapshot that does not decode (bytes overwritten)
    or is gone fails no run: the run recomputes what it held, says so (``read_error``, a
    warning) and reuses what the other files hold."""
    one_run(spark, tmp_path, [("a1", "rice cooker")], "2026-01-01", 1)
    one_run(spark, tmp_path, [("b1", "mouse wireless")], "2026-01-02", 2)
    (first,) = [p for p in _cache_files(tmp_path) if "2026-01-01" in str(p)]
    first.write_bytes(b"PAR1" + b"\x00garbage" * 40 + b"PAR1")
    c, got, _ = one_run(spark, tmp_path, A, "2026-01-03", 3)
    assert got == {"a1": [11.0, 3.0], "a2": [11.0, 3.0], "b1": [14.0, 2.0]}  # b1's file still serves
    assert (c.reused, c.computed) == (1, 1)
    assert c.read_error.startswith(f"the embeddings cache at {tmp_path / EMBEDDINGS} could not be read (")
    assert "recomputed" in c.read_error
    assert any(r.levelname == "WARNING" and "could not be read" in r.getMessage() for r in caplog.records)

    first.unlink()  # a file the log lists is gone
    c, got, _ = one_run(spark, tmp_path, A, "2026-01-04", 4)
    # the recomputed "rice cooker" of run 3 (a file of its own) is reused now
    assert got == {"a1": [11.0, 3.0], "a2": [11.0, 3.0], "b1": [14.0, 2.0]}
    assert (c.reused, c.computed) == (2, 0) and c.read_error


def test_compact_drops_an_unreadable_cache_file(spark, tmp_path):
    one_run(spark, tmp_path, [("a1", "rice cooker")], "2026-01-01", 1)
    one_run(spark, tmp_path, [("b1", "mouse wireless")], "2026-01-02", 2)
    (first,) = [p for p in _cache_files(tmp_path) if "2026-01-01" in str(p)]
    first.write_bytes(b"PAR1" + b"\x00garbage" * 40 + b"PAR1")
    res = compact(spark, str(tmp_path), keep_runs=2)
    assert res.version is not None and res.rows_after == 1  # the readable vector kept
    assert read_table(str(tmp_path), EMBEDDINGS)["key"].tolist() == [expected_key(FP, "mouse wireless")]
    c, got, _ = one_run(spark, tmp_path, A, "2026-01-03", 3)  # the table reads cleanly again
    assert (c.reused, c.computed, c.read_error) == (1, 1, "") and got["a1"] == [11.0, 3.0]


def test_an_unreadable_cache_log_is_an_empty_cache_with_a_warning(spark, tmp_path):
    one_run(spark, tmp_path, A, "2026-01-01", 1)
    for log_file in (tmp_path / EMBEDDINGS / "_delta_log").glob("*.json"):
        log_file.write_text("{not json")
    c, got, staged = one_run(spark, tmp_path, A, "2026-01-02", 2, commit=False)  # its check() passes
    assert got == {"a1": [11.0, 2.0], "a2": [11.0, 2.0], "b1": [14.0, 2.0]}
    assert (c.reused, c.computed) == (0, 2)
    assert c.read_error.startswith(f"the embeddings cache at {tmp_path / EMBEDDINGS} could not be read (")
    with pytest.raises(SinkError, match="cannot open table 'embeddings'"):  # what the job records as NOT cached
        c.commit(staged)


def test_a_readable_cache_has_no_read_error(spark, tmp_path):
    one_run(spark, tmp_path, A, "2026-01-01", 1)
    c, _, _ = one_run(spark, tmp_path, A, "2026-01-02", 2)
    assert (c.reused, c.computed, c.read_error) == (2, 0, "")


def _st_dir(tmp_path: Path) -> Path:
    st = tmp_path / "st"
    st.mkdir()
    (st / "config.json").write_text('{"hidden_size": 32}')
    (st / "model.safetensors").write_bytes(b"\0" * 64)
    return st


def test_fingerprint_holds_the_runtime_used_not_the_device_preference(tmp_path):
    """Issue 29 row 6: ``device: auto`` + ``fp16: true`` is a preference; the key holds the
    precision and device class the vectors are computed with: on this CPU machine float32."""
    st = _st_dir(tmp_path)
    auto = TextEncoderBuilder(path=str(st), kind="sentence-transformers", device="auto", fp16=True)
    cpu = TextEncoderBuilder(path=str(st), kind="sentence-transformers", device="cpu", fp16=False)
    gpu = TextEncoderBuilder(path=str(st), kind="sentence-transformers", device="cuda", fp16=True)
    gpu32 = TextEncoderBuilder(path=str(st), kind="sentence-transformers", device="cuda", fp16=False)
    assert auto.fingerprint()["vectors"] == "cpu-fp32"  # conftest hides GPUs
    # the same vectors (CPU float32) share keys whatever the preference that led to them
    assert fingerprint_id(auto.fingerprint()) == fingerprint_id(cpu.fingerprint())
    ids = {fingerprint_id(b.fingerprint()) for b in (cpu, gpu, gpu32)}
    assert len(ids) == 3  # fp16 GPU, fp32 GPU and fp32 CPU vectors never share keys
    assert fingerprint_id(auto.fingerprint(runtime="cuda-fp16")) == fingerprint_id(gpu.fingerprint())
    img = ImageEncoderBuilder(weights_path=str(st / "model.safetensors"), device="auto", fp16=True)
    assert img.fingerprint()["vectors"] == "cpu-fp32"
    assert fingerprint_id(img.fingerprint()) != fingerprint_id(img.fingerprint(runtime="cuda-fp16"))


def test_fingerprint_holds_the_versions_of_the_libraries_that_compute_the_vectors(tmp_path, monkeypatch):
    from importlib import metadata

    st = _st_dir(tmp_path)
    text = TextEncoderBuilder(path=str(st), kind="sentence-transformers", device="cpu")
    img = ImageEncoderBuilder(weights_path=str(st / "model.safetensors"), device="cpu")
    libs = text.fingerprint()["libraries"]
    assert set(libs) == {"torch", "tokenizers", "transformers", "sentence-transformers"}
    assert libs["torch"] == metadata.version("torch") and libs["transformers"] == metadata.version("transformers")
    ilibs = img.fingerprint()["libraries"]
    assert set(ilibs) == {"torch", "torchvision", "timm", "pillow"}
    assert ilibs["timm"] == metadata.version("timm") and ilibs["pillow"] == metadata.version("pillow")
    before = fingerprint_id(text.fingerprint()), fingerprint_id(img.fingerprint())
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "torch" else real(name))
    after = fingerprint_id(text.fingerprint()), fingerprint_id(img.fingerprint())
    assert after[0] != before[0] and after[1] != before[1]  # another torch: other keys


def test_vectors_are_stored_under_the_runtime_that_computed_them(spark, tmp_path):
    """A mixed cluster: the lookup asks for CPU float32 vectors; an executor that computed some
    on a GPU in fp16 tags them (``fingerprint_column``) and they are stored under the fp16
    fingerprint: a CPU lookup never reuses them, an fp16 lookup does."""
    cpu_fp, gpu_fp = {**FP, "vectors": "cpu-fp32"}, {**FP, "vectors": "cuda-fp16"}

    def mixed(df):  # "mouse wireless" went to a GPU executor
        on_gpu = F.col("title") == "mouse wireless"
        return marked(1)(df).withColumn(
            fingerprint_column("text"),
            F.when(on_gpu, F.lit(fingerprint_id(gpu_fp))).otherwise(F.lit(fingerprint_id(cpu_fp))),
        )

    c = EmbeddingCache(str(tmp_path), run_id="mixed")
    out = c.embed(
        spark,
        frame(spark, A),
        signal="text",
        fingerprint=cpu_fp,
        digest=content_digest_column(F.col("title")),
        out_col="v",
        embed_fn=mixed,
        keep=lambda df: df.persist(),
    )
    assert {r.posting_id: list(r.v) for r in out.collect()} == {"a1": [11.0, 1.0], "a2": [11.0, 1.0], "b1": [14.0, 1.0]}
    assert (c.uses["text"].computed, c.uses["text"].other_runtime) == (2, 1)
    c.commit(c.stage("2026-01-01"))
    emb = read_table(str(tmp_path), EMBEDDINGS).set_index("key")
    assert emb.loc[expected_key(cpu_fp, "rice cooker"), "fingerprint"] == fingerprint_id(cpu_fp)
    assert emb.loc[expected_key(gpu_fp, "mouse wireless"), "fingerprint"] == fingerprint_id(gpu_fp)
    assert len(emb) == 2

    c2, got2, _ = one_run(spark, tmp_path, A, "2026-01-02", 2, fp=cpu_fp)
    assert got2["b1"] == [14.0, 2.0] and got2["a1"] == [11.0, 1.0]  # the fp16 vector is not reused on CPU
    c3, got3, _ = one_run(spark, tmp_path, [("b1", "mouse wireless")], "2026-01-03", 3, fp=gpu_fp)
    assert got3 == {"b1": [14.0, 1.0]} and c3.reused == 1  # an fp16 lookup reuses it
