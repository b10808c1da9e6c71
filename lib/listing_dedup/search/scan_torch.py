"""The list scan of ``search/indexer.py`` (:func:`~listing_dedup.search.indexer.scan_lists`) in
torch, for a GPU (``index.device: cuda``, or ``auto`` when torch sees one).

Same inputs and result as ``scan_lists``: the exact top-``k`` inner products of each query over
the rows of its probed lists, ``(D, I)`` float32 / int64 ``(n, k)``, best first, missing results
``-inf`` / ``-1``. The scores are float32 matrix products as on the CPU (no TF32: the kernel runs
at ``float32_matmul_precision`` "highest"); another summation order may move a score by the last
float32 bit, so among candidates whose scores differ by about 1e-7 either kernel may keep another
one at the k-th place (:func:`topk_agree` compares two results that way).

How it runs on a GPU: the (query, probed list) pairs are grouped by list and a list's queries
cut into pieces of bounded size; pieces of lists of about the same length are scored together,
one batched matrix product ``(lists, queries, d) x (lists, d, rows)`` padded to the block's
longest, and each piece keeps its ``k`` best in a slot of its query's candidate buffer
``(queries, nprobe * k)``; the buffer's top ``k`` is the answer. Memory: the shard's vectors
once on the device (kept for the next call with the same array), one block of at most
``block_bytes`` and the candidate buffer of a chunk of queries (at most ``buffer_bytes``).

Pure: numpy and torch (imported when called), no pyspark (tests/test_gpu_bench.py imports it in
a process without pyspark).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from listing_dedup.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
BLOCK_BYTES = 256 * 2**20  # one block's gathered queries + list rows + scores
BUFFER_BYTES = 512 * 2**20  # a chunk of queries' candidate buffer (scores + row ids)


def scan_device(preference: str) -> str:
    """Where the list scan runs for ``index.device`` = ``preference``: ``cpu`` (the numpy kernel of
    search/indexer.py) or ``cuda[:N]`` (this module's). ``auto``: CUDA when torch is importable
    and sees a GPU, else the CPU; ``cuda`` without one is a ConfigError. Inside a Spark task that
    was given a GPU (``spark.task.resource.gpu.amount``), that GPU."""
    if preference not in DEVICES:
        raise ConfigError(f"index.device must be one of {', '.join(DEVICES)}, got {preference!r}")
    if preference == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except ImportError:
        has_cuda = False
    if not has_cuda:
        if preference == "cuda":
            raise ConfigError("index.device is 'cuda' but torch sees no GPU here")
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and "gpu" in ctx.resources():
            return f"cuda:{ctx.resources()['gpu'].addresses[0]}"
    except Exception:  # noqa: BLE001 - not in a Spark task, no pyspark, or no resources API
        pass
    return "cuda"


# the last arrays put on a device: (array, device, tensor); a shard is scanned by many calls
_ON_DEVICE: list[tuple[np.ndarray, str, Any]] = []
_ON_DEVICE_MAX = 2


def _device_tensor(vectors: np.ndarray, device: str) -> Any:
    import torch

    for arr, dev, t in _ON_DEVICE:
        if arr is vectors and dev == device:
            return t
    with warnings.catch_warnings():  # a read-only memmap: torch warns, the kernel never writes it
        warnings.simplefilter("ignore", UserWarning)
        host = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    t = host.to(device) if device != "cpu" else host
    if device == "cpu":
        return t  # shares the array's memory: nothing to keep
    _ON_DEVICE.append((vectors, device, t))  # holding the array keeps its id from being reused
    while len(_ON_DEVICE) > _ON_DEVICE_MAX:
        _ON_DEVICE.pop(0)
    return t


def release_device_vectors() -> None:
    """Drop the vectors kept on devices (the next call uploads again)."""
    _ON_DEVICE.clear()


def _pieces(
    li: np.ndarray, sizes: np.ndarray, d: int, max_elems: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the pairs (sorted by list) into pieces: a list's queries, at most as many as fit one
    block with that list's rows. Returns each piece's first pair, pair count, list and rows."""
    starts = np.flatnonzero(np.r_[True, li[1:] != li[:-1]])
    counts = np.diff(np.r_[starts, len(li)])
    lists = li[starts]
    rows = sizes[lists]
    cap = np.maximum(1, max_elems // (d + rows))  # queries a piece alone: q*d + q*r (its rows are a slice)
    n_pieces = -(-counts // cap)
    first = np.repeat(starts, n_pieces)
    within = np.arange(n_pieces.sum()) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    p_start = first + within * np.repeat(cap, n_pieces)
    p_count = np.minimum(np.repeat(cap, n_pieces), np.repeat(starts + counts, n_pieces) - p_start)
    return p_start, p_count, np.repeat(lists, n_pieces), np.repeat(rows, n_pieces)


def scan_lists_torch(
    x: np.ndarray,
    probe: np.ndarray,
    vectors: np.ndarray,
    offsets: np.ndarray,
    k: int,
    *,
    device: str = "cpu",
    block_bytes: int = BLOCK_BYTES,
    buffer_bytes: int = BUFFER_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`listing_dedup.search.indexer.scan_lists` on ``device`` (a torch device name):
    same arguments, same result (up to the last float32 bit of a score, see the module doc)."""
    import torch

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    probe = np.asarray(probe, dtype=np.int64)
    if n == 0 or k == 0 or probe.size == 0:
        return best_s, best_i
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = offsets[1:] - offsets[:-1]
    nprobe = probe.shape[1]
    max_elems = max(1, block_bytes // 4)
    chunk = max(1, buffer_bytes // (nprobe * k * 8))  # queries a candidate buffer (float32 + int32)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # plain float32 products (no TF32)
    try:
        vec = _device_tensor(vectors, device)
        with torch.inference_mode():
            for c0 in range(0, n, chunk):
                c1 = min(n, c0 + chunk)
                s, i = _scan_chunk(torch, x[c0:c1], probe[c0:c1], vec, offsets, sizes, k, device, max_elems)
                best_s[c0:c1], best_i[c0:c1] = s, i
    finally:
        torch.set_float32_matmul_precision(precision)
    return best_s, best_i


def _scan_chunk(
    torch: Any,
    x: np.ndarray,
    probe: np.ndarray,
    vec: Any,
    offsets: np.ndarray,
    sizes: np.ndarray,
    k: int,
    device: str,
    max_elems: int,
) -> tuple[np.ndarray, np.ndarray]:
    n, nprobe = probe.shape
    d = x.shape[1]
    qi = np.repeat(np.arange(n, dtype=np.int64), nprobe)
    slot = np.tile(np.arange(nprobe, dtype=np.int64), n)
    li = probe.reshape(-1)
    held = sizes[li] > 0  # lists that hold rows here
    qi, slot, li = qi[held], slot[held], li[held]
    cand_s = torch.full((n, nprobe * k), float("-inf"), dtype=torch.float32, device=device)
    cand_i = torch.full((n, nprobe * k), -1, dtype=torch.int32, device=device)
    if len(li):
        by_list = np.argsort(li, kind="stable")
        qi, slot, li = qi[by_list], slot[by_list], li[by_list]
        p_start, p_count, p_list, p_rows = _pieces(li, sizes, d, max_elems)
        xt = torch.from_numpy(x).to(device)
        qi_t = torch.from_numpy(qi).to(device)
        flat_t = torch.from_numpy(qi * (nprobe * k) + slot * k).to(device)  # each pair's first slot

        def score_block(units: np.ndarray, q_max: int, r_max: int) -> None:
            """Score one block of pieces; each piece's top k goes to its queries' slots."""
            jq, jr = np.arange(q_max), np.arange(r_max)
            q_ok = jq[None, :] < p_count[units][:, None]  # (B, q_max)
            r_ok = jr[None, :] < p_rows[units][:, None]  # (B, r_max)
            pair_t = torch.from_numpy(np.where(q_ok, p_start[units][:, None] + jq[None, :], 0)).to(device)
            row_t = torch.from_numpy(np.where(r_ok, offsets[p_list[units]][:, None] + jr[None, :], 0)).to(device)
            q_ok_t = torch.from_numpy(q_ok).to(device)
            if len(units) == 1:  # one piece: no padding, its rows are one slice of the vectors
                a = int(offsets[p_list[units[0]]])
                scores = (xt[qi_t[pair_t[0]]] @ vec[a : a + r_max].T)[None]
            else:
                scores = torch.bmm(xt[qi_t[pair_t]], vec[row_t].transpose(1, 2))  # (B, q_max, r_max)
                scores.masked_fill_(~torch.from_numpy(r_ok).to(device)[:, None, :], float("-inf"))
            kk = min(k, r_max)
            top_s, top = torch.topk(scores, kk, dim=2, largest=True, sorted=False)  # (B, q_max, kk)
            rows = torch.gather(row_t[:, None, :].expand(-1, q_max, -1), 2, top)
            rows = torch.where(torch.isinf(top_s), torch.full_like(rows, -1), rows)
            dest = flat_t[pair_t][:, :, None] + torch.arange(kk, device=device)[None, None, :]
            cand_s.view(-1)[dest[q_ok_t]] = top_s[q_ok_t]
            cand_i.view(-1)[dest[q_ok_t]] = rows[q_ok_t].to(torch.int32)

        # pieces of about the same shape side by side (by rows, then queries): a block pads little
        order = np.lexsort((p_count, p_rows))
        a = 0
        while a < len(order):
            b = a + 1  # grow the block while its padded size fits
            q_max, r_max = int(p_count[order[a]]), int(p_rows[order[a]])
            while b < len(order):
                q2, r2 = max(q_max, int(p_count[order[b]])), max(r_max, int(p_rows[order[b]]))
                if (b + 1 - a) * (q2 * d + r2 * d + q2 * r2) > max_elems:
                    break
                q_max, r_max, b = q2, r2, b + 1
            score_block(order[a:b], q_max, r_max)
            a = b
    top_s, pos = torch.topk(cand_s, k, dim=1, largest=True, sorted=True)
    top_i = torch.gather(cand_i, 1, pos).to(torch.int64)
    top_i[torch.isinf(top_s)] = -1
    return top_s.cpu().numpy(), top_i.cpu().numpy()


def topk_agree(
    d_a: np.ndarray, i_a: np.ndarray, d_b: np.ndarray, i_b: np.ndarray, *, tol: float = 1e-5
) -> tuple[bool, float, int]:
    """Whether two top-k results (best first, missing = -inf / -1) agree up to float rounding:
    ``(agree, max score gap, rows that differ)``. They agree when every row has the same number
    of results, the scores rank by rank are within ``tol``, and every id one result ranks
    clearly inside its top k (more than ``tol`` above its k-th score) is in the other's row
    (ids at the k-th place may differ among candidates within ``tol`` of each other)."""
    if d_a.shape != d_b.shape or i_a.shape != i_b.shape or d_a.shape != i_a.shape:
        return False, float("inf"), len(d_a)
    n, k = i_a.shape
    if n == 0 or k == 0:
        return True, 0.0, 0
    bad = ((i_a >= 0).sum(1) != (i_b >= 0).sum(1)) | (np.isfinite(d_a) != np.isfinite(d_b)).any(1)
    both = np.isfinite(d_a) & np.isfinite(d_b)
    gaps = np.abs(np.where(both, d_a, 0.0).astype(np.float64) - np.where(both, d_b, 0.0).astype(np.float64))
    gap = float(gaps.max())
    bad |= (gaps > tol).any(1)
    span = int(max(i_a.max(), i_b.max())) + 2
    rows = np.arange(n, dtype=np.int64)[:, None] * span

    def missing(d_x: np.ndarray, i_x: np.ndarray, i_y: np.ndarray) -> np.ndarray:
        kth = np.where(np.isfinite(d_x), d_x, np.inf).min(1, keepdims=True)
        sure = (i_x >= 0) & (d_x > kth + tol)
        keys = (rows + i_x)[sure]
        found = np.isin(keys, (rows + i_y)[i_y >= 0])
        out = np.zeros(n, dtype=bool)
        np.logical_or.at(out, np.nonzero(sure)[0], ~found)
        return out

    bad |= missing(d_a, i_a, i_b) | missing(d_b, i_b, i_a)
    return not bad.any(), gap, int(bad.sum())
