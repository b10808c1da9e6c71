"""The GPU path, checked on the CPU: the torch list scan (search/scan_torch.py) against the numpy
kernel (search/indexer.py scan_lists) and a brute-force float64 reference, ``index.device``, the
job's search function with it, and bench/gpu.py (its checks, its arguments, and a whole run in a
process where pyspark and faiss cannot be imported, as on the GPU machine)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import IndexConf, load_config
from listing_dedup.errors import ConfigError
from listing_dedup.search.indexer import _search_fn, list_layout, scan_lists, write_shard_files
from listing_dedup.search.scan_torch import scan_device, scan_lists_torch, topk_agree

REPO = Path(__file__).resolve().parents[1]


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lists(rng, m: int, d: int, nlist: int, *, dyadic: bool = False, empty: tuple = ()):
    """``(vectors stored list by list, offsets)``; ``dyadic``: entries in multiples of 1/8 (every
    inner product exact in float32 whatever the summation order, so ties are exact too)."""
    if dyadic:
        v = rng.integers(-2, 3, size=(m, d)).astype(np.float32) / 8
    else:
        v = rng.standard_normal((m, d)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    lists = rng.integers(0, nlist, m)
    for e in empty:
        lists[lists == e] = (e + 1) % nlist
    order, offsets = list_layout(lists, nlist)
    return np.ascontiguousarray(v[order]), offsets


def _queries(rng, n: int, d: int, nlist: int, nprobe: int, *, dyadic: bool = False):
    if dyadic:
        x = rng.integers(-2, 3, size=(n, d)).astype(np.float32) / 8
    else:
        x = rng.standard_normal((n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    probe = np.stack([rng.choice(nlist, nprobe, replace=False) for _ in range(n)]).astype(np.int64)
    return x, probe


def _brute(x, probe, vectors, offsets, k):
    """Reference: every probed row scored in float64, the ``k`` best (ties by row id)."""
    d_out = np.full((len(x), k), -np.inf)
    i_out = np.full((len(x), k), -1, dtype=np.int64)
    for q in range(len(x)):
        rows = np.concatenate([np.arange(offsets[lst], offsets[lst + 1]) for lst in probe[q]])
        s = vectors[rows].astype(np.float64) @ x[q].astype(np.float64)
        best = np.lexsort((rows, -s))[:k]
        d_out[q, : len(best)], i_out[q, : len(best)] = s[best], rows[best]
    return d_out, i_out


def test_torch_scan_matches_numpy_kernel_and_brute_force():
    rng = np.random.default_rng(3)
    vectors, offsets = _lists(rng, 6000, 48, 40, empty=(7,))
    x, probe = _queries(rng, 300, 48, 40, 6)
    got = scan_lists_torch(x, probe, vectors, offsets, 12)
    ref = scan_lists(x, probe, vectors, offsets, 12)
    brute = _brute(x, probe, vectors, offsets, 12)
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64 and got[0].shape == (300, 12)
    ok, gap, rows = topk_agree(*got, *ref, tol=1e-6)
    assert ok, (gap, rows)
    ok, gap, rows = topk_agree(*got, brute[0].astype(np.float32), brute[1], tol=1e-6)
    assert ok, (gap, rows)
    # scores best first, ids point at rows of the probed lists only
    assert (np.diff(got[0], axis=1) <= 0).all()
    owner = np.searchsorted(offsets, got[1], side="right") - 1
    assert all(set(owner[q]) <= set(probe[q]) for q in range(len(x)))


@pytest.mark.parametrize(
    "block_bytes,buffer_bytes",
    [(256 * 2**20, 512 * 2**20), (4096, 8 * 12 * 5 * 40), (200_000, 10**9)],
    ids=["defaults", "tiny-blocks-and-chunks", "mixed"],
)
def test_torch_scan_exact_on_exact_scores(block_bytes, buffer_bytes):
    """Dyadic vectors: every score exact, so both kernels give the same floats, ties included,
    however the work is cut (a list's queries in pieces, blocks of one or many lists, query chunks)."""
    rng = np.random.default_rng(5)
    vectors, offsets = _lists(rng, 3000, 16, 30, dyadic=True, empty=(3, 11))
    x, probe = _queries(rng, 200, 16, 30, 5, dyadic=True)
    k = 12
    got = scan_lists_torch(x, probe, vectors, offsets, k, block_bytes=block_bytes, buffer_bytes=buffer_bytes)
    ref = scan_lists(x, probe, vectors, offsets, k)
    brute_s, _ = _brute(x, probe, vectors, offsets, k)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[0].astype(np.float64), brute_s)
    # every id is a probed row with exactly its returned score; above the k-th score, the same ids
    for q in range(len(x)):
        true = vectors[got[1][q]].astype(np.float64) @ x[q].astype(np.float64)
        np.testing.assert_array_equal(true, got[0][q].astype(np.float64))
        assert len(set(got[1][q])) == k
        above = got[0][q] > got[0][q][-1]
        assert set(got[1][q][above]) == set(ref[1][q][above])


def test_torch_scan_edges_as_the_numpy_kernel():
    rng = np.random.default_rng(9)
    vectors, offsets = _lists(rng, 40, 8, 10, empty=(0, 1, 2))
    x, probe = _queries(rng, 6, 8, 10, 3)
    probe[0] = [0, 1, 2]  # only lists without rows: no result
    for k in (1, 5, 30):  # 30: more than the probed lists hold
        got, ref = scan_lists_torch(x, probe, vectors, offsets, k), scan_lists(x, probe, vectors, offsets, k)
        ok, gap, rows = topk_agree(*got, *ref, tol=1e-6)
        assert ok, (k, gap, rows)
        np.testing.assert_array_equal(got[1] < 0, ref[1] < 0)
        assert (got[1][0] == -1).all() and np.isneginf(got[0][0]).all()
    empty = scan_lists_torch(x[:0], probe[:0], vectors, offsets, 4)
    assert empty[0].shape == (0, 4) and empty[1].shape == (0, 4)
    none = scan_lists_torch(x, probe, vectors, offsets, 0)
    assert none[0].shape == (6, 0)


def test_topk_agree_finds_planted_differences():
    s = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], dtype=np.float32)
    i = np.array([[1, 2, 3], [4, 5, 6]])
    assert topk_agree(s, i, s.copy(), i.copy(), tol=0.0) == (True, 0.0, 0)
    swapped = i.copy()
    swapped[0, 0] = 9  # a clearly better neighbour replaced
    assert topk_agree(s, i, s, swapped, tol=1e-5)[0] is False
    moved = s.copy()
    moved[1, 1] += 1e-3
    assert topk_agree(s, i, moved, i, tol=1e-5)[:1] == (False,)
    # a near tie at the k-th place: either id may stay
    near = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    assert topk_agree(near, np.array([[1, 2, 3]]), near + np.float32(1e-7), np.array([[1, 2, 8]]), tol=1e-5)[0]
    fewer = i.copy()
    fewer[1, 2] = -1
    assert topk_agree(s, i, np.where(fewer < 0, -np.inf, s).astype(np.float32), fewer, tol=1e-5)[0] is False


def test_scan_device_and_index_conf():
    assert IndexConf().device == "cpu"  # the numpy kernel stays the default
    with pytest.raises(ConfigError, match="index.device"):
        IndexConf(device="gpu")
    assert load_config([REPO / "conf" / "local.yaml"]).index.device == "cpu"
    assert load_config([REPO / "conf" / "cluster.yaml"]).index.device == "auto"
    import torch

    assert scan_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="index.device"):
        scan_device("gpu")
    if torch.cuda.is_available():
        assert scan_device("auto").startswith("cuda") and scan_device("cuda").startswith("cuda")
    else:
        assert scan_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="sees no GPU"):
            scan_device("cuda")


def test_search_fn_runs_the_device_it_is_given(tmp_path):
    """The job's search task (``_search_fn``) over a shard's files: ``auto`` gives the CPU kernel's
    pairs on a machine without a GPU, and ``cuda`` reaches the torch path (there: no GPU)."""
    import torch

    rng = np.random.default_rng(11)
    vectors, offsets = _lists(rng, 500, 16, 8)
    ids = [f"p{i:04d}" for i in range(len(vectors))]
    write_shard_files(str(tmp_path), 0, None, ids, vectors, offsets)
    queries = pd.DataFrame(
        {
            "posting_id": ids[:40],
            "emb": list(vectors[:40]),
            "probe": [
                np.array([own, (own + 1) % 8]) for own in np.searchsorted(offsets, np.arange(40), side="right") - 1
            ],
            "shard": 0,
        }
    )
    cpu = _search_fn(str(tmp_path), 16, 5, "flat", 1, "blas", "cpu")(queries)
    auto = _search_fn(str(tmp_path), 16, 5, "flat", 1, "blas", "auto")(queries)
    assert len(cpu) == 40 * 5 and not (cpu["src"] == cpu["dst"]).any()
    if not torch.cuda.is_available():
        pd.testing.assert_frame_equal(auto, cpu)
        with pytest.raises(ConfigError, match="sees no GPU"):
            _search_fn(str(tmp_path), 16, 5, "flat", 1, "blas", "cuda")(queries)


def test_bench_checks_fail_on_disagreement():
    gpu = _gpu_bench()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 32))
    assert gpu.require_close("same", a, a.copy(), 0.999) < 1e-12
    b = a.copy()
    b[7] += 0.2 * np.linalg.norm(a[7]) * rng.standard_normal(32) / np.sqrt(32)  # cosine about 0.98
    with pytest.raises(gpu.Disagree, match="cosine"):
        gpu.require_close("planted", a, b, 0.999)
    s = np.array([[0.9, 0.5]], dtype=np.float32)
    with pytest.raises(gpu.Disagree, match="top-k differs on 1 of 1"):
        gpu.require_same_topk("planted", (s, np.array([[1, 2]])), (s, np.array([[3, 2]])), 1e-5)


def test_bench_bad_arguments_exit_2_with_one_line(capsys):
    gpu = _gpu_bench()
    with pytest.raises(SystemExit) as e:
        gpu.main(["--titles", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--titles" in err


# modules bench/gpu.py and the GPU search path import; a GPU machine has no pyspark and no faiss
GPU_MODULES = [
    "listing_dedup.config",
    "listing_dedup.embed.encoder",
    "listing_dedup.embed.bert",
    "listing_dedup.embed.image",
    "listing_dedup.embed.lexical",
    "listing_dedup.search.indexer",
    "listing_dedup.search.scan_torch",
    "listing_dedup.quality.sample",
]
BLOCKER = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyspark", "faiss"):
            raise ImportError(name + " cannot be imported here (as on the GPU machine)")
        return None
sys.meta_path.insert(0, _Blocked())
"""


def _blocked_env(tmp_path: Path) -> dict:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO / "lib")])
    return env


@pytest.mark.slow
def test_gpu_modules_import_without_pyspark(tmp_path):
    code = (
        "import importlib, sys\n"
        "try:\n    import pyspark\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('pyspark imported')\n"
        f"for m in {GPU_MODULES!r}:\n    importlib.import_module(m)\n"
        "sys.path.insert(0, 'bench')\nimport gpu\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'faiss'))\n"
        "print('imported', len(sys.modules), 'blocked', bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_blocked_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "blocked []" in out.stdout


@pytest.mark.slow
def test_gpu_bench_runs_without_pyspark_and_faiss(tmp_path):
    """The whole bench at small sizes, where pyspark and faiss cannot be imported: its lines and
    its final line (``device=none`` without a GPU)."""
    args = ["--titles", "12", "--images", "3", "--image-ref", "2", "--scan-rows", "3000", "--scan-queries", "40"]
    args += ["--cpu-queries", "40", "--lexical-titles", "150", "--device", "cpu"]
    out = subprocess.run(
        [sys.executable, "bench/gpu.py", *args],
        cwd=REPO,
        env=_blocked_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    for prefix in ("gpu-text ", "gpu-image ", "gpu-scan ", "gpu-lexical "):
        assert any(line.startswith(prefix) for line in lines), prefix
    last = re.fullmatch(
        r"gpu device=none text_rows_per_s=([\d.]+) text_vs_bare=([\d.]+) image_rows_per_s=([\d.]+) "
        r"scan_speedup_vs_cpu=([\d.]+) max_cos_gap=(\S+)",
        lines[-1],
    )
    assert last, lines[-1]
    assert all(float(v) > 0 for v in last.groups()[:4]) and 0 <= float(last.group(5)) < 1e-3
    scan = dict(kv.split("=") for kv in next(line for line in lines if line.startswith("gpu-scan ")).split()[1:])
    assert scan["rows"] == "3000" and scan["queries"] == "40" and scan["cpu_queries"] == "40"
