"""Learned pair re-ranker: a gradient-boosted classifier scores every searched candidate pair,
and the edge rules (threshold, min2, symmetrise) run on its probability instead of the cosine.

The threshold rule looks at one number per pair. Two listings of one product often have a
modest cosine in a sparse neighbourhood, and two variants of one product line (250 ml vs
500 ml) a high one in a dense neighbourhood; the neighbour lists and the titles tell these
apart. The features of a candidate ``src -> dst`` come only from what the job already has:

- the pair's score in the final (blended) search and in the first, pre-INB search
  (``raw_score``; NaN when ``dst`` is not in the first list of ``src``),
- its position in both directions: ``rank`` of ``dst`` in the list of ``src``, ``rev_rank``
  of ``src`` in the list of ``dst`` (``k`` when absent),
- each end's neighbourhood: its best score, the mean of its top 10, its 5th score, how many
  neighbours score at least 0.6 / 0.8 (``*_src`` / ``*_dst``, as differences to the pair's
  score where that is the comparable quantity),
- pHash Hamming distance (NaN when either side has no hash),
- title tokens: word Jaccard, Jaccard of the numbers (sizes, model codes), how many of the
  two titles hold a number, the shorter length and the length difference (and, for models
  trained on :data:`NUMBER_FEATURE_SET`, the share of the fewer numbers the other title holds).

No embedding vector is joined to a pair (that would move ``2 * dim`` floats per candidate
through the shuffle); on the Shopee data the per-signal cosines that such a join gives add
nothing measurable over these features (docs/quality.md).

Two implementations build the same *candidate frame* (one row per candidate, the columns of
:data:`FRAME_COLUMNS`): :func:`candidate_frame` over row-index arrays (training, tuning; one
machine) and :func:`candidate_frame_spark` over the job's neighbour DataFrames. Both hand
the frame to :func:`pair_features`, the single place where features are computed, and the
tests check the two frames equal.

The model is LightGBM's own text format (``reranker.txt``: no pickle), with
``reranker.json`` recording the feature list and the pipeline settings the features were
computed under; ``jobs/train_reranker.py`` writes both (:mod:`listing_dedup.training.rerank_train`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.config.job import TRAIN_FEATURE_SETS
from listing_dedup.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

FORMAT = "listing-dedup-reranker"
VERSION = 1
MODEL_JSON = "reranker.json"
MODEL_TXT = "reranker.txt"

STATS_TOP = 10  # mean score over a listing's top 10 neighbours
KTH = 5  # a listing's 5th neighbour score (local density)
DEG_LEVELS = (0.6, 0.8)  # neighbours scoring at least these

FEATURES = (
    "score",
    "raw_score",
    "raw_gap",
    "rank",
    "rev_rank",
    "gap_src",
    "gap_dst",
    "rel_src",
    "rel_dst",
    "kth_src",
    "kth_dst",
    "deg_a_src",
    "deg_a_dst",
    "deg_b_src",
    "deg_b_dst",
    "phash_bits",
    "word_jaccard",
    "number_jaccard",
    "number_sides",
    "len_min",
    "len_diff",
)

# product identifiers in the two titles (lib/listing_dedup/embed/identifiers.py): a shared code
# (and the longest shared code's length: long codes are rare), a code conflict (both titles have
# codes, none shared), the number of quantity dimensions in conflict (16 GB vs 32 GB), the fewer
# codes of the two sides. Read by models trained with them (IDENTIFIER_FEATURE_SET); models
# trained on FEATURES alone keep loading and scoring as before.
ID_FEATURES = ("code_shared", "code_shared_len", "code_conflict", "quantity_conflicts", "codes_min")
IDENTIFIER_FEATURE_SET = FEATURES + ID_FEATURES
# the optional listing attributes (issue 30; the reader's ``model`` / ``brand``, null when a catalog
# lacks them): whether the brands agree (1), conflict (0) or cannot be compared (NaN; one brand alone
# counts as agreeing when the other title holds it) and whether the model numbers agree (1: equal, or
# one side's model found in the other's title; 0.5: one side's model not in the other's title; 0:
# both given and different; NaN: none given). A model trained on ATTRIBUTE_FEATURE_SET also reads
# each side's ``model`` into its codes (the ID_FEATURES); the older sets read the titles alone, as
# they were trained. The price is read and validated but not a feature: without its currency two
# shops' prices of one product are not comparable (a price ratio cost the leave-one-out model on
# wdc_products, offers in USD, EUR, GBP, AUD, ..., 0.55 -> 0.42 row-wise F1; docs/quality.md).
ATTR_FEATURES = ("brand_agree", "model_agree")
ATTRIBUTE_FEATURE_SET = IDENTIFIER_FEATURE_SET + ATTR_FEATURES
# the share of the numbers of the title with fewer numbers that the other title holds too (NaN
# when either has none; issue 30, seventh stop): one product in many shops' words, a short title
# against a long one whose extra numbers (a part number, a speed) the short one lacks, where the
# Jaccard of the numbers falls ("corsair vengeance lpx 8gb - pc4-21300" / "corsair 8gb 2666mhz
# cl16 vengeance lpx")
NUMBER_FEATURES = ("number_containment",)
NUMBER_FEATURE_SET = ATTRIBUTE_FEATURE_SET + NUMBER_FEATURES
# the pair-feature lists a model may be trained on
FEATURE_SETS = (FEATURES, IDENTIFIER_FEATURE_SET, ATTRIBUTE_FEATURE_SET, NUMBER_FEATURE_SET)
# the same by the name ``rerank.train.features`` gives them (config.job.TRAIN_FEATURE_SETS)
FEATURE_SET_NAMES = dict(zip(TRAIN_FEATURE_SETS, FEATURE_SETS, strict=True))
# the attributes a candidate frame carries for both ends when the listings have them
FRAME_ATTRIBUTES = ("model", "brand")
ATTRIBUTE_FRAME_COLUMNS = tuple(f"{a}_{s}" for a in FRAME_ATTRIBUTES for s in ("src", "dst"))
# the optional ``source`` attribute (issue 30): a listing's duplicate-free source, e.g. the shop whose
# deduplicated catalog it comes from when two shops' catalogs are matched. Not a feature: a
# constraint on the re-ranker's edges (:func:`one_to_one_keep`). Carried like the attributes above.
SOURCE = "source"
CARRIED = (*FRAME_ATTRIBUTES, SOURCE)
SOURCE_RULE = "source_rule"  # the column rerank_spark adds when the one-to-one rule ran

# a graph round's model reads FEATURES + these, computed from the previous round's probabilities
GRAPH_FEATURES = (
    "p",
    "p_rev",
    "two_sum",
    "two_count",
    "deg_src",
    "deg_dst",
    "psum_src",
    "psum_dst",
    "pgap_src",
    "pgap_dst",
    "prank",
)
GRAPH_FLOOR = 0.05  # default: pairs below this probability (both directions) are not in the graph

# per-listing neighbourhood statistics (of the final search), joined to both ends of a pair
STATS = ("top1", "mean_top", "kth", "deg_a", "deg_b")
FRAME_COLUMNS = (
    ("score", "raw_score", "raw_top1_src", "rank", "rev_rank")
    + tuple(f"{s}_src" for s in STATS)
    + tuple(f"{s}_dst" for s in STATS)
    + ("phash_src", "phash_dst", "title_src", "title_dst")
)

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


# --------------------------------------------------------------------------------------
# features (shared by both implementations)


def title_tokens(title: object) -> tuple[frozenset[str], frozenset[str]]:
    """(words, numbers) of a title, lower-cased; numbers keep their decimal part (``1.8``)."""
    t = "" if title is None or (isinstance(title, float) and title != title) else str(title).lower()
    return frozenset(_WORD.findall(t)), frozenset(_NUMBER.findall(t))


def _jaccard(a: frozenset, b: frozenset) -> float:
    u = len(a | b)
    return len(a & b) / u if u else np.nan


def _hash_value(h: object) -> int | None:
    if h is None or (isinstance(h, float) and h != h):
        return None
    s = str(h)
    return int(s, 16) if _HEX16.fullmatch(s) else None


def phash_bits(a: Sequence, b: Sequence) -> np.ndarray:
    """Hamming distance of two columns of 16-hex pHashes; NaN where either is missing/invalid."""
    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        va, vb = _hash_value(x), _hash_value(y)
        if va is not None and vb is not None:
            out[i] = (va ^ vb).bit_count()
    return out


def _text(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)


def identifier_features(
    titles_a: Sequence, titles_b: Sequence, models_a: Sequence | None = None, models_b: Sequence | None = None
) -> dict[str, np.ndarray]:
    """The :data:`ID_FEATURES` of each pair of titles (each title's identifiers extracted once);
    ``models_*``: each side's optional ``model`` attribute, merged into its codes (None: titles alone)."""
    from listing_dedup.embed.identifiers import identifiers

    cache: dict[tuple[str, str], Any] = {}

    def ids(t: object, m: object):
        key = (_text(t), _text(m))
        got = cache.get(key)
        if got is None:
            got = cache[key] = identifiers(key[0], key[1] or None)
        return got

    n = len(titles_a)
    ma = models_a if models_a is not None else [None] * n
    mb = models_b if models_b is not None else [None] * n
    out = {f: np.zeros(n) for f in ID_FEATURES}
    for i, (ta, tb) in enumerate(zip(titles_a, titles_b, strict=True)):
        a, b = ids(ta, ma[i]), ids(tb, mb[i])
        shared = a.codes & b.codes
        out["code_shared"][i] = float(bool(shared))
        out["code_shared_len"][i] = max((len(c) for c in shared), default=0)
        out["code_conflict"][i] = float(bool(a.codes) and bool(b.codes) and not shared)
        out["quantity_conflicts"][i] = sum(
            1 for d, v in a.quantities.items() if d in b.quantities and not v & b.quantities[d]
        )
        out["codes_min"][i] = min(len(a.codes), len(b.codes))
    return out


def _squash(v: object) -> str:
    """Lower-case letters and digits only: ``"Hewlett-Packard"`` -> ``"hewlettpackard"``."""
    return re.sub(r"[^0-9a-z]", "", _text(v).lower())


def attribute_features(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The :data:`ATTR_FEATURES` of a candidate frame (its ``model_*`` / ``brand_*`` columns; a
    frame without them: every value NaN)."""
    n = len(frame)

    def col(c: str) -> list:
        return frame[c].tolist() if c in frame.columns else [None] * n

    ta, tb = [_squash(t) for t in col("title_src")], [_squash(t) for t in col("title_dst")]
    brand, model = np.full(n, np.nan), np.full(n, np.nan)
    for out, a_vals, b_vals, alone_miss in (
        (brand, col("brand_src"), col("brand_dst"), np.nan),
        (model, col("model_src"), col("model_dst"), 0.5),
    ):
        for i, (va, vb) in enumerate(zip(a_vals, b_vals, strict=True)):
            a, b = _squash(va), _squash(vb)
            if len(a) < 2:
                a = ""
            if len(b) < 2:
                b = ""
            if a and b:
                out[i] = float(a in b or b in a)
            elif a or b:  # one side's value alone: found in the other's title?
                v, other = (a, tb[i]) if a else (b, ta[i])
                out[i] = 1.0 if v in other else alone_miss
    return {"brand_agree": brand, "model_agree": model}


def pair_features(frame: pd.DataFrame, names: Sequence[str] = FEATURES) -> np.ndarray:
    """float64 (rows, len(names)) from a candidate frame (columns of FRAME_COLUMNS); ``names``
    one of :data:`FEATURE_SETS` (the model's)."""
    f = {c: frame[c].to_numpy(dtype=np.float64) for c in FRAME_COLUMNS if not c.startswith(("phash", "title"))}
    score = f["score"]
    out = {
        "score": score,
        "raw_score": f["raw_score"],
        "raw_gap": f["raw_score"] - f["raw_top1_src"],
        "rank": f["rank"],
        "rev_rank": f["rev_rank"],
        "gap_src": score - f["top1_src"],
        "gap_dst": score - f["top1_dst"],
        "rel_src": score - f["mean_top_src"],
        "rel_dst": score - f["mean_top_dst"],
        "kth_src": f["kth_src"],
        "kth_dst": f["kth_dst"],
        "deg_a_src": f["deg_a_src"],
        "deg_a_dst": f["deg_a_dst"],
        "deg_b_src": f["deg_b_src"],
        "deg_b_dst": f["deg_b_dst"],
        "phash_bits": phash_bits(frame["phash_src"].tolist(), frame["phash_dst"].tolist()),
    }
    n = len(frame)
    wj, nj, ns, nc = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    cache: dict[str, tuple[frozenset, frozenset]] = {}

    def tok(t: object) -> tuple[frozenset, frozenset]:
        key = "" if t is None or (isinstance(t, float) and t != t) else str(t)
        got = cache.get(key)
        if got is None:
            got = cache[key] = title_tokens(key)
        return got

    ta, tb = frame["title_src"].tolist(), frame["title_dst"].tolist()
    for i in range(n):
        (wa, na), (wb, nb) = tok(ta[i]), tok(tb[i])
        wj[i] = _jaccard(wa, wb)
        nj[i] = _jaccard(na, nb)
        ns[i] = (len(na) > 0) + (len(nb) > 0)
        nc[i] = len(na & nb) / min(len(na), len(nb)) if na and nb else np.nan
    la = np.array([len(t) if isinstance(t, str) else 0 for t in ta], dtype=np.float64)
    lb = np.array([len(t) if isinstance(t, str) else 0 for t in tb], dtype=np.float64)
    out.update(
        word_jaccard=wj,
        number_jaccard=nj,
        number_sides=ns,
        number_containment=nc,
        len_min=np.minimum(la, lb),
        len_diff=np.abs(la - lb),
    )
    with_attributes = any(f in names for f in ATTR_FEATURES)
    if any(f in names for f in ID_FEATURES):
        models = (
            (frame["model_src"].tolist(), frame["model_dst"].tolist())
            if with_attributes and "model_src" in frame.columns
            else (None, None)
        )
        out.update(identifier_features(ta, tb, *models))
    if with_attributes:
        out.update(attribute_features(frame))
    return np.column_stack([out[name] for name in names]) if n else np.zeros((0, len(names)))


# --------------------------------------------------------------------------------------
# graph rounds: features of a pair from the previous round's probabilities around it


def graph_features(src: np.ndarray, dst: np.ndarray, p: np.ndarray, n: int, floor: float) -> np.ndarray:
    """float64 (rows, len(GRAPH_FEATURES)) for the candidates ``src -> dst`` with probability ``p``
    (row indices < ``n``; each (src, dst) once).

    The undirected graph E holds every pair whose larger probability of the two directions is
    >= ``floor``. Per pair: its own ``p``, the reverse candidate's (NaN when there is none),
    the two-hop evidence ``sum_l P(src,l) P(l,dst)`` over E and the number of such ``l`` with
    both probabilities > 0.5, each end's degree (> 0.5) and probability mass in E, the gap to
    each end's best probability in E (0 when it has none), and the rank of ``dst`` among the
    candidates of ``src`` by probability (ties: smaller dst first)."""
    import scipy.sparse as sp

    p = p.astype(np.float64)
    m = len(p)
    if m == 0:
        return np.zeros((0, len(GRAPH_FEATURES)))
    P = sp.csr_matrix((p, (src, dst)), shape=(n, n))
    sym = P.maximum(P.T).tocsr()
    sym.data[sym.data < floor] = 0.0
    sym.eliminate_zeros()
    strong = sym.copy()
    strong.data = (strong.data > 0.5).astype(np.float64)
    strong.eliminate_zeros()
    two_sum = np.asarray((sym @ sym)[src, dst]).ravel()
    two_count = np.asarray((strong @ strong)[src, dst]).ravel()
    deg = np.asarray(strong.sum(axis=1)).ravel()
    psum = np.asarray(sym.sum(axis=1)).ravel()
    pmax = np.asarray(sym.max(axis=1).todense()).ravel()
    p_rev = _lookup(src, dst, p, dst, src, np.nan)
    order = np.lexsort((dst, -p, src))
    prank = np.empty(m)
    prank[order] = ranks_of(src[order])
    cols = {
        "p": p,
        "p_rev": p_rev,
        "two_sum": two_sum,
        "two_count": two_count,
        "deg_src": deg[src],
        "deg_dst": deg[dst],
        "psum_src": psum[src],
        "psum_dst": psum[dst],
        "pgap_src": p - pmax[src],
        "pgap_dst": p - pmax[dst],
        "prank": prank,
    }
    return np.column_stack([cols[c] for c in GRAPH_FEATURES])


# --------------------------------------------------------------------------------------
# candidate frame on one machine (row indices)


def ranks_of(src: np.ndarray) -> np.ndarray:
    """0-based position of each row within its ``src`` run (rows sorted by src, score desc)."""
    if len(src) == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.r_[True, src[1:] != src[:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(src)), 0))
    return np.arange(len(src)) - starts


def listing_stats(src: np.ndarray, score: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-listing neighbourhood statistics of a neighbour list sorted like
    :func:`listing_dedup.quality.tuning.knn`; NaN (top1, mean_top, kth) or 0 (deg) without neighbours."""
    rank = ranks_of(src)
    s = score.astype(np.float64)
    top1 = np.full(n, np.nan)
    first = rank == 0
    top1[src[first]] = s[first]
    in_top = rank < STATS_TOP
    n_top = np.bincount(src[in_top], minlength=n)
    mean_top = np.where(n_top > 0, np.bincount(src[in_top], s[in_top], minlength=n) / np.maximum(n_top, 1), np.nan)
    kth = np.full(n, np.nan)
    at_k = rank == KTH - 1
    kth[src[at_k]] = s[at_k]
    deg_a = np.bincount(src, (s >= DEG_LEVELS[0]).astype(np.float64), minlength=n)
    deg_b = np.bincount(src, (s >= DEG_LEVELS[1]).astype(np.float64), minlength=n)
    return {"top1": top1, "mean_top": mean_top, "kth": kth, "deg_a": deg_a, "deg_b": deg_b}


def _lookup(src: np.ndarray, dst: np.ndarray, values: np.ndarray, qs: np.ndarray, qd: np.ndarray, fill: float):
    """values[(src, dst) == (qs, qd)] for each query pair, ``fill`` where the pair is absent."""
    out = np.full(len(qs), fill, dtype=np.float64)
    if len(src) == 0 or len(qs) == 0:
        return out
    n = int(max(src.max(), dst.max(), qs.max(), qd.max())) + 1
    code = src.astype(np.int64) * n + dst
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    q = qs.astype(np.int64) * n + qd
    pos = np.minimum(np.searchsorted(sorted_code, q), len(sorted_code) - 1)
    hit = sorted_code[pos] == q
    out[hit] = values[order][pos[hit]].astype(np.float64)
    return out


def candidate_frame(
    base: tuple[np.ndarray, np.ndarray, np.ndarray],
    final: tuple[np.ndarray, np.ndarray, np.ndarray],
    titles: Sequence,
    phashes: Sequence,
    k: int,
    min_score: float = -1.0,
    attributes: Mapping[str, Sequence] | None = None,
) -> pd.DataFrame:
    """The candidate frame over row indices: ``base`` is the first (pre-INB) search and
    ``final`` the last one, each ``(src, dst, score)`` sorted like ``tuning.knn``. Rows are the
    final candidates with ``score >= min_score``; columns ``src``, ``dst`` (row indices) and
    those of :data:`FRAME_COLUMNS`, then ``<a>_src`` / ``<a>_dst`` for each of
    :data:`FRAME_ATTRIBUTES` and :data:`SOURCE` that ``attributes`` (name -> one value a listing) holds."""
    n = len(titles)
    fs, fd, fsc = final
    bs, bd, bsc = base
    rank = ranks_of(fs)
    stats = listing_stats(fs, fsc, n)
    raw_top1 = listing_stats(bs, bsc, n)["top1"]
    keep = fsc.astype(np.float64) >= min_score
    s, d = fs[keep], fd[keep]
    titles_arr = np.asarray(titles, dtype=object)
    phash_arr = np.asarray(phashes, dtype=object)
    cols: dict[str, Any] = {
        "src": s,
        "dst": d,
        "score": fsc[keep].astype(np.float64),
        "raw_score": _lookup(bs, bd, bsc, s, d, np.nan),
        "raw_top1_src": raw_top1[s],
        "rank": rank[keep].astype(np.float64),
        "rev_rank": _lookup(fs, fd, rank, d, s, float(k)),
    }
    for name in STATS:
        cols[f"{name}_src"] = stats[name][s]
        cols[f"{name}_dst"] = stats[name][d]
    cols.update(phash_src=phash_arr[s], phash_dst=phash_arr[d], title_src=titles_arr[s], title_dst=titles_arr[d])
    for a in CARRIED:
        if attributes is not None and attributes.get(a) is not None:
            vals = pd.Series(list(attributes[a]), dtype=object)
            arr = vals.where(vals.notna(), None).to_numpy(dtype=object)
            cols[f"{a}_src"], cols[f"{a}_dst"] = arr[s], arr[d]
    return pd.DataFrame(cols)


def frame_attributes(df: pd.DataFrame) -> dict[str, Sequence] | None:
    """The :data:`FRAME_ATTRIBUTES` and :data:`SOURCE` columns ``df`` has (for
    :func:`candidate_frame`), None if none."""
    got = {a: df[a].tolist() for a in CARRIED if a in df.columns}
    return got or None


# --------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class Reranker:
    """A trained re-ranker: the pair model (round 0) and the graph rounds' models, each
    LightGBM model text, plus what they were trained under (``meta``: reranker.json)."""

    model_texts: tuple[str, ...]
    meta: Mapping[str, Any]

    @property
    def features(self) -> tuple[str, ...]:
        """The pair features it reads (one of :data:`FEATURE_SETS`)."""
        return tuple(self.meta.get("features", FEATURES))

    @property
    def graph_rounds(self) -> int:
        return len(self.model_texts) - 1

    @property
    def graph_floor(self) -> float:
        return float(self.meta.get("graph_floor", GRAPH_FLOOR))

    def booster(self, r: int = 0):
        text = self.model_texts[r]
        return _booster(text, hashlib.sha256(text.encode()).hexdigest()[:16])

    def pair_probability(self, X: np.ndarray) -> np.ndarray:
        """Round 0 on pair features (rows of :func:`pair_features`)."""
        if len(X) == 0:
            return np.zeros(0)
        return np.asarray(self.booster(0).predict(X, num_threads=1), dtype=np.float64)

    def graph_probability(self, r: int, X: np.ndarray, G: np.ndarray) -> np.ndarray:
        """Graph round ``r`` (1-based) on pair features + graph features of round ``r - 1``."""
        if len(X) == 0:
            return np.zeros(0)
        return np.asarray(self.booster(r).predict(np.column_stack([X, G]), num_threads=1), dtype=np.float64)

    def round_probabilities(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """Match probability of every candidate of a whole catalog's frame (float64) after each
        round: the pair model's, then each graph round's over all the frame's candidates."""
        X = pair_features(frame, self.features)
        out = [self.pair_probability(X)]
        if self.graph_rounds and len(frame):
            codes, uniq = pd.factorize(pd.concat([frame["src"], frame["dst"]], ignore_index=True))
            src, dst = codes[: len(frame)], codes[len(frame) :]
            for r in range(1, self.graph_rounds + 1):
                G = graph_features(src, dst, out[-1], len(uniq), self.graph_floor)
                out.append(self.graph_probability(r, X, G))
        return out

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Match probability after the last round (:meth:`round_probabilities`)."""
        return self.round_probabilities(frame)[-1]


_BOOSTERS: dict[str, Any] = {}


def _booster(text: str, key: str):
    """One LightGBM booster per model per Python worker (Spark reuses workers)."""
    b = _BOOSTERS.get(key)
    if b is None:
        import lightgbm as lgb

        b = _BOOSTERS[key] = lgb.Booster(model_str=text)
    return b


def pipeline_fingerprint(cfg) -> dict[str, Any]:
    """The settings the features depend on (recorded in reranker.json, checked by the job)."""
    signals = list(cfg.dense_signals())
    weights = cfg.fusion.weights(signals)
    return {
        "signals": sorted(weights),
        "fusion": {s: round(w, 6) for s, w in sorted(weights.items())},
        "inb_thresholds": [float(t) for t in cfg.inb.thresholds],
        "k": int(cfg.index.k),
        "text_model": cfg.embed.text.model if "text" in weights else None,
        "lexical": dataclasses.asdict(cfg.embed.lexical.params()) if "lexical" in weights else None,
        "features": {"stats_top": STATS_TOP, "kth": KTH, "deg_levels": list(DEG_LEVELS)},
    }


def fingerprint_diffs(meta: Mapping[str, Any], cfg) -> dict[str, str]:
    """The pipeline settings this run computes the features with differently from the training
    run: setting -> ``trained with ..., this run ...``; the text model is compared by name."""
    want, have = meta.get("pipeline", {}), pipeline_fingerprint(cfg)
    keys = [k for k in ("signals", "fusion", "inb_thresholds", "k", "lexical", "features") if want.get(k) != have[k]]
    if (
        want.get("text_model") != have["text_model"]
        and Path(str(want.get("text_model"))).name != Path(str(have["text_model"])).name
    ):
        keys.append("text_model")
    return {k: f"trained with {want.get(k)!r}, this run {have[k]!r}" for k in keys}


def _listed(diffs: Mapping[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in diffs.items())


def check_fingerprint(meta: Mapping[str, Any], cfg, model_dir: str) -> None:
    """ConfigError when this run computes features differently from the training run (a
    warning when only the text model differs)."""
    diffs = fingerprint_diffs(meta, cfg)
    hard = {k: v for k, v in diffs.items() if k != "text_model"}
    if hard:
        raise ConfigError(
            f"config key 'rerank.model': {model_dir} was trained on other pipeline settings ({_listed(hard)}); "
            "pass the overlay.yaml it wrote (it sets them) or retrain it with jobs/train_reranker.py"
        )
    if "text_model" in diffs:
        log.warning("rerank.model %s: text_model %s: its probabilities may be off", model_dir, diffs["text_model"])


def builtin_reranker(cfg) -> tuple[Reranker | None, str]:
    """The shipped re-ranker ``rerank.model`` names (:data:`BUILTIN` or :data:`BUILTIN_TITLES`)
    when this run computes its features as it was trained (the defaults' pipeline, the packaged
    MiniLM); otherwise (None, why): the threshold rule decides, which is what a run with other
    settings was tuned for."""
    model = load_reranker(cfg.rerank.model)
    diffs = fingerprint_diffs(model.meta, cfg)
    if diffs:
        why = (
            f"the built-in re-ranker (rerank.model: {cfg.rerank.model}) was trained on the default pipeline and this "
            f"run's differs ({_listed(diffs)}): the threshold rule (match) decides"
        )
        return None, why
    return model, ""


def graph_model_file(r: int) -> str:
    return f"reranker_graph{r}.txt"


BUILTIN = "builtin"  # rerank.model: the re-ranker shipped in the package (listing_dedup/models/reranker)
# the shipped titles-only re-ranker (listing_dedup/models/reranker_titles: trained on catalogs
# without pHash, other shops' included, with the identifier features); a run of ``builtin`` on a
# catalog where fewer than MIN_PHASH_SHARE of the listings have a pHash gets it (for_coverage)
BUILTIN_TITLES = "builtin-titles"
BUILTIN_DIRS = {BUILTIN: "reranker", BUILTIN_TITLES: "reranker_titles"}
MIN_PHASH_SHARE = 0.5


def model_dir_of(model: str | Path):
    """The directory ``rerank.model`` names: a path, or :data:`BUILTIN` for the shipped model
    (read through importlib.resources, so it also loads from the --py-files zip)."""
    if str(model) in BUILTIN_DIRS:
        from importlib.resources import files

        return files("listing_dedup") / "models" / BUILTIN_DIRS[str(model)]
    return Path(model)


def for_coverage(cfg, phash_share: float, titles_model: str = BUILTIN_TITLES) -> tuple[Any, str]:
    """The conf a catalog runs under, by its signals' coverage: when ``cfg`` runs the built-in
    re-ranker (``rerank.model: builtin``, trained with pHash) and fewer than
    :data:`MIN_PHASH_SHARE` of the kept listings have a pHash, the built-in titles-only one
    (:data:`BUILTIN_TITLES`) with the edge rule its training chose (reranker.json) instead of
    the threshold rule; else ``cfg`` unchanged. Returns (conf, a note saying so or "").
    ``titles_model``: another titles-only model directory (a bench's, trained leaving a catalog out)."""
    if not cfg.rerank.enabled or cfg.rerank.model != BUILTIN or phash_share >= MIN_PHASH_SHARE:
        return cfg, ""
    meta = load_reranker(titles_model).meta
    t, m2 = float(meta["threshold"]), meta.get("min2_threshold")
    rr = dataclasses.replace(
        cfg.rerank,
        model=str(titles_model),
        threshold=t,
        min2=m2 is not None,
        min2_threshold=float(m2) if m2 is not None else t,
        min_score=float(meta.get("min_score", cfg.rerank.min_score)),
    )
    note = (
        f"{phash_share:.0%} of the listings have a pHash (under {MIN_PHASH_SHARE:.0%}): the built-in titles-only "
        f"re-ranker ({titles_model}, threshold {t:g}) decides instead of the one trained with pHash"
    )
    return dataclasses.replace(cfg, rerank=rr), note


def reranker_for(cfg) -> tuple[Reranker | None, str]:
    """The re-ranker a run under ``cfg`` uses, and why none when the conf asks for the built-in
    one on other settings: None when ``rerank.enabled`` is off; the shipped model
    (:func:`builtin_reranker`); or the named directory, checked against the pipeline (a
    ConfigError when it was trained on other settings)."""
    if not cfg.rerank.enabled:
        return None, ""
    if cfg.rerank.model in BUILTIN_DIRS:
        return builtin_reranker(cfg)
    model = load_reranker(cfg.rerank.model)
    check_fingerprint(model.meta, cfg, cfg.rerank.model)
    return model, ""


def group_margin_of(cfg, model: Reranker) -> float:
    """The group margin on the re-ranker's probabilities: ``rerank.group_margin``, else the one
    its training chose out of fold (reranker.json ``group_margin``), else ``guard.group_margin``."""
    if cfg.rerank.group_margin is not None:
        return float(cfg.rerank.group_margin)
    chosen = model.meta.get("group_margin")
    return float(chosen) if chosen is not None else float(cfg.guard.group_margin)


def load_reranker(model_dir: str | Path) -> Reranker:
    """Read a model directory written by ``jobs/train_reranker.py`` (on the driver);
    ``"builtin"``: the shipped one."""
    d = model_dir_of(model_dir)
    try:
        meta = json.loads((d / MODEL_JSON).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"config key 'rerank.model': cannot read re-ranker model directory {d}: {e}") from None
    where = f"config key 'rerank.model': {d / MODEL_JSON}"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a listing-dedup re-ranker (format != {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ConfigError(f"{where}: unsupported version {meta.get('version')!r} (this code reads {VERSION})")
    if tuple(meta.get("features", ())) not in FEATURE_SETS or list(meta.get("graph_features", [])) != list(
        GRAPH_FEATURES
    ):
        raise ConfigError(f"{where}: its feature lists differ from this code's; retrain it")
    rounds = int(meta.get("graph_rounds", 0))
    files = [MODEL_TXT] + [graph_model_file(r) for r in range(1, rounds + 1)]
    try:
        texts = tuple((d / f).read_text() for f in files)
    except OSError as e:
        raise ConfigError(f"config key 'rerank.model': cannot read re-ranker model directory {d}: {e}") from None
    model = Reranker(texts, meta)
    for r, f in enumerate(files):
        try:
            n = model.booster(r).num_feature()
        except Exception as e:  # noqa: BLE001 - lightgbm raises its own error type
            raise ModelError(f"{d / f}: not a LightGBM model: {e}") from None
        want = len(model.features) + (len(GRAPH_FEATURES) if r else 0)
        if n != want:
            raise ModelError(f"{d / f}: model has {n} features, expected {want}")
    return model


# --------------------------------------------------------------------------------------
# prior shift (issue 30): a catalog's share of true matches among its candidates, read from the
# model's own probabilities without labels, moves the probability thresholds

PRIOR_BINS = 1000  # probabilities are counted in this many bins (the job collects the counts)


def estimate_prior(p: np.ndarray, weight: np.ndarray | None, train_prior: float, iters: int = 500) -> float:
    """The share of matches among a catalog's candidates, re-estimated from the model's
    probabilities ``p`` (each counted ``weight`` times; a histogram's bin centres and counts) by
    the EM of Saerens, Latinne and Decaestecker (2002, "Adjusting the outputs of a classifier to
    new a priori probabilities"): the posteriors are re-weighted by the ratio of the new prior to
    the training one (``train_prior``: the positive share of the training candidates) and the
    prior set to their mean, until it stops moving. No labels: the model's probabilities are
    taken as calibrated given the pair, only the share of matches is assumed to differ."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    w = np.ones_like(p) if weight is None else np.asarray(weight, dtype=np.float64)
    total = w.sum()
    if total <= 0 or not 0.0 < train_prior < 1.0:
        return float(train_prior)
    prior = float(train_prior)
    for _ in range(iters):
        r, q = prior / train_prior, (1.0 - prior) / (1.0 - train_prior)
        post = r * p / (r * p + q * (1.0 - p))
        new = float((w * post).sum() / total)
        if abs(new - prior) < 1e-9:
            return new
        prior = new
    return prior


def shifted_threshold(t: float, prior: float, train_prior: float) -> float:
    """The probability threshold under the training prior that a threshold ``t`` on the
    posterior under ``prior`` comes to (the re-weighted posterior >= t, solved for the model's
    probability): above ``t`` where the catalog holds fewer matches than the training rows."""
    if not 0.0 < train_prior < 1.0 or t <= 0.0 or t >= 1.0:
        return float(t)
    prior = min(max(prior, 1e-9), 1.0 - 1e-9)
    r, q = prior / train_prior, (1.0 - prior) / (1.0 - train_prior)
    return float(t * q / (r * (1.0 - t) + t * q))


def histogram_of(p: np.ndarray, bins: int = PRIOR_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and counts of probabilities in [0, 1] (what the job collects from Spark)."""
    idx = np.clip(np.floor(np.asarray(p, dtype=np.float64) * bins), 0, bins - 1).astype(np.int64)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    return (np.arange(bins) + 0.5) / bins, counts


def prior_shifted(rerank_conf, model: Reranker, centres: np.ndarray, counts: np.ndarray):
    """``(conf, note)``: ``rerank_conf`` (a RerankConf) with its threshold and min2 threshold
    moved to the catalog's estimated share of matches (:func:`estimate_prior`) when the model's
    reranker.json asks for it (``prior_shift: true`` with its ``train_prior``); else unchanged
    and "". ``centres, counts``: the histogram of the catalog's candidate probabilities."""
    meta = model.meta
    train_prior = meta.get("train_prior")
    if not meta.get("prior_shift") or train_prior is None or float(np.sum(counts)) <= 0:
        return rerank_conf, ""
    tp = float(train_prior)
    prior = estimate_prior(centres, counts, tp)
    t = shifted_threshold(rerank_conf.threshold, prior, tp)
    m2 = min(shifted_threshold(rerank_conf.min2_threshold, prior, tp), t)
    conf = dataclasses.replace(rerank_conf, threshold=round(t, 6), min2_threshold=round(m2, 6))
    note = (
        f"prior shift: {prior:.2%} of the candidates estimated to match (training {tp:.2%}): "
        f"probability threshold {rerank_conf.threshold:g} -> {t:.3f}, min2 {rerank_conf.min2_threshold:g} -> {m2:.3f}"
    )
    return conf, note


def _known(values: Sequence) -> np.ndarray:
    """Whether each source value is given (not None / NaN / empty)."""
    v = pd.Series(list(values), dtype=object)
    return (v.notna() & (v.astype(str).str.len() > 0)).to_numpy()


def one_to_one_keep(src: np.ndarray, dst: np.ndarray, p: np.ndarray, source_src: Sequence, source_dst: Sequence):
    """Which candidate rows ``src -> dst`` (probability ``p``) the source constraint leaves to the
    edge rule. Where both ends name their :data:`SOURCE`, each source is taken as duplicate-free
    (two shops' deduplicated catalogs): two listings of one source are never a match, and a
    listing matches at most one listing of each other source, so a row is kept only when ``dst``
    is the most probable candidate of ``src`` among ``dst``'s source and ``src`` the most
    probable of ``dst`` among ``src``'s (both directions scored; ties: the smaller ``dst``). A
    row with a source missing on either end is kept (unconstrained). The rule's threshold then
    applies to the kept rows as before."""
    src, dst, p = np.asarray(src), np.asarray(dst), np.asarray(p, dtype=np.float64)
    known = _known(source_src) & _known(source_dst)
    ss = np.asarray(pd.Series(list(source_src), dtype=object).astype(str))
    sd = np.asarray(pd.Series(list(source_dst), dtype=object).astype(str))
    keep = ~known
    idx = np.flatnonzero(known & (ss != sd))
    if idx.size:
        f = pd.DataFrame({"src": src[idx], "dst": dst[idx], "p": p[idx], "sd": sd[idx]}, index=idx)
        f = f.sort_values(["src", "sd", "p", "dst"], ascending=[True, True, False, True], kind="mergesort")
        best = f.drop_duplicates(["src", "sd"], keep="first")
        chosen = set(zip(best["src"].tolist(), best["dst"].tolist(), strict=True))
        mutual = [(d, s) in chosen for s, d in zip(best["src"].tolist(), best["dst"].tolist(), strict=True)]
        keep[best.index.to_numpy()[np.asarray(mutual, dtype=bool)]] = True
    return keep


def source_constrained(frame: pd.DataFrame, p: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(p, applied)``: the candidate probabilities with the rows :func:`one_to_one_keep` drops
    set to 0, and whether the frame names sources at all (its ``source_src`` / ``source_dst``
    columns; else ``p`` unchanged and False)."""
    cols = (f"{SOURCE}_src", f"{SOURCE}_dst")
    if not all(c in frame.columns for c in cols):
        return p, False
    keep = one_to_one_keep(frame["src"].to_numpy(), frame["dst"].to_numpy(), p, frame[cols[0]], frame[cols[1]])
    return np.where(keep, p, 0.0), True


def one_to_one_spark(scored):
    """:func:`one_to_one_keep` on Spark: ``scored`` has ``src, dst, p`` (double) and
    ``source_src, source_dst``; returns it with ``p`` set to 0 where the rule drops the row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ss, sd = F.col(f"{SOURCE}_src"), F.col(f"{SOURCE}_dst")
    known = ss.isNotNull() & sd.isNotNull() & (F.length(ss) > 0) & (F.length(sd) > 0)
    w = Window.partitionBy("src", f"{SOURCE}_dst").orderBy(F.col("p").desc(), F.col("dst").asc())
    best = (
        scored.where(known & (ss != sd))
        .withColumn("_r", F.row_number().over(w))
        .where(F.col("_r") == 1)
        .select("src", "dst")
    )
    rev = best.select(F.col("dst").alias("src"), F.col("src").alias("dst"))
    mutual = best.join(rev, ["src", "dst"]).withColumn("_keep", F.lit(True))
    out = scored.join(mutual, ["src", "dst"], "left")
    keep = ~known | F.coalesce(F.col("_keep"), F.lit(False))
    return out.withColumn("p", F.when(keep, F.col("p")).otherwise(F.lit(0.0))).drop("_keep")


def probability_histogram_spark(scored, bins: int = PRIOR_BINS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`histogram_of` of a scored frame's ``score`` (one aggregation; <= ``bins`` rows
    reach the driver)."""
    from pyspark.sql import functions as F

    b = F.least(F.greatest(F.floor(F.col("score") * bins), F.lit(0)), F.lit(bins - 1)).cast("int")
    rows = scored.select(b.alias("b")).groupBy("b").count().collect()
    counts = np.zeros(bins)
    for r in rows:
        counts[int(r["b"])] = float(r["count"])
    return (np.arange(bins) + 0.5) / bins, counts


# under the one-to-one rule a listing keeps at most one candidate of each other source; keeping one
# candidate of match probability p raises the listing's expected row-wise F1 iff p > 0.5 (kept: p *
# 1 + (1 - p) * 2/3; not kept: p * 2/3 + (1 - p) * 1), so the rule's threshold is at least this
ONE_CANDIDATE_P = 0.5


def source_rule(rerank_conf):
    """The re-ranker's rule (a RerankConf) where the listings name their sources: its thresholds
    raised to at least :data:`ONE_CANDIDATE_P`, and no prior shift (the one-to-one rule, not
    the catalog's estimated share of matches, bounds how many candidates a listing keeps)."""
    t = max(float(rerank_conf.threshold), ONE_CANDIDATE_P)
    return dataclasses.replace(rerank_conf, threshold=t, min2_threshold=min(float(rerank_conf.min2_threshold), t))


SOURCE_NOTE = (
    "sources: the listings name their duplicate-free source; a listing matches at most its most probable "
    "candidate of each other source, when it is that one's too, at probability >= {t:g} (no prior shift)"
)


def rerank_rule_spark(cfg, model: Reranker, scored):
    """The edge rule (a MatchConf) of the re-ranker's run on the job's scored candidates, and a
    note: ``rerank.match()``, its thresholds prior-shifted where the model asks
    (:func:`prior_shifted`); where the listings name their sources (``scored`` has the
    ``source_rule`` column of :func:`rerank_spark`) :func:`source_rule`'s instead."""
    if SOURCE_RULE in scored.columns:
        rr = source_rule(cfg.rerank)
        note = SOURCE_NOTE.format(t=rr.threshold)
        log.info("%s", note)
        return rr.match(), note
    if not model.meta.get("prior_shift"):
        return cfg.rerank.match(), ""
    conf, note = prior_shifted(cfg.rerank, model, *probability_histogram_spark(scored))
    if note:
        log.info("%s", note)
    return conf.match(), note


# --------------------------------------------------------------------------------------
# Spark layer


def candidate_frame_spark(base_nbrs, final_nbrs, listings, k: int, min_score: float = -1.0):
    """The candidate frame on Spark (lazy): ``base_nbrs`` / ``final_nbrs`` are the first and the
    last search (``src, dst, score``), ``listings`` has ``posting_id, title, image_phash`` and
    any of the optional :data:`FRAME_ATTRIBUTES` and :data:`SOURCE` (carried to both ends, as
    :func:`candidate_frame`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst").asc())
    fin = final_nbrs.select("src", "dst", F.col("score").cast("double").alias("score")).withColumn(
        "rank", (F.row_number().over(w) - 1).cast("double")
    )
    s = F.col("score")
    stats = fin.groupBy("src").agg(
        F.max(s).alias("top1"),
        F.avg(F.when(F.col("rank") < STATS_TOP, s)).alias("mean_top"),
        F.max(F.when(F.col("rank") == KTH - 1, s)).alias("kth"),
        F.sum(F.when(s >= DEG_LEVELS[0], 1.0).otherwise(0.0)).alias("deg_a"),
        F.sum(F.when(s >= DEG_LEVELS[1], 1.0).otherwise(0.0)).alias("deg_b"),
    )
    base = base_nbrs.select("src", "dst", F.col("score").cast("double").alias("raw_score"))
    raw_top1 = base.groupBy("src").agg(F.max("raw_score").alias("raw_top1_src"))
    rev = fin.select(F.col("dst").alias("src"), F.col("src").alias("dst"), F.col("rank").alias("rev_rank"))
    attrs = [a for a in CARRIED if a in listings.columns]  # the optional attributes it has
    info = listings.select(
        "posting_id",
        F.col("title"),
        F.col("image_phash").cast("string").alias("phash"),
        *[F.col(a).alias(f"_a_{a}") for a in attrs],
    )

    def side(suffix: str, key: str):
        cols = [F.col(c).alias(f"{c}_{suffix}") for c in STATS]
        return stats.select(F.col("src").alias(key), *cols)

    def side_info(suffix: str, key: str):
        return info.select(
            F.col("posting_id").alias(key),
            F.col("title").alias(f"title_{suffix}"),
            F.col("phash").alias(f"phash_{suffix}"),
            *[F.col(f"_a_{a}").alias(f"{a}_{suffix}") for a in attrs],
        )

    cand = fin.where(s >= F.lit(float(min_score)))
    return (
        cand.join(side("src", "src"), "src")
        .join(side("dst", "dst"), "dst", "left")
        .join(base, ["src", "dst"], "left")
        .join(raw_top1, "src", "left")
        .join(rev, ["src", "dst"], "left")
        .withColumn("rev_rank", F.coalesce(F.col("rev_rank"), F.lit(float(k))))
        .join(side_info("src", "src"), "src", "left")
        .join(side_info("dst", "dst"), "dst", "left")
        .select("src", "dst", *FRAME_COLUMNS, *[f"{a}_{x}" for a in attrs for x in ("src", "dst")])
    )


def graph_features_spark(scored, floor: float):
    """:func:`graph_features` on Spark: ``scored`` (src, dst, p) -> src, dst + GRAPH_FEATURES."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = F.col("p")
    und = (
        scored.select("src", "dst", "p")
        .unionByName(scored.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "p"))
        .groupBy("src", "dst")
        .agg(F.max("p").alias("w"))
        .where(F.col("w") >= F.lit(float(floor)))
    )
    strong = F.when(F.col("w") > 0.5, 1.0).otherwise(0.0)
    node = und.groupBy("src").agg(F.sum(strong).alias("deg"), F.sum("w").alias("psum"), F.max("w").alias("pmax"))
    a = und.select(F.col("src").alias("i"), F.col("dst").alias("l"), F.col("w").alias("wa"))
    b = und.select(F.col("src").alias("l"), F.col("dst").alias("j"), F.col("w").alias("wb"))
    two = (
        a.join(b, "l")
        .where(F.col("i") != F.col("j"))
        .groupBy(F.col("i").alias("src"), F.col("j").alias("dst"))
        .agg(
            F.sum(F.col("wa") * F.col("wb")).alias("two_sum"),
            F.sum(F.when((F.col("wa") > 0.5) & (F.col("wb") > 0.5), 1.0).otherwise(0.0)).alias("two_count"),
        )
    )
    rev = scored.select(F.col("dst").alias("src"), F.col("src").alias("dst"), F.col("p").alias("p_rev"))
    w = Window.partitionBy("src").orderBy(p.desc(), F.col("dst").asc())

    def side(end: str):  # the node statistics of one end of the pair, keyed by that end
        return node.select(
            F.col("src").alias(end),
            F.col("deg").alias(f"deg_{end}"),
            F.col("psum").alias(f"psum_{end}"),
            F.col("pmax").alias(f"_pmax_{end}"),
        )

    g = (
        scored.select("src", "dst", "p")
        .withColumn("prank", (F.row_number().over(w) - 1).cast("double"))
        .join(rev, ["src", "dst"], "left")
        .join(two, ["src", "dst"], "left")
        .join(side("src"), "src", "left")
        .join(side("dst"), "dst", "left")
    )
    zero = F.lit(0.0)
    return g.select(
        "src",
        "dst",
        p.alias("p"),
        "p_rev",
        F.coalesce("two_sum", zero).alias("two_sum"),
        F.coalesce("two_count", zero).alias("two_count"),
        F.coalesce("deg_src", zero).alias("deg_src"),
        F.coalesce("deg_dst", zero).alias("deg_dst"),
        F.coalesce("psum_src", zero).alias("psum_src"),
        F.coalesce("psum_dst", zero).alias("psum_dst"),
        (p - F.coalesce("_pmax_src", zero)).alias("pgap_src"),
        (p - F.coalesce("_pmax_dst", zero)).alias("pgap_dst"),
        "prank",
    )


def rerank_spark(frame_df, model: Reranker, cut=None):
    """Probability of every candidate of a Spark candidate frame: ``src, dst, score`` where
    ``score`` is the re-ranker's match probability (float) after its last round. ``cut``
    materialises an intermediate result and drops its lineage (the pipeline passes
    :func:`listing_dedup.graph.components.cut_lineage`; identity when None). Where the frame
    carries the listings' sources, the probabilities the one-to-one rule drops are 0
    (:func:`one_to_one_spark`) and a ``source_rule`` column (true) says so."""
    from pyspark.sql import functions as F

    cut = cut or (lambda df: df)
    bc = frame_df.sparkSession.sparkContext.broadcast((model.model_texts, dict(model.meta)))
    sources = [c for c in (f"{SOURCE}_src", f"{SOURCE}_dst") if c in frame_df.columns]
    sources = sources if len(sources) == 2 else []  # carried through the rounds for one_to_one_spark
    schema = "src string, dst string, p double, x array<double>" + "".join(f", {c} string" for c in sources)

    def _pairs(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        m = Reranker(*bc.value)
        for pdf in batches:
            if pdf.empty:
                continue
            X = pair_features(pdf, m.features)
            out = {"src": pdf["src"], "dst": pdf["dst"], "p": m.pair_probability(X), "x": list(X)}
            yield pd.DataFrame({**out, **{c: pdf[c] for c in sources}})

    cur = cut(frame_df.mapInPandas(_pairs, schema))
    for r in range(1, model.graph_rounds + 1):
        g = graph_features_spark(cur, model.graph_floor)
        joined = cur.select("src", "dst", "x", *sources).join(g, ["src", "dst"])

        def _graph(batches: Iterator[pd.DataFrame], r: int = r) -> Iterator[pd.DataFrame]:
            m = Reranker(*bc.value)
            for pdf in batches:
                if pdf.empty:
                    continue
                X = np.stack(pdf["x"].to_numpy())
                G = pdf[list(GRAPH_FEATURES)].to_numpy(dtype=np.float64)
                out = {"src": pdf["src"], "dst": pdf["dst"], "p": m.graph_probability(r, X, G), "x": pdf["x"]}
                yield pd.DataFrame({**out, **{c: pdf[c] for c in sources}})

        cur = cut(joined.mapInPandas(_graph, schema))
    if sources:  # the listings name their sources: the one-to-one rule (one_to_one_keep) zeroes the rest
        cur = one_to_one_spark(cur)
        return cur.select("src", "dst", F.col("p").cast("float").alias("score"), F.lit(True).alias(SOURCE_RULE))
    return cur.select("src", "dst", F.col("p").cast("float").alias("score"))
