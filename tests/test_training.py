"""Metric-learning training: config, the fast grid scorer against the reference sweep, the
margin loss, a head that learns what the frozen encoder misses, and the model directory
round trip through the dedup job (tiny models, tiny data)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from listing_dedup.config import TextEmbedConf, load_config, load_train_config
from listing_dedup.embed.encoder import ProjectedEncoder, TextEncoderBuilder, get_encoder, resolve_model_path
from listing_dedup.errors import ConfigError, InputError
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.quality.tuning import exact_neighbours, sweep
from listing_dedup.training.data import read_index
from listing_dedup.training.losses import ArcMarginHead
from listing_dedup.training.trainer import train_embedder, train_head
from listing_dedup.training.validate import grid_scores

TRAIN_CONF = ["conf/train.yaml"]


# ---------------------------------------------------------------------------------------------
# config


def test_train_profile_loads_and_rejects_bad_keys():
    cfg = load_train_config(TRAIN_CONF, ["loss.margin=0.7", "mode=full", "validate.thresholds=[0.5, 0.6]"])
    assert cfg.loss.margin == 0.7 and cfg.mode == "full" and cfg.validate.thresholds == (0.5, 0.6)
    assert cfg.encoder.model == "minilm" and cfg.loss.kind == "arcface"
    with pytest.raises(ConfigError, match="unknown config key 'loss.bogus'"):
        load_train_config(TRAIN_CONF, ["loss.bogus=1"])
    with pytest.raises(ConfigError, match="'loss.kind'"):
        load_train_config(TRAIN_CONF, ["loss.kind=softmax"])
    with pytest.raises(ConfigError, match="'mode'"):
        load_train_config(TRAIN_CONF, ["mode=partial"])
    with pytest.raises(ConfigError, match="'optim.epochs'"):
        load_train_config(TRAIN_CONF, ["optim.epochs=0"])
    # the CPU recipes of docs/training.md stack on the base profile
    full = load_train_config([*TRAIN_CONF, "conf/train_full_cpu.yaml"])
    assert (full.mode, full.head.norm, full.head.hidden_dim, full.loss.init) == ("full", "none", 0, "imprint")
    e5 = load_train_config([*TRAIN_CONF, "conf/train_full_cpu.yaml", "conf/train_full_e5_cpu.yaml"])
    assert (e5.mode, e5.encoder.model, e5.encoder.train_layers, e5.optim.epochs) == (
        "full",
        "data/models/e5_small_st",
        6,
        4,
    )
    # the dedup job's own profile is untouched by the training root
    with pytest.raises(ConfigError, match="unknown config key 'loss'"):
        load_config(["conf/local.yaml"], ["loss.margin=0.5"])


# ---------------------------------------------------------------------------------------------
# the fast grid scorer == the reference sweep (edge rules + row-wise F1)


def test_grid_scores_equal_reference_sweep():
    rng = np.random.default_rng(3)
    n = 300
    labels = [f"g{int(g)}" for g in rng.integers(0, 60, n)]
    # ids whose string order differs from their row order; scores rounded so min2 ties happen
    ids = [f"p{int(v)}" for v in rng.permutation(10_000)[:n]]
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb[:, 0] += 3 * np.array([int(g[1:]) % 7 for g in labels])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    nbrs = exact_neighbours(emb, ids, 10)
    nbrs["score"] = (nbrs["score"] * 20).round() / 20
    truth = pd.DataFrame({"posting_id": ids, "label_group": labels})
    ths, m2s = [0.5, 0.7, 0.85, 0.95], [None, 0.3, 0.6, 0.9]
    ref = sweep(nbrs, ids, truth, ths, m2s)
    got = grid_scores(nbrs, ids, labels, ths, m2s)
    assert len(got) == len(ref) == 12
    key = ["threshold", "min2_threshold"]
    m = ref.fillna(-9).merge(got.fillna(-9), on=key, suffixes=("_ref", ""))
    assert len(m) == len(ref)
    for col in ("f1", "precision", "recall"):
        np.testing.assert_allclose(m[col], m[f"{col}_ref"], atol=1e-12)
    assert m["f1"].std() > 0.01  # the settings really differ


# ---------------------------------------------------------------------------------------------
# a toy frozen encoder: product signal weak, a shared "colour" signal strong


class ToyEncoder:
    """Titles ``p<product> c<colour>``: a weak product direction (dims 0-15) plus a strong
    colour direction (dims 16-31) that many products share. Cosine similarity is dominated by
    colour, so the frozen encoder matches listings of *different* products of one colour."""

    dim = 32

    def _vec(self, kind: int, token: int, scale: float) -> np.ndarray:
        v = np.zeros(self.dim)
        v[kind * 16 : kind * 16 + 16] = np.random.default_rng(1000 * kind + token).normal(size=16) * scale
        return v

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            p, c = (int(w[1:]) for w in t.split())
            out[i] = self._vec(0, p, 1.0) + self._vec(1, c, 3.0)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def toy_catalog(path, n_products=120, per_product=4, n_colours=20, seed=0):
    """Each product listed ``per_product`` times, each time in another colour."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_products):
        for j, c in enumerate(rng.choice(n_colours, per_product, replace=False)):
            rows.append({"posting_id": f"t{p:04d}_{j}", "title": f"p{p} c{int(c)}", "label_group": f"g{p}"})
    df = pd.DataFrame(rows)
    df.to_parquet(path, index=False)
    return df


def nn_accuracy(emb: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose nearest other row (plain numpy cosine) has the same label."""
    s = emb @ emb.T
    np.fill_diagonal(s, -np.inf)
    return float(np.mean(labels[s.argmax(1)] == labels))


def small_cfg(*sets):
    return load_train_config(
        TRAIN_CONF,
        [
            "encoder.threads=1",
            "head.dim=16",
            "head.hidden_dim=64",
            "optim.batch_size=64",
            "validate.inb_thresholds=[0.8]",
            *sets,
        ],
    )


def test_arcface_loss_decreases_on_tiny_labelled_set(tmp_path):
    df = toy_catalog(tmp_path / "toy.parquet", n_products=40)
    cfg = small_cfg("optim.epochs=8", "optim.lr=0.01", "optim.batch_size=16")
    idx = read_index(tmp_path / "toy.parquet", cfg.data, cfg.split, cfg.seed)
    base = ToyEncoder().encode(df["title"].tolist())
    torch.manual_seed(0)
    _, res = train_head(cfg, idx, base, "cpu")
    losses = [e["loss"] for e in res["epochs"]]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0], losses


def test_margin_head_logits():
    head = ArcMarginHead(2, 2, margin=0.5, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[np.cos(0.3), np.sin(0.3)]], dtype=torch.float32)
    logits = head(x, torch.tensor([0]))
    # target: s*cos(theta + m) with theta = 0.3; the other class: s*cos(pi/2 - 0.3), no margin
    np.testing.assert_allclose(logits.detach().numpy(), [[10 * np.cos(0.8), 10 * np.sin(0.3)]], atol=1e-4)
    assert float(head(x, torch.tensor([1])).detach()[0, 0]) == pytest.approx(10 * np.cos(0.3), abs=1e-4)


def test_trained_head_separates_groups_the_frozen_encoder_confuses(tmp_path):
    df = toy_catalog(tmp_path / "toy.parquet")
    out = tmp_path / "model"
    cfg = small_cfg(
        "optim.epochs=15", "optim.lr=0.01", "optim.batch_size=16", "head.hidden_dim=0", "split.heldout_fraction=0.25"
    )
    m = train_embedder(cfg, input_path=str(tmp_path / "toy.parquet"), out_dir=out, base_encoder=ToyEncoder())

    idx = read_index(tmp_path / "toy.parquet", cfg.data, cfg.split, cfg.seed)
    held = idx.heldout_rows()
    assert m["heldout_rows"] == len(held) > 0 and "GroupShuffleSplit" in m["split"]
    assert not set(idx.labels[held]) & set(idx.labels[idx.train_rows()])  # unseen groups
    titles, labels = df["title"].to_numpy()[held].tolist(), df["label_group"].to_numpy()[held]
    frozen = ToyEncoder().encode(titles)
    from listing_dedup.embed.heads import load_head
    from listing_dedup.embed.model_dir import read_model_json

    meta = read_model_json(out)
    trained = ProjectedEncoder(ToyEncoder(), load_head(meta["head"], out / "model.safetensors")).encode(titles)
    assert nn_accuracy(frozen, labels) < 0.4  # the colour wins: neighbours are other products
    assert nn_accuracy(trained, labels) > 0.9  # the head learned to look at the product
    assert m["frozen_encoder"]["f1"] < 0.5 and m["tuned"]["f1"] > 0.8
    assert m["tuned"]["f1"] >= max(e["f1"] for e in m["epochs"]) - 1e-9
    assert [e["epoch"] for e in m["epochs"]] == list(range(1, 16))
    for name in ("model.safetensors", "listing_dedup_model.json", "metrics.json", "training_curve.png", "overlay.yaml"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == m["best_epoch"]


def test_input_errors(tmp_path):
    cfg = small_cfg()
    pd.DataFrame({"posting_id": ["a", "b"], "title": ["x", "y"]}).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(InputError, match="missing column.*label_group"):
        read_index(tmp_path / "nolabel.parquet", cfg.data, cfg.split, cfg.seed)
    pd.DataFrame({"posting_id": ["a", "b"], "title": ["x", "y"], "label_group": ["1", "2"], "fold": [3, 3]}).to_parquet(
        tmp_path / "onefold.parquet"
    )
    with pytest.raises(InputError, match="one fold only"):
        read_index(tmp_path / "onefold.parquet", cfg.data, cfg.split, cfg.seed)
    with pytest.raises(InputError, match="no such file"):
        read_index(tmp_path / "missing.parquet", cfg.data, cfg.split, cfg.seed)


def test_fold_column_decides_the_split(tmp_path):
    df = toy_catalog(tmp_path / "toy.parquet", n_products=10)
    df["fold"] = [int(g[1:]) % 3 + 2 for g in df["label_group"]]
    df.to_parquet(tmp_path / "folds.parquet", index=False)
    cfg = small_cfg("data.read_batch_rows=7")
    idx = read_index(tmp_path / "folds.parquet", cfg.data, cfg.split, cfg.seed)
    assert idx.n == len(df) and list(idx.ids) == df["posting_id"].tolist()
    np.testing.assert_array_equal(idx.heldout, df["fold"].to_numpy() == 4)
    idx = read_index(
        tmp_path / "folds.parquet",
        small_cfg("split.heldout_fold=min").data,
        small_cfg("split.heldout_fold=min").split,
        cfg.seed,
    )
    np.testing.assert_array_equal(idx.heldout, df["fold"].to_numpy() == 2)


def test_cli_bad_config_exit_2(tmp_path):
    """jobs/train_embedder.py in a child process (the entry point's smoke test)."""
    r = subprocess.run(
        [
            sys.executable,
            "jobs/train_embedder.py",
            "--conf",
            *TRAIN_CONF,
            "--input",
            str(tmp_path / "none.parquet"),
            "--out",
            str(tmp_path / "m"),
            "--set",
            "loss.nope=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "unknown config key 'loss.nope'" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_input_exit_2(tmp_path, capsys):
    from listing_dedup.cli import train_embedder as train_cli

    rc = train_cli.main(
        ["--conf", *TRAIN_CONF, "--input", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no such file" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# model directory round trip, through the dedup job


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory):
    """A 1-layer random BERT as a sentence-transformers directory (MiniLM's vocabulary)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_st")
    tok = BertTokenizerFast.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(out / "hf")
    tok.save_pretrained(out / "hf")
    word = models.Transformer(str(out / "hf"), max_seq_length=32)
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(out / "st"))
    return str(out / "st")


@pytest.mark.slow
def test_model_dir_round_trips_and_the_dedup_job_uses_it(spark, tmp_path, tiny_st_dir):
    from listing_dedup.pipeline import run_dedup
    from listing_dedup.sink.delta import read_table

    sample = generate_catalog(40, seed=11, min_size=2, max_size=4)
    listings = tmp_path / "listings.parquet"
    sample.listings.to_parquet(listings, index=False)
    labelled = sample.listings.merge(sample.truth, on="posting_id").drop_duplicates("posting_id")
    labelled.to_parquet(tmp_path / "labelled.parquet", index=False)

    out = tmp_path / "model"
    cfg = small_cfg("optim.epochs=2", f"encoder.model={tiny_st_dir}", "encoder.max_seq_length=32")
    m = train_embedder(cfg, input_path=str(tmp_path / "labelled.parquet"), out_dir=out)
    meta = json.loads((out / "listing_dedup_model.json").read_text())
    assert meta["base_model"] == tiny_st_dir and meta["base_dim"] == 32 and meta["dim"] == 16
    # a rerun reuses the cached base embeddings
    assert (out / "cache" / "base_embeddings.npy").is_file()

    # round trip: the embed stage's builder loads the directory and gives head(base(x)), normalised
    builder = TextEncoderBuilder.from_conf(TextEmbedConf(model=str(out)))
    assert builder.kind == "listing-dedup"
    enc = get_encoder(builder)
    titles = labelled["title"].tolist()[:10]
    v = enc.encode(titles)
    assert v.shape == (10, 16) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    base = np.load(out / "cache" / "base_embeddings.npy")[:10]
    from listing_dedup.embed.heads import load_head

    with torch.no_grad():
        expected = load_head(meta["head"], out / "model.safetensors")(torch.from_numpy(base)).numpy()
    np.testing.assert_allclose(v, expected, atol=1e-5)

    # the dedup job with the overlay embeds with the model: its match scores are our cosines
    overlay = out / "overlay.yaml"
    assert m["overlay"]["embed"]["text"]["model"] == str(out.resolve())
    job_cfg = load_config(
        ["conf/local.yaml", str(overlay)],
        [
            "inb.thresholds=[]",
            "input.partitions=2",
            "index.n_shards=2",
            "embed.lexical.enabled=false",  # text signal only: the match scores are the model's cosines
            "phash.enabled=false",
            "match.threshold=0.5",
            "match.min2=false",
            "match.min2_threshold=0.5",
        ],
    )
    assert job_cfg.embed.text.model == str(out.resolve())
    wh = str(tmp_path / "wh")
    s = run_dedup(spark=spark, cfg=job_cfg, input_path=str(listings), run_date="2026-03-03", warehouse=wh)
    assert s.rows_kept > 0 and s.rows_embedded == s.rows_kept
    matches = read_table(wh, "matches", "2026-03-03").set_index("posting_id")
    kept = sample.listings.dropna(subset=["posting_id"]).drop_duplicates("posting_id").set_index("posting_id")
    pairs = [(a, b, sc) for a, row in matches.iterrows() for b, sc in zip(row["match_ids"], row["scores"])][:20]
    assert pairs, "the job found no matches"
    from listing_dedup.ingest.titles import clean_title

    for a, b, sc in pairs:
        va, vb = enc.encode([clean_title(kept.loc[a, "title"]), clean_title(kept.loc[b, "title"])])
        assert abs(float(va @ vb) - float(sc)) < 1e-4
    assert json.loads(read_table(wh, "runs")["config_json"].iloc[0])["embed"]["text"]["model"] == str(out.resolve())


@pytest.mark.slow
def test_full_mode_fine_tunes_the_encoder_and_round_trips(tmp_path, tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    sample = generate_catalog(30, seed=5, min_size=2, max_size=3, with_bad_rows=False)
    labelled = sample.listings.merge(sample.truth, on="posting_id")
    labelled.to_parquet(tmp_path / "labelled.parquet", index=False)
    out = tmp_path / "full"
    cfg = small_cfg(
        "mode=full",
        "optim.epochs=2",
        "optim.encoder_lr=0.001",
        f"encoder.model={tiny_st_dir}",
        "encoder.max_seq_length=32",
        "data.read_batch_rows=16",
        "head.norm=none",
        "loss.init=imprint",
    )
    m = train_embedder(cfg, input_path=str(tmp_path / "labelled.parquet"), out_dir=out)
    assert m["mode"] == "full" and len(m["epochs"]) == 2
    assert 0.0 < m["frozen_encoder"]["f1"] <= 1.0  # the pretrained encoder is scored on the held-out rows
    meta = json.loads((out / "listing_dedup_model.json").read_text())
    assert meta["base_model"] == "encoder" and (out / "encoder").is_dir()

    titles = labelled["title"].tolist()[:6]
    before = SentenceTransformer(tiny_st_dir, device="cpu").encode(titles, normalize_embeddings=True)
    after = SentenceTransformer(str(out / "encoder"), device="cpu").encode(titles, normalize_embeddings=True)
    assert np.abs(after - before).max() > 1e-3  # the encoder weights were trained

    enc = get_encoder(TextEncoderBuilder.from_conf(TextEmbedConf(model=str(out))))
    from listing_dedup.embed.heads import load_head

    with torch.no_grad():
        expected = load_head(meta["head"], out / "model.safetensors")(torch.from_numpy(after)).numpy()
    np.testing.assert_allclose(enc.encode(titles), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# mode full helpers: layer freezing, imprinted class weights, length-sorted batches


def test_freeze_lower_layers_trains_only_the_top_layers():
    from listing_dedup.training.trainer import freeze_lower_layers
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    )
    n = freeze_lower_layers(bert, 1)
    trainable = {name for name, p in bert.named_parameters() if p.requires_grad}
    assert n == len(trainable) and trainable
    assert all(".layer.2." in name or name.startswith("pooler.") for name in trainable)
    assert any(".layer.2." in name for name in trainable)
    # a step moves the top layer only
    before = {name: p.detach().clone() for name, p in bert.named_parameters()}
    opt = torch.optim.SGD([p for p in bert.parameters() if p.requires_grad], lr=0.1)
    out = bert(torch.tensor([[1, 2, 3, 4]])).last_hidden_state
    (out * torch.randn(out.shape)).sum().backward()  # (a plain sum after LayerNorm has no gradient)
    opt.step()
    for name, p in bert.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == (".layer.2." in name), name

    assert freeze_lower_layers(bert, 0) == len(list(bert.parameters()))  # 0 = leave all as they are
    with pytest.raises(ConfigError, match="3 layers"):
        freeze_lower_layers(bert, 4)
    with pytest.raises(ConfigError, match="no numbered"):
        freeze_lower_layers(torch.nn.Linear(2, 2), 1)


def test_imprint_sets_class_weights_to_normalised_class_means():
    from listing_dedup.training.trainer import imprint

    margin = ArcMarginHead(2, 3)
    emb = np.array([[1, 0], [0, 1], [3, 0], [0, 2], [0, 5]], dtype=np.float32)
    codes = np.array([0, 0, 1, 1, 1])  # class 2 has no rows: keeps its random weight
    w2 = margin.weight.detach()[2].clone()
    imprint(margin, emb, codes)
    w = margin.weight.detach().numpy()
    np.testing.assert_allclose(w[0], [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(w[1], [5**-0.5, 2 * 5**-0.5], atol=1e-6)  # rows count equally
    assert torch.equal(margin.weight.detach()[2], w2)


def test_length_batches_cover_every_row_once_with_similar_lengths():
    from listing_dedup.training.trainer import encode_by_length, length_batches

    rng = np.random.default_rng(0)
    titles = ["x" * int(n) for n in rng.integers(1, 200, size=1000)]
    labels = list(range(1000))
    batches = list(length_batches(titles, labels, rng.permutation(1000), 10, np.random.default_rng(1)))
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == labels  # each row once, labels stay with their titles
    for ts, y in batches:
        assert [len(titles[j]) for j in y] == [len(t) for t in ts]
    # within a window of 16 batches the titles are sorted, so a batch spans a narrow length range
    spread = np.mean([max(map(len, ts)) - min(map(len, ts)) for ts, _ in batches])
    assert spread < 30  # a random batch of 10 spans ~160 characters
    # encode_by_length returns rows in the input order
    out = encode_by_length(titles, 7, lambda b: np.array([[len(t)] for t in b], dtype=np.float32))
    np.testing.assert_array_equal(out[:, 0], [len(t) for t in titles])


def test_head_without_batchnorm_round_trips_and_old_specs_mean_batchnorm(tmp_path):
    from listing_dedup.embed.heads import ProjectionHead, load_head, save_head

    torch.manual_seed(0)
    head = ProjectionHead(8, 4, 16, 0.0, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
    x = torch.randn(5, 8)
    head.train()
    y_train = head(x)
    head.eval()
    np.testing.assert_allclose(head(x).detach().numpy(), y_train.detach().numpy(), atol=1e-6)  # no train/eval gap
    save_head(head, tmp_path / "h.safetensors")
    back = load_head(head.spec(), tmp_path / "h.safetensors")
    assert back.spec()["norm"] == "none"
    np.testing.assert_allclose(back(x).detach().numpy(), head(x).detach().numpy(), atol=1e-6)

    old_spec = {"in_dim": 8, "dim": 4, "hidden_dim": 0, "dropout": 0.0}  # written before head.norm existed
    assert ProjectionHead.from_spec(old_spec).norm == "batch"
    with pytest.raises(ConfigError, match="head.norm"):
        small_cfg("head.norm=layer")


def test_refit_without_held_out_rows_keeps_the_last_epoch(tmp_path, tiny_st_dir):
    sample = generate_catalog(30, seed=5, min_size=2, max_size=3, with_bad_rows=False)
    labelled = sample.listings.merge(sample.truth, on="posting_id").assign(fold=lambda d: d.index % 2)
    labelled.to_parquet(tmp_path / "labelled.parquet", index=False)
    idx = read_index(tmp_path / "labelled.parquet", small_cfg().data, small_cfg("split.heldout_fold=none").split, 0)
    assert not idx.heldout.any() and "refit" in idx.split
    cfg = small_cfg(
        "split.heldout_fold=none",
        "mode=full",
        "optim.epochs=2",
        f"encoder.model={tiny_st_dir}",
        "encoder.max_seq_length=32",
        "head.norm=none",
    )
    out = tmp_path / "refit"
    m = train_embedder(cfg, input_path=str(tmp_path / "labelled.parquet"), out_dir=out)
    assert m["heldout_rows"] == 0 and m["train_rows"] == len(labelled)
    assert m["best_epoch"] == 2 and m["tuned"] is None  # nothing to score: the last epoch, no thresholds
    assert all(np.isnan(e["f1"]) for e in m["epochs"]) and np.isnan(m["frozen_encoder"]["f1"])
    import yaml

    assert yaml.safe_load((out / "overlay.yaml").read_text()) == {"embed": {"text": {"model": str(out.resolve())}}}
    assert (out / "encoder").is_dir() and (out / "training_curve.png").is_file()
