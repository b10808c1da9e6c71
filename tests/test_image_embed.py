"""Image embedder: packaged weights mapped into timm, decoding, real images, the Spark UDF."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from listing_dedup.embed.image import (
    DIM,
    ImageEncoderBuilder,
    embed_images,
    encode_values,
    load_lite0_weights,
    map_state_dict,
    resolve_weights_path,
)
from listing_dedup.errors import ModelError
from listing_dedup.ingest.images import load_image
from PIL import Image, ImageOps

# Logits of the package's own model class, efficientnet_lite_pytorch 0.1.0
# (EfficientNet.from_pretrained('efficientnet-lite0', weights_path=<packaged .pth>), eval mode,
# CPU float32) on the fixed input of _fixed_input(); indices 885, 398, 906, 392, 860 are its top 5.
REFERENCE_LOGITS = {
    0: 0.47232,
    1: 2.43261,
    100: -0.99307,
    500: -1.60488,
    999: -2.50439,
    885: 6.25399,
    398: 5.64464,
    906: 5.18514,
    392: 4.57707,
    860: 4.29579,
}
REFERENCE_LOGIT_SUM = -72.2874
REFERENCE_POOLED_NORM = 18.82884  # L2 norm of the 1280-d pooled features of that input


def _fixed_input() -> torch.Tensor:
    h, w = np.meshgrid(np.arange(224), np.arange(224), indexing="ij")
    x = np.stack([np.sin(h * 0.05 + c) * np.cos(w * 0.031 * (c + 1)) for c in range(3)]).astype(np.float32)
    return torch.from_numpy(x)[None]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_lite0_weights(resolve_weights_path("lite0"))


@pytest.fixture(scope="module")
def encoder():
    return ImageEncoderBuilder(device="cpu", batch_size=8)()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _synthetic(seed: int, size=(160, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


# --------------------------------------------------------------------------------------
# weights


def test_mapped_weights_reproduce_package_reference_logits(model):
    with torch.no_grad():
        logits = model(_fixed_input())[0]
        pooled = model.forward_head(model.forward_features(_fixed_input()), pre_logits=True)[0]
    assert logits.shape == (1000,) and pooled.shape == (DIM,)
    got = {i: float(logits[i]) for i in REFERENCE_LOGITS}
    assert got == pytest.approx(REFERENCE_LOGITS, abs=2e-3)
    assert torch.topk(logits, 5).indices.tolist() == [885, 398, 906, 392, 860]
    assert float(logits.sum()) == pytest.approx(REFERENCE_LOGIT_SUM, abs=0.05)
    assert float(pooled.norm()) == pytest.approx(REFERENCE_POOLED_NORM, abs=2e-3)


def test_mapped_weights_match_the_package_model_class_live(model):
    # the reference class is optional, not in setup.py (pip install efficientnet-lite-pytorch), so it may
    # skip even under CI; -ra (pytest.ini) names the skip in every run's summary
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=resolve_weights_path("lite0"))
    x = torch.cat([_fixed_input(), torch.flip(_fixed_input(), dims=[3]) * 0.5])
    with torch.no_grad():
        want, got = ref.eval()(x), model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_map_state_dict_rejects_layout_mismatch():
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    ok = map_state_dict({"x": torch.ones(4, 3), "y": torch.ones(4)}, target)
    assert list(ok) == ["a.weight", "a.bias"] and float(ok["a.weight"].sum()) == 12.0
    with pytest.raises(ModelError, match="does not fit 'a.weight'"):
        map_state_dict({"x": torch.ones(3, 4), "y": torch.ones(4)}, target)
    with pytest.raises(ModelError, match="hold 1 tensors, the model 2"):
        map_state_dict({"x": torch.ones(4, 3)}, target)


def test_builder_is_picklable_and_hashable():
    b = ImageEncoderBuilder(device="cpu", batch_size=4)
    assert pickle.loads(pickle.dumps(b)) == b
    assert hash(pickle.loads(pickle.dumps(b))) == hash(b)


# --------------------------------------------------------------------------------------
# encoding


def test_encode_synthetic_images_unit_norm_and_order_independent(encoder):
    ims = [Image.fromarray(_synthetic(s)) for s in range(5)]
    a = encoder.encode(ims)
    assert a.shape == (5, DIM) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    b = encoder.encode(ims[::-1])[::-1]  # other batch composition (batch_size 8), same rows
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert encoder.encode([]).shape == (0, DIM)


def test_encode_values_keeps_failed_rows(encoder, tmp_path):
    full = _jpeg(_synthetic(3))
    (tmp_path / "a.jpg").write_bytes(full)
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    values = pd.Series(["a.jpg", None, b"junk", "gone.jpg", "cut.jpg", full], index=range(10, 16), dtype=object)
    out = encode_values(encoder, values, str(tmp_path))
    assert out.index.tolist() == list(range(10, 16))
    reasons = [None, "no_image", "unreadable_image", "missing_image_file", "unreadable_image", None]
    assert out["error"].tolist() == reasons
    assert out["emb"].iloc[1:5].isna().all()
    np.testing.assert_allclose(out["emb"].iloc[5], out["emb"].iloc[0], atol=1e-6)  # bytes == path
    want = encoder.encode([load_image("a.jpg", str(tmp_path)).image])[0]
    np.testing.assert_allclose(out["emb"].iloc[0], want, atol=1e-6)


@pytest.fixture(scope="module")
def real_images(shared_data):
    folder = shared_data / "shopee" / "images"
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert len(files) == 23, files
    ims = []
    for name in files:
        result = load_image(name, str(folder))
        assert result.ok, (name, result.error)
        ims.append(result.image)
    return files, ims


def test_real_images_embeddings_deterministic_unit_norm(encoder, real_images):
    _, ims = real_images
    a = encoder.encode(ims)
    assert a.shape == (23, DIM) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    again = ImageEncoderBuilder(device="cpu", batch_size=5)().encode(ims)  # fresh model, other batching
    np.testing.assert_allclose(a, again, atol=1e-5)
    sims = a @ a.T
    off = sims[~np.eye(23, dtype=bool)]
    assert off.max() < 0.99  # 23 different products: no two embeddings collapse


def test_real_image_closer_to_its_edited_copy_than_to_other_listings(encoder, real_images):
    files, ims = real_images
    base = encoder.encode(ims)
    edited = [ImageOps.mirror(im).resize((im.width * 3 // 5, im.height * 3 // 5), Image.BILINEAR) for im in ims]
    edited_emb = encoder.encode(edited)
    own = np.sum(base * edited_emb, axis=1)
    cross = base @ base.T
    np.fill_diagonal(cross, -1.0)
    best_other = cross.max(axis=1)
    assert (own > best_other).all(), [(f, o, b) for f, o, b in zip(files, own, best_other, strict=True) if o <= b]
    assert own.min() > 0.8


def test_embed_images_spark_udf(spark, encoder, tmp_path):
    arrays = [_synthetic(s) for s in (11, 12)]
    (tmp_path / "x.jpg").write_bytes(_jpeg(arrays[0]))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    rows = [("p1", "x.jpg"), ("p2", "bad.jpg"), ("p3", None), ("p4", "nowhere.jpg"), ("p5", "x.jpg")]
    df = spark.createDataFrame(rows, "posting_id string, image string")
    builder = ImageEncoderBuilder(device="cpu", batch_size=2)
    out = embed_images(df, "image", "img_emb", builder, str(tmp_path)).toPandas().set_index("posting_id")
    assert list(out.columns) == ["image", "img_emb", "img_emb_error"]
    reasons = {"p1": None, "p2": "unreadable_image", "p3": "no_image", "p4": "missing_image_file", "p5": None}
    assert out["img_emb_error"].to_dict() == reasons
    assert out.loc[["p2", "p3", "p4"], "img_emb"].isna().all()
    want = encoder.encode([load_image("x.jpg", str(tmp_path)).image])[0]
    for pid in ("p1", "p5"):
        v = np.asarray(out.loc[pid, "img_emb"], dtype=np.float32)
        assert v.shape == (DIM,)
        np.testing.assert_allclose(v, want, atol=1e-5)

    binary = spark.createDataFrame([("b1", bytearray(_jpeg(arrays[1])))], "posting_id string, image binary")
    got = embed_images(binary, "image", "e", builder, error_col="why").toPandas()
    assert got["why"].tolist() == [None]
    want_b = encoder.encode([load_image(_jpeg(arrays[1])).image])[0]
    np.testing.assert_allclose(np.asarray(got["e"][0], dtype=np.float32), want_b, atol=1e-5)
