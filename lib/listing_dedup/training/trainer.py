"""Training runs: ArcFace / CurricularFace over label groups, best epoch by held-out F1.

Two modes (``TrainConfig.mode``):

``head``
    The base encoder stays frozen. Its embeddings of every input row are computed once, in
    streamed batches, into a memory-mapped ``.npy`` under ``OUT/cache`` (reused by a rerun on
    the same input and encoder); a projection head (:mod:`.heads`) is trained on them with a
    margin classifier over the training groups. Minutes on a 2-core CPU. The encoder can be
    anything with ``encode(list) -> (n, dim)`` (the embed stage's :class:`Encoder`), so an
    image encoder over an image column trains the same way.
``full``
    A sentence-transformers encoder is fine-tuned end to end together with the head (two
    learning rates). Titles are streamed from the input every epoch and shuffled within a
    buffer. Meant for a GPU; it runs on a CPU, slowly.

Each epoch the held-out rows are embedded and scored (:mod:`.validate`); the best epoch's
weights are kept, the thresholds are tuned on the held-out rows, and the model directory
(:mod:`.model_dir`) is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.config import TrainConfig, TrainValidateConf
from listing_dedup.embed.encoder import (
    PACKAGED_MODELS,
    ST,
    TUNED,
    Encoder,
    open_encoder,
    pick_device,
    resolve_model,
)
from listing_dedup.embed.heads import ProjectionHead, save_head
from listing_dedup.embed.model_dir import WEIGHTS, write_model_json, write_overlay
from listing_dedup.errors import ConfigError, InputError
from listing_dedup.training import validate
from listing_dedup.training.data import LabelledIndex, iter_titles, read_index
from listing_dedup.training.hardware import hardware
from listing_dedup.training.losses import ArcMarginHead

log = logging.getLogger(__name__)

# the scores of a run without held-out rows (split.heldout_fold none)
NOT_SCORED = {"f1": float("nan"), "precision": float("nan"), "recall": float("nan"), "min2_threshold": None}


def score_frozen(emb: np.ndarray | None, idx: LabelledIndex, v: TrainValidateConf) -> dict:
    """The pretrained encoder's best F1 on the held-out rows (``emb``, no head): the figure
    training has to beat. ``NOT_SCORED`` when there are no held-out rows (a refit)."""
    if emb is None or not len(emb):
        return dict(NOT_SCORED, note="no held-out rows")
    held = idx.heldout_rows()
    frozen = validate.sweep_best(emb, idx.ids[held], idx.labels[held], v.k, v.thresholds, [None, *v.min2_thresholds])
    log.info("frozen encoder on the held-out rows: F1 %.4f (threshold %.3f)", frozen["f1"], frozen["threshold"])
    return frozen


def _threads(cfg: TrainConfig) -> int:
    return cfg.encoder.threads or (os.cpu_count() or 1)


def build_base_encoder(cfg: TrainConfig) -> Encoder:
    """The frozen base encoder of mode ``head`` (same classes as the embed stage)."""
    kind, path = resolve_model(cfg.encoder.model)
    if kind == TUNED:
        raise ConfigError(f"encoder.model: {path} is a trained listing-dedup model; train on its base encoder")
    return open_encoder(
        kind,
        path,
        device=pick_device(cfg.encoder.device),
        fp16=False,
        batch_size=cfg.encoder.batch_size,
        max_seq_length=cfg.encoder.max_seq_length,
        threads=_threads(cfg),
    )


# --------------------------------------------------------------------------------------
# frozen base embeddings (mode head)


def base_embeddings(
    cfg: TrainConfig, idx: LabelledIndex, encoder: Encoder, out_dir: Path, precomputed: str | None = None
) -> np.ndarray:
    """Row-aligned base embeddings, memory-mapped: ``precomputed`` (checked against the encoder
    on a few rows), else the cache under ``out_dir/cache``, else computed in streamed batches."""
    if precomputed:
        emb = np.load(precomputed, mmap_mode="r")
        if emb.ndim != 2 or emb.shape[0] < idx.n or emb.shape[1] != encoder.dim:
            raise InputError(f"--base-embeddings {precomputed}: shape {emb.shape}, need ({idx.n}, {encoder.dim})")
        emb = emb[: idx.n]
        _spot_check(cfg, idx, encoder, emb, precomputed)
        return emb
    cache = out_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    npy, meta_path = cache / "base_embeddings.npy", cache / "base_embeddings.json"
    src = Path(idx.path)
    meta = {
        "input": str(src.resolve()),
        "input_mtime": src.stat().st_mtime,
        "rows": idx.n,
        "encoder": cfg.encoder.model,
        "max_seq_length": cfg.encoder.max_seq_length,
        "title_column": cfg.data.title_column,
        "max_title_chars": cfg.data.max_title_chars,
    }
    if npy.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        log.info("reusing cached base embeddings %s", npy)
        return np.load(npy, mmap_mode="r")
    t0 = time.perf_counter()
    emb = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(idx.n, encoder.dim))
    for off, titles in iter_titles(idx.path, cfg.data):
        emb[off : off + len(titles)] = encoder.encode(titles)
        log.info("base embeddings: %d / %d rows (%.0fs)", off + len(titles), idx.n, time.perf_counter() - t0)
    emb.flush()
    meta_path.write_text(json.dumps(meta))
    return np.load(npy, mmap_mode="r")


def _spot_check(cfg: TrainConfig, idx: LabelledIndex, encoder: Encoder, emb: np.ndarray, where: str) -> None:
    _, titles = next(iter_titles(idx.path, cfg.data))
    n = min(8, len(titles))
    cos = np.sum(encoder.encode(titles[:n]) * np.asarray(emb[:n]), axis=1)
    if float(cos.min()) < 0.99:
        raise InputError(
            f"--base-embeddings {where}: rows do not match encoder {cfg.encoder.model} on the input's first "
            f"titles (cosines {np.round(cos, 3).tolist()}); wrong file, order or model"
        )


# --------------------------------------------------------------------------------------
# the training loop shared by both modes


def _schedule(cfg: TrainConfig, optimizer, steps: int):
    import torch

    if cfg.optim.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def _fit(
    cfg: TrainConfig,
    idx: LabelledIndex,
    modules: dict[str, Any],
    param_groups: list[dict],
    train_batches: Callable[[np.random.Generator], Iterator[tuple[Any, np.ndarray]]],
    forward: Callable[[Any], Any],
    embed_heldout: Callable[[], np.ndarray],
    n_train_batches: int,
) -> dict:
    """Epoch loop: train, validate, keep the best state of ``modules`` (restored at the end)."""
    import torch

    v = cfg.validate
    min2s = [None, *v.min2_thresholds]
    held = idx.heldout_rows()
    hid, hlab = idx.ids[held], idx.labels[held]
    classes = modules["margin"]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.optim.weight_decay)
    sched = _schedule(cfg, optimizer, max(1, cfg.optim.epochs * n_train_batches))
    rng = np.random.default_rng(cfg.seed)
    epochs, best, best_state, stale = [], None, None, 0
    for epoch in range(1, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        for m in modules.values():
            m.train()
        losses = []
        for inputs, y in train_batches(rng):
            logits = classes(forward(inputs), torch.as_tensor(y, device=classes.weight.device))
            loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y, device=logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            losses.append(float(loss.detach()))
        t_train = time.perf_counter() - t0
        for m in modules.values():
            m.eval()
        if len(held):
            score = validate.sweep_best(embed_heldout(), hid, hlab, v.k, v.thresholds, min2s)
        else:  # a refit: nothing to score, the last epoch is kept
            score = dict(NOT_SCORED, threshold=float("nan"))
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "f1": score["f1"],
            "precision": score["precision"],
            "recall": score["recall"],
            "threshold": score["threshold"],
            "min2_threshold": score["min2_threshold"],
            "train_seconds": round(t_train, 2),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        epochs.append(row)
        log.info(
            "epoch %d/%d: loss %.4f held-out F1 %.4f (threshold %.3f, min2 %s) %.1fs",
            epoch,
            cfg.optim.epochs,
            row["loss"],
            row["f1"],
            row["threshold"],
            row["min2_threshold"],
            row["seconds"],
        )
        if best is None or not len(held) or row["f1"] > best["f1"]:
            best, stale = row, 0
            best_state = {
                k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                for k, m in modules.items()
                if k != "margin"
            }
        else:
            stale += 1
            if cfg.optim.patience and stale >= cfg.optim.patience:
                log.info("no better held-out F1 for %d epochs: stopping", stale)
                break
    for k, state in (best_state or {}).items():
        modules[k].load_state_dict(state)
    for m in modules.values():
        m.eval()
    return {"epochs": epochs, "best_epoch": best["epoch"] if best else None}


def _class_ids(idx: LabelledIndex) -> tuple[np.ndarray, np.ndarray, int]:
    rows = idx.train_rows()
    codes, uniques = pd.factorize(pd.Series(idx.labels[rows]))
    return rows, codes.astype(np.int64), len(uniques)


def _batches_of(rows: np.ndarray, codes: np.ndarray, bs: int, rng: np.random.Generator):
    order = rng.permutation(len(rows))
    for i in range(0, len(order), bs):
        sel = order[i : i + bs]
        if len(sel) >= 2:  # BatchNorm needs two rows
            yield rows[sel], codes[sel]


# --------------------------------------------------------------------------------------
# modes


def _margin_head(cfg: TrainConfig, n_classes: int) -> ArcMarginHead:
    """The angular-margin classifier of ``cfg.loss`` over ``n_classes`` label groups."""
    return ArcMarginHead(
        cfg.head.dim,
        n_classes,
        margin=cfg.loss.margin,
        scale=cfg.loss.scale,
        curricular=cfg.loss.kind == "curricularface",
    )


def imprint(margin: ArcMarginHead, emb: np.ndarray, codes: np.ndarray) -> None:
    """Set each class weight to the normalised mean of its rows' unit embeddings (weight imprinting,
    Qi et al. 2018): the classifier starts where the classes are instead of at random."""
    import torch

    unit = emb.astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((margin.weight.shape[0], emb.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, unit)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    with torch.no_grad():
        w = margin.weight.detach().cpu().numpy()
        ok = norms[:, 0] > 0
        w[ok] = (sums[ok] / norms[ok]).astype(np.float32)
        margin.weight.copy_(torch.from_numpy(w).to(margin.weight.device))


def freeze_lower_layers(model, train_layers: int) -> int:
    """Mode full: keep only the top ``train_layers`` transformer layers (and what sits above them)
    trainable; token embeddings and lower layers are frozen. Returns the number of trainable tensors."""
    params = list(model.named_parameters())
    if train_layers <= 0:
        return len(params)
    pattern = re.compile(r"\.layers?\.(\d+)\.")
    layer_of = {n: int(m.group(1)) for n, _ in params if (m := pattern.search(n))}
    layers = sorted(set(layer_of.values()))
    if not layers:
        raise ConfigError("encoder.train_layers: the encoder has no numbered transformer layers to keep")
    if train_layers > len(layers):
        raise ConfigError(f"encoder.train_layers: {train_layers} > the encoder's {len(layers)} layers")
    keep = set(layers[-train_layers:])
    n = 0
    for name, p in params:
        if name in layer_of:
            p.requires_grad_(layer_of[name] in keep)
        else:
            p.requires_grad_("embeddings" not in name)
        n += int(p.requires_grad)
    return n


def length_batches(titles: list[str], labels: list[int], order: np.ndarray, bs: int, rng: np.random.Generator):
    """Cut ``order`` into batches of similar title length (less padding: on a CPU the step time
    follows the longest title of the batch): sort windows of 16 batches by length, shuffle the batches."""
    out = []
    window = bs * 16
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda j: len(titles[j]))
        out.extend(chunk[i : i + bs] for i in range(0, len(chunk), bs))
    for k in rng.permutation(len(out)):
        sel = out[k]
        if len(sel) >= 2:  # BatchNorm needs two rows
            yield [titles[j] for j in sel], np.asarray([labels[j] for j in sel])


def encode_by_length(titles: list[str], bs: int, fn: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """``fn`` over batches of titles sorted by length; rows come back in the input order."""
    order = np.argsort([len(t) for t in titles], kind="stable")
    parts = [fn([titles[j] for j in order[i : i + bs]]) for i in range(0, len(order), bs)]
    out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    res = np.empty_like(out)
    res[order] = out
    return res


def train_head(cfg: TrainConfig, idx: LabelledIndex, base: np.ndarray, device: str) -> tuple[ProjectionHead, dict]:
    import torch

    rows, codes, n_classes = _class_ids(idx)
    head = ProjectionHead(base.shape[1], cfg.head.dim, cfg.head.hidden_dim, cfg.head.dropout, cfg.head.norm).to(device)
    margin = _margin_head(cfg, n_classes).to(device)
    held = idx.heldout_rows()
    if cfg.loss.init == "imprint":
        head.eval()
        with torch.no_grad():
            emb = np.concatenate(
                [
                    head(torch.from_numpy(np.asarray(base[rows[i : i + 8192]])).to(device)).cpu().numpy()
                    for i in range(0, len(rows), 8192)
                ]
            )
        imprint(margin, emb, codes)

    def batches(rng):
        for r, y in _batches_of(rows, codes, cfg.optim.batch_size, rng):
            order = np.argsort(r)  # sorted reads from the memory map
            yield np.asarray(base[r[order]]), y[order]

    def forward(x):
        return head(torch.from_numpy(x).to(device))

    def embed_heldout():
        with torch.no_grad():
            return head(torch.from_numpy(np.asarray(base[held])).to(device)).cpu().numpy()

    n_batches = math.ceil(len(rows) / cfg.optim.batch_size)
    res = _fit(
        cfg,
        idx,
        {"head": head, "margin": margin},
        [{"params": list(head.parameters()) + list(margin.parameters()), "lr": cfg.optim.lr}],
        batches,
        forward,
        embed_heldout,
        n_batches,
    )
    res["n_classes"] = n_classes
    return head.cpu(), res


def train_full(cfg: TrainConfig, idx: LabelledIndex, st_path: str, device: str, out_dir: Path):
    """Fine-tune a sentence-transformers model and the head together; returns (model, head, result)."""
    import torch
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(st_path, device=device, local_files_only=True)
    model.max_seq_length = cfg.encoder.max_seq_length
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = int(get_dim())
    rows, codes, n_classes = _class_ids(idx)
    code_of_row = np.full(idx.n, -1, dtype=np.int64)
    code_of_row[rows] = codes
    head = ProjectionHead(dim, cfg.head.dim, cfg.head.hidden_dim, cfg.head.dropout, cfg.head.norm).to(device)
    margin = _margin_head(cfg, n_classes).to(device)
    held_mask = idx.heldout
    bs = cfg.optim.batch_size
    buffer_rows = max(bs * 64, 8192)

    def batches(rng):
        """Stream the training rows' titles; shuffle within a buffer of ``buffer_rows``,
        then cut length-sorted batches (see ``length_batches``)."""
        buf_t: list[str] = []
        buf_y: list[int] = []

        def drain(final: bool):
            nonlocal buf_t, buf_y
            order = rng.permutation(len(buf_t))
            cut = len(order) if final else (len(order) // bs) * bs
            out = list(length_batches(buf_t, buf_y, order[:cut], bs, rng))
            rest = order[cut:]
            buf_t, buf_y = [buf_t[j] for j in rest], [buf_y[j] for j in rest]
            return out

        for off, titles in iter_titles(idx.path, cfg.data):
            for j, t in enumerate(titles):
                c = code_of_row[off + j]
                if c >= 0:
                    buf_t.append(t)
                    buf_y.append(int(c))
            if len(buf_t) >= buffer_rows:
                yield from drain(False)
        yield from drain(True)

    def encode_train(titles):
        tokenize = getattr(model, "preprocess", None) or model.tokenize  # preprocess: sentence-transformers >= 5.2
        feats = tokenize(titles)
        feats = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in feats.items()}
        out = model(feats)["sentence_embedding"]
        return torch.nn.functional.normalize(out, dim=1)

    def forward(titles):
        return head(encode_train(titles))

    def titles_where(mask: np.ndarray) -> list[str]:
        return [t for off, titles in iter_titles(idx.path, cfg.data) for j, t in enumerate(titles) if mask[off + j]]

    def embed_rows(mask: np.ndarray) -> np.ndarray:
        """Head outputs of the rows in ``mask`` (row order), batches sorted by title length."""
        sel = titles_where(mask)
        if not sel:
            return np.zeros((0, cfg.head.dim), np.float32)
        with torch.no_grad():
            return encode_by_length(sel, cfg.encoder.batch_size, lambda b: head(encode_train(b)).cpu().numpy())

    def embed_heldout():
        return embed_rows(held_mask)

    model.eval()
    sel = titles_where(held_mask)
    frozen_emb = None
    if sel:
        with torch.no_grad():
            frozen_emb = encode_by_length(sel, cfg.encoder.batch_size, lambda b: encode_train(b).cpu().numpy())
    frozen = score_frozen(frozen_emb, idx, cfg.validate)

    n_trainable = freeze_lower_layers(model, cfg.encoder.train_layers)
    log.info("mode full: %d trainable encoder tensors (train_layers %d)", n_trainable, cfg.encoder.train_layers)
    if cfg.loss.init == "imprint":
        t0 = time.perf_counter()
        model.eval()
        head.eval()
        train_mask = code_of_row >= 0
        imprint(margin, embed_rows(train_mask), code_of_row[train_mask])
        log.info("imprinted %d class weights in %.1fs", n_classes, time.perf_counter() - t0)

    n_batches = math.ceil(len(rows) / bs)
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.optim.encoder_lr},
        {"params": list(head.parameters()) + list(margin.parameters()), "lr": cfg.optim.lr},
    ]
    res = _fit(
        cfg, idx, {"encoder": model, "head": head, "margin": margin}, groups, batches, forward, embed_heldout, n_batches
    )
    res["n_classes"] = n_classes
    res["frozen"] = frozen
    res["dim"] = dim
    # the best epoch's (restored) held-out embeddings, for the threshold tuning
    res["held_emb"] = embed_heldout() if held_mask.any() else None
    return model, head.cpu(), res


# --------------------------------------------------------------------------------------
# the run


def _plot(epochs: list[dict], frozen_f1: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [e["loss"] for e in epochs], marker="o")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.set_title("margin loss")
    b.plot(x, [e["f1"] for e in epochs], marker="o", label="trained")
    b.axhline(frozen_f1, color="grey", linestyle="--", label="frozen encoder")
    b.set_xlabel("epoch")
    b.set_ylabel("held-out F1 (best threshold)")
    b.set_title("held-out row-wise F1")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_embedder(
    cfg: TrainConfig,
    *,
    input_path: str,
    out_dir: str | Path,
    base_embeddings_path: str | None = None,
    base_encoder: Encoder | None = None,
) -> dict:
    """Train, keep the best epoch, tune thresholds on the held-out rows, write the model directory.

    ``base_encoder`` (mode head): the frozen encoder to use instead of ``cfg.encoder.model``
    (tests pass a tiny one); its name in the model directory stays ``cfg.encoder.model``.
    Returns the metrics written to ``metrics.json``."""
    import torch

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(_threads(cfg))
    idx = read_index(input_path, cfg.data, cfg.split, cfg.seed)
    device = pick_device(cfg.encoder.device)
    held = idx.heldout_rows()
    hid, hlab = idx.ids[held], idx.labels[held]
    v = cfg.validate
    seconds: dict[str, float] = {}
    kind, base_path = resolve_model(cfg.encoder.model)

    if cfg.mode == "head":
        if kind == TUNED:
            raise ConfigError(f"encoder.model: {base_path} is a trained listing-dedup model; train on its base")
        t0 = time.perf_counter()
        encoder = base_encoder or build_base_encoder(cfg)
        base = base_embeddings(cfg, idx, encoder, out, base_embeddings_path)
        seconds["base_embeddings"] = round(time.perf_counter() - t0, 1)
        frozen = score_frozen(np.asarray(base[held]) if len(held) else None, idx, v)
        t0 = time.perf_counter()
        head, res = train_head(cfg, idx, base, device)
        seconds["train"] = round(time.perf_counter() - t0, 1)
        with torch.no_grad():
            held_emb = head(torch.from_numpy(np.asarray(base[held]))).numpy() if len(held) else None
        # a packaged name stays a name; a directory is stored as its absolute path
        base_name = cfg.encoder.model if cfg.encoder.model in PACKAGED_MODELS else base_path
        base_dim = int(base.shape[1])
    else:
        if kind != ST:
            raise ConfigError(
                f"mode full fine-tunes a sentence-transformers encoder; encoder.model "
                f"'{cfg.encoder.model}' is a {kind} model (use mode head)"
            )
        if base_embeddings_path:
            raise ConfigError("--base-embeddings applies to mode head only")
        t0 = time.perf_counter()
        model, head, res = train_full(cfg, idx, base_path, device, out)
        seconds["train"] = round(time.perf_counter() - t0, 1)
        enc_dir = out / "encoder"
        model.save(str(enc_dir))
        held_emb = res["held_emb"]
        frozen = res["frozen"]
        base_name, base_dim = "encoder", int(res["dim"])

    tuned: dict = {"best": None, "tried": []}
    if len(held):
        t0 = time.perf_counter()
        tuned = validate.tune(held_emb, hid, hlab, v)
        seconds["tune"] = round(time.perf_counter() - t0, 1)
        log.info(
            "tuned on the held-out rows: F1 %.4f threshold %.3f min2 %s INB %s",
            tuned["best"]["f1"],
            tuned["best"]["threshold"],
            tuned["best"]["min2_threshold"],
            tuned["best"]["inb_threshold"],
        )
    else:
        log.info("no held-out rows: the overlay sets the model only (take thresholds from the held-out run)")

    save_head(head, out / WEIGHTS)
    write_model_json(
        out,
        base_model=base_name,
        base_dim=base_dim,
        head_spec=head.spec(),
        max_seq_length=cfg.encoder.max_seq_length,
        mode=cfg.mode,
        training=cfg.to_dict(),
    )
    overlay = write_overlay(out, tuned["best"])
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    metrics = {
        "mode": cfg.mode,
        "input": str(Path(input_path).resolve()),
        "rows": idx.n,
        "train_rows": int((~idx.heldout).sum()),
        "heldout_rows": int(idx.heldout.sum()),
        "split": idx.split,
        "classes": res["n_classes"],
        "frozen_encoder": frozen,
        "epochs": res["epochs"],
        "best_epoch": res["best_epoch"],
        "tuned": tuned["best"],
        "tuned_candidates": tuned["tried"],
        "overlay": overlay,
        "seconds": seconds,
        "hardware": hardware(device),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    _plot(res["epochs"], frozen.get("f1", float("nan")), out / "training_curve.png")
    log.info("model directory %s written (%.1fs in all)", out, seconds["total"])
    return metrics
