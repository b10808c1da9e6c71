"""Tune fusion weights, INB, thresholds, min2 and the pHash radius on a labelled split.

The same stages as the job, on one machine (a validation split fits in memory; the job is
what scales): text vectors from the conf's encoder, lexical vectors with idf fitted on each
catalog, fused as the job fuses them, exact inner-product kNN (equal to the job's IVF search
at nprobe = nlist), INB with :func:`listing_dedup.search.blender.blend_numpy`, the job's edge rules
(the conf's ``match`` rule with the grid's threshold and min2: its relative and mutual rules
apply as the job applies them, through :func:`listing_dedup.quality.robust.rule_edges`, and the
overlay written records them; :func:`fast_edges`, the threshold + min2 rule alone, and
``rule_edges`` are tested equal to :func:`listing_dedup.graph.edges.select_edges_pandas`), the
pHash pairs of :mod:`listing_dedup.search.phash_match`, and the row-wise F1 of
:mod:`listing_dedup.quality.metrics` (:class:`PairScorer` is tested equal to ``row_scores``).

Validation split, grouped by ``label_group``: with a ``fold`` column each fold is one
catalog; otherwise groups are dealt into ``n_parts`` parts (GroupKFold). Each part is
searched *among itself*, like a nightly catalog of that size, and a setting's objective is
its mean F1 over the parts -- thresholds depend on catalog density, so tune on parts the
size of the catalogs you will run.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from listing_dedup.config import DedupConfig
from listing_dedup.embed.fusion import Layout, fuse_blocks
from listing_dedup.embed.lexical import document_frequencies, hashed_counts, idf_vector, lexical_vectors
from listing_dedup.ingest.titles import clean_title
from listing_dedup.quality.robust import rule_edges
from listing_dedup.quality.tuning import knn
from listing_dedup.search.blender import blend_numpy
from listing_dedup.search.phash_match import phash_pairs_pandas

log = logging.getLogger(__name__)

_CODE = np.int64(1) << np.int64(31)


@dataclass(frozen=True)
class Grid:
    text_weights: Sequence[float] = (0.0, 0.2, 0.3, 0.4, 0.5, 1.0)  # lexical weight = 1 - text weight
    inb: Sequence[float | None] = (None, 0.5, 0.6, 0.7, 0.8)  # one INB round at this threshold, or none
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.4, 0.975, 0.025), 3))
    min2: Sequence[float | None] = (None, 0.4, 0.5, 0.6)
    phash_bits: Sequence[int | None] = (None, 4, 6, 8)
    k: int = 50


class PairScorer:
    """Row-wise mean F1/precision/recall of undirected pairs over row indices 0..n-1."""

    def __init__(self, labels: Sequence):
        self.lab = pd.factorize(np.asarray(labels))[0]
        self.n = len(self.lab)
        self.true_size = np.bincount(self.lab)[self.lab].astype(np.float64)

    def _counts(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        hit = (self.lab[a] == self.lab[b]).astype(np.float64)
        pred = 1.0 + np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
        inter = 1.0 + np.bincount(a, hit, minlength=n) + np.bincount(b, hit, minlength=n)
        return pred, inter

    def score(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        pred, inter = self._counts(a, b)
        f1 = 2 * inter / (self.true_size + pred)
        return float(f1.mean()), float((inter / pred).mean()), float((inter / self.true_size).mean())

    def pair_scores(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        """Pairwise F1, precision, recall of the undirected pairs ``a - b`` (each counted once
        whichever way round; self pairs ignored) over the true unordered pairs
        (:func:`listing_dedup.quality.metrics.pair_scores` on row indices)."""
        from listing_dedup.quality.metrics import pair_counts_scores

        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        code = np.unique(lo[lo != hi] * _CODE + hi[lo != hi])
        lo, hi = code // _CODE, code % _CODE
        sizes = np.bincount(self.lab).astype(np.int64)
        s = pair_counts_scores(
            int((sizes * (sizes - 1) // 2).sum()), len(code), int((self.lab[lo] == self.lab[hi]).sum())
        )
        return s.f1, s.precision, s.recall

    def row_f1(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Each row's F1 (its mean is :meth:`score`'s F1): for scoring only the rows whose
        groups are labelled, when only some groups of a catalog are (bench/label_curve.py)."""
        pred, inter = self._counts(a, b)
        return 2 * inter / (self.true_size + pred)


def fast_edges(src, dst, sc, threshold: float, min2_threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The job's edge rules on index arrays sorted like :func:`knn`: undirected pairs a < b."""
    s64 = sc.astype(np.float64)
    keep = s64 >= threshold
    if min2_threshold is not None:
        first = np.r_[True, src[1:] != src[:-1]]
        keep |= first & (s64 < threshold) & (s64 >= min2_threshold)
    a, b = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep])
    code = np.unique(a.astype(np.int64) * _CODE + b)
    return code // _CODE, code % _CODE


def union_pairs(*pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    code = np.unique(np.concatenate([a.astype(np.int64) * _CODE + b for a, b in pairs]))
    return code // _CODE, code % _CODE


@dataclass
class Part:
    """One catalog of the split with every signal precomputed."""

    name: str
    ids: np.ndarray
    scorer: PairScorer
    text: np.ndarray | None
    lexical: np.ndarray | None
    phash: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    phash_share: float = 0.0  # listings with a well-formed pHash (the health reference's coverage)
    phash_score: dict[int, np.ndarray] = field(default_factory=dict)  # each pair's ``1 - bits/64``


def split_parts(df: pd.DataFrame, n_parts: int, seed: int = 0) -> list[pd.DataFrame]:
    """Catalogs of the split: one per ``fold`` value, else ``n_parts`` groups-disjoint parts."""
    if "fold" in df.columns:
        return [g.reset_index(drop=True) for _, g in df.groupby("fold", sort=True)]
    from sklearn.model_selection import GroupKFold

    parts = []
    for _, idx in GroupKFold(n_splits=n_parts).split(df, groups=df["label_group"]):
        parts.append(df.iloc[np.sort(idx)].reset_index(drop=True))
    return parts


def prepare_part(name: str, df: pd.DataFrame, cfg: DedupConfig, text_vectors: np.ndarray | None, grid: Grid) -> Part:
    ids = df["posting_id"].astype(str).to_numpy()
    lex = None
    if cfg.embed.lexical.enabled:
        p = cfg.embed.lexical.params()
        idf = idf_vector(*document_frequencies(hashed_counts(df["title"], p)), len(df), p.n_features)
        lex = lexical_vectors(df["title"], idf, p)
    part = Part(name, ids, PairScorer(df["label_group"].to_numpy()), text_vectors, lex)
    if "image_phash" in df.columns:
        pos = pd.Series(np.arange(len(df)), index=ids)
        ok = df["image_phash"].notna() & df["image_phash"].astype(str).str.fullmatch(r"[0-9a-fA-F]{16}")
        part.phash_share = float(ok.mean()) if len(df) else 0.0
        for bits in [b for b in grid.phash_bits if b is not None]:
            pairs, _ = phash_pairs_pandas(ids[ok.to_numpy()], df.loc[ok, "image_phash"].str.lower(), bits, 1000)
            s, d = pos[pairs["src"]].to_numpy(), pos[pairs["dst"]].to_numpy()
            part.phash[bits] = (np.minimum(s, d), np.maximum(s, d))
            part.phash_score[bits] = pairs["score"].to_numpy(dtype=np.float32)
    return part


def fused_vectors(part: Part, w_text: float) -> np.ndarray | None:
    """The job's fused vectors of a part: text weight ``w_text``, lexical ``1 - w_text``
    (None when neither signal is there)."""
    blocks, dims, weights = {}, {}, {}
    if part.text is not None and w_text > 0:
        blocks["text"], dims["text"], weights["text"] = list(part.text), part.text.shape[1], w_text
    if part.lexical is not None and w_text < 1:
        blocks["lexical"], dims["lexical"], weights["lexical"] = list(part.lexical), part.lexical.shape[1], 1 - w_text
    if not blocks:
        return None
    total = sum(weights.values())
    return fuse_blocks(blocks, Layout.of(dims, {s: w / total for s, w in weights.items()}))


def final_search(x: np.ndarray, inb: float | None, k: int, base=None):
    """The neighbour rows (src, dst, score) after one INB round at ``inb`` (None: no round);
    ``base``: the first search of ``x`` when already done."""
    base = knn(x, k) if base is None else base
    if inb is None:
        return base
    keep = base[2] >= inb
    return knn(blend_numpy(x, base[0][keep], base[1][keep], base[2][keep]), k)


def grid_rule(match, threshold: float, min2: float | None):
    """``match`` (the conf's rule: relative and mutual rules included) with a grid setting's
    threshold and min2 (None: off) in place of its own."""
    return dataclasses.replace(
        match,
        threshold=float(threshold),
        min2=min2 is not None,
        min2_threshold=float(min2 if min2 is not None else threshold),
    )


def tuned_reference(parts: Sequence[Part], best: pd.Series, match, k: int, *, source: str = "", settings=None):
    """The health reference of the chosen setting (quality/health.py): each part searched with
    it as the job will search (fused vectors, INB, the conf's edge rules with the chosen
    threshold and min2, the pHash union), its listings pooled under ``part:posting_id``. The
    job compares a catalog's top-1 score distribution and matches a listing against it
    (``health.reference``)."""
    from listing_dedup.quality.health import reference_from

    w, inb, bits = float(best["text_weight"]), best["inb"], best["phash_bits"]
    mc = grid_rule(match, best["threshold"], best["min2"])
    ids_all, edges, top1 = [], [], []
    cov = {"text": 0.0, "lexical": 0.0, "phash": 0.0}
    n = 0
    for part in parts:
        x = fused_vectors(part, w)
        if x is None:
            continue
        src, dst, sc = final_search(x, None if inb is None else float(inb), k)
        a, b = rule_edges(src, dst, sc, mc)[:2]
        if bits is not None and int(bits) in part.phash:
            a, b = union_pairs((a, b), part.phash[int(bits)])
        ids = np.array([f"{part.name}:{p}" for p in part.ids], dtype=object)
        first = np.r_[True, src[1:] != src[:-1]] if len(src) else np.zeros(0, dtype=bool)
        top1.append(pd.Series(sc[first].astype(np.float64), index=ids[src[first]]))
        edges.append(pd.DataFrame({"src": ids[a], "dst": ids[b]}))
        ids_all.append(ids)
        cov["text"] += len(ids) * float(part.text is not None and w > 0)
        cov["lexical"] += len(ids) * float(part.lexical is not None and w < 1)
        cov["phash"] += len(ids) * (part.phash_share if bits is not None else 0.0)
        n += len(ids)
    signals = {s: v / max(n, 1) for s, v in cov.items() if v > 0}
    return reference_from(
        np.concatenate(ids_all),
        pd.concat(edges, ignore_index=True),
        pd.concat(top1),
        signals,
        source,
        score="fused",
        settings=settings,
    )


def sweep_parts(parts: Sequence[Part], grid: Grid, match=None) -> pd.DataFrame:
    """F1/precision/recall of every grid setting on every part (long format). ``match`` (a
    ``MatchConf``): the edge rule the job will run, with the grid's threshold and min2 in place
    of its own; its relative and mutual rules apply as configured (they are on in the shipped
    profiles), so the figures are the job's. None: the threshold + min2 rule alone."""

    def edges(src, dst, sc, t, m):
        if match is None:
            return fast_edges(src, dst, sc, t, m)
        return rule_edges(src, dst, sc, grid_rule(match, t, m))[:2]

    rows = []
    for part in parts:
        for w_text in grid.text_weights:
            x = fused_vectors(part, w_text)
            if x is None:
                continue
            t0 = time.perf_counter()
            base = knn(x, grid.k)
            for inb_t in grid.inb:
                src, dst, sc = final_search(x, inb_t, grid.k, base)
                for t, m in itertools.product(grid.thresholds, grid.min2):
                    if m is not None and m > t:
                        continue
                    e = edges(src, dst, sc, t, m)
                    for bits in grid.phash_bits:
                        if bits is not None and bits not in part.phash:
                            continue
                        pairs = e if bits is None else union_pairs(e, part.phash[bits])
                        f1, p, r = part.scorer.score(*pairs)
                        rows.append(
                            {
                                "part": part.name,
                                "text_weight": w_text,
                                "inb": inb_t,
                                "threshold": float(t),
                                "min2": m,
                                "phash_bits": bits,
                                "f1": f1,
                                "precision": p,
                                "recall": r,
                            }
                        )
            log.info("part %s text weight %.2f swept in %.1f s", part.name, w_text, time.perf_counter() - t0)
    return pd.DataFrame(rows)


SETTING = ["text_weight", "inb", "threshold", "min2", "phash_bits"]


def rank_settings(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over parts per setting, best first (ties: fewer components, then higher threshold)."""
    r = results.copy()
    for c in ("inb", "min2", "phash_bits"):
        r[c] = [-1.0 if v is None or pd.isna(v) else float(v) for v in r[c]]
    g = r.groupby(SETTING, as_index=False)
    out = g.agg(f1=("f1", "mean"), f1_min=("f1", "min"), precision=("precision", "mean"), recall=("recall", "mean"))
    out = out.sort_values(["f1", "threshold"], ascending=[False, False], ignore_index=True)
    for c in ("inb", "min2", "phash_bits"):
        out[c] = pd.Series(
            [None if v == -1 else (int(v) if c == "phash_bits" else float(v)) for v in out[c]],
            index=out.index,
            dtype=object,
        )
    return out


def ablation(ranked: pd.DataFrame) -> pd.DataFrame:
    """Best mean F1 of each component combination: signal set x min2 x INB x pHash."""
    r = ranked.copy()
    r["signals"] = np.where(r["text_weight"] >= 1, "text", np.where(r["text_weight"] <= 0, "lexical", "text+lexical"))
    r["uses_min2"] = r["min2"].notna()
    r["uses_inb"] = r["inb"].notna()
    r["uses_phash"] = r["phash_bits"].notna()
    keys = ["signals", "uses_phash", "uses_min2", "uses_inb"]
    best = r.sort_values("f1", ascending=False).drop_duplicates(keys)
    return best.sort_values(keys, ignore_index=True)[keys + SETTING + ["f1", "precision", "recall"]]


def overlay_for(best: pd.Series, match=None) -> dict:
    """The conf overlay (YAML-able dict) of one ranked setting; with ``match`` (the rule the
    sweep ran) its relative and mutual rules too, so the overlay is the rule that was scored
    whatever conf it is later stacked on."""
    w = float(best["text_weight"])
    out: dict = {
        "embed": {"text": {"enabled": w > 0}, "lexical": {"enabled": w < 1}},
        "fusion": {"text": round(w, 4), "lexical": round(1 - w, 4)},
        "inb": {"thresholds": [] if best["inb"] is None else [float(best["inb"])]},
        "match": {
            "threshold": float(best["threshold"]),
            "min2": best["min2"] is not None,
            "min2_threshold": float(best["min2"]) if best["min2"] is not None else float(best["threshold"]),
        },
        "phash": {"enabled": best["phash_bits"] is not None},
        # the tuned rule decides: the profiles' built-in re-ranker would otherwise override it
        "rerank": {"enabled": False},
    }
    if best["phash_bits"] is not None:
        out["phash"]["max_bits"] = int(best["phash_bits"])
    if match is not None:
        out["match"].update(
            relative=bool(match.relative),
            relative_rank=int(match.relative_rank),
            relative_margin=float(match.relative_margin),
            relative_floor=float(match.relative_floor),
            mutual_rank=int(match.mutual_rank),
            mutual_floor=float(match.mutual_floor),
        )
    return out


def load_split(input_path: str, truth_path: str | None, max_title_chars: int) -> pd.DataFrame:
    """Listings (Parquet) joined with their labels (from ``truth_path`` or a label_group column)."""
    from listing_dedup.errors import InputError
    from listing_dedup.quality.evaluate import read_truth

    try:
        df = pd.read_parquet(input_path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read input {input_path}: {e}") from None
    if "posting_id" not in df.columns or "title" not in df.columns:
        raise InputError(f"input {input_path} needs posting_id and title columns")
    if truth_path:
        truth = read_truth(truth_path)
        df = df.drop(columns=[c for c in ("label_group",) if c in df.columns]).merge(truth, on="posting_id")
    if "label_group" not in df.columns:
        raise InputError("no labels: give --truth or an input with a label_group column")
    df = df.dropna(subset=["posting_id"]).drop_duplicates("posting_id").reset_index(drop=True)
    df["posting_id"] = df["posting_id"].astype(str)
    df["title"] = df["title"].map(lambda t: clean_title(t, max_title_chars))
    if len(df) < 10:
        raise InputError(f"only {len(df)} labelled listings: too few to tune on")
    return df


def text_vectors(df: pd.DataFrame, cfg: DedupConfig, cache_dir: str | None = None) -> np.ndarray | None:
    """The conf's text encoder over the split's titles (cached by model + titles when asked)."""
    import hashlib
    from pathlib import Path

    from listing_dedup.embed.encoder import TextEncoderBuilder

    if not cfg.embed.text.enabled:
        return None
    key = hashlib.sha256(("\n".join(df["title"]) + "|" + cfg.embed.text.model).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"text_{key}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        return np.load(cache)
    t0 = time.perf_counter()
    vecs = TextEncoderBuilder.from_conf(cfg.embed.text)().encode(df["title"].tolist())
    log.info("embedded %d titles in %.1f s", len(df), time.perf_counter() - t0)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vecs)
    return vecs


def tune(
    df: pd.DataFrame,
    cfg: DedupConfig,
    grid: Grid,
    *,
    n_parts: int = 3,
    cache_dir: str | None = None,
    parts_out: list | None = None,
):
    """(ranked settings, per-part results, ablation table, overlay of the best setting).
    ``parts_out``: a list that receives the prepared parts (for :func:`tuned_reference`)."""
    vecs = text_vectors(df, cfg, cache_dir)
    pos = {p: i for i, p in enumerate(df["posting_id"])}
    parts = []
    for i, sub in enumerate(split_parts(df, n_parts)):
        tv = None if vecs is None else vecs[[pos[p] for p in sub["posting_id"]]]
        name = str(sub["fold"].iloc[0]) if "fold" in sub.columns else str(i)
        parts.append(prepare_part(name, sub, cfg, tv, grid))
    if vecs is None:
        grid = Grid(**{**grid.__dict__, "text_weights": (0.0,)})
    if not cfg.embed.lexical.enabled:
        grid = Grid(**{**grid.__dict__, "text_weights": (1.0,)})
    if parts_out is not None:
        parts_out.extend(parts)
    results = sweep_parts(parts, grid, cfg.match)
    ranked = rank_settings(results)
    return ranked, results, ablation(ranked), overlay_for(ranked.iloc[0], cfg.match)
