"""Train the pair re-ranker (:mod:`listing_dedup.graph.rerank`) on a labelled split.

The same stages as the job on one machine, like :mod:`listing_dedup.quality.tune`: the conf's text
encoder and lexical vectors, fused with the conf's weights, exact kNN (``index.k``), every
INB round of ``inb.thresholds``, then the candidate frame and its features. Each part of the
split (a ``fold`` value, or one of ``rerank.train.parts`` group-disjoint parts) is one
catalog searched among itself.

Labels: a candidate is positive when both listings share ``label_group``. Out-of-fold
probabilities (GroupKFold over the label, ``rerank.train.cv_folds``: no group is ever scored
by a model that saw it) choose ``rerank.threshold`` / ``min2_threshold`` by the row-wise F1
of the job's edge rules (plus the pHash union at ``phash.max_bits`` when it is on), mean over
the parts; the model that is saved is then fitted on every candidate.

Train it on listings the text encoder was not trained on (the encoder's held-out fold): on
its own training rows a fine-tuned encoder's scores are better than they will be at run
time, and the re-ranker would learn to trust them too much.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from listing_dedup import __version__
from listing_dedup.config import DedupConfig, MatchConf
from listing_dedup.errors import ConfigError, InputError
from listing_dedup.graph.rerank import (
    FEATURE_SET_NAMES,
    FORMAT,
    GRAPH_FEATURES,
    MODEL_JSON,
    MODEL_TXT,
    VERSION,
    candidate_frame,
    frame_attributes,
    graph_features,
    graph_model_file,
    pair_features,
    pipeline_fingerprint,
)
from listing_dedup.ingest.rows import listing_attributes
from listing_dedup.quality.health import REFERENCE_FILE, HealthReference, reference_from, write_reference
from listing_dedup.quality.robust import cluster_scores, job_groups, rule_edges, rule_edges_any_order
from listing_dedup.quality.tune import (
    Grid,
    Part,
    fast_edges,
    fused_vectors,
    prepare_part,
    split_parts,
    text_vectors,
    union_pairs,
)
from listing_dedup.quality.tuning import knn
from listing_dedup.search.blender import blend_numpy
from listing_dedup.training.hardware import hardware

log = logging.getLogger(__name__)

THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.025), 3)) + (0.96, 0.97, 0.98, 0.99)
MIN2 = (None, 0.05, 0.1, 0.2, 0.3)
MARGINS = (0.0, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3)  # group margins tried on the probabilities


@dataclass
class PartCandidates:
    """One catalog: its scorer and pHash pairs, the candidate frame, features and labels."""

    part: Part
    frame: pd.DataFrame  # src, dst (row indices) + FRAME_COLUMNS
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray  # label of src (for the group-aware folds; the same label in two parts is one group)
    signals: dict[str, float] = field(default_factory=dict)  # share of the part's listings carrying each
    # each candidate's weight in the fit (a generated part teaches the ranking at a fraction of a real one's say)
    weight: float = 1.0


@dataclass
class RerankResult:
    model_texts: tuple[str, ...]  # the pair model, then one per graph round
    threshold: float
    min2_threshold: float | None
    parts: list[dict[str, Any]]  # per part: rows, candidates, positives, baseline and re-ranked scores
    candidates: pd.DataFrame  # every (threshold, min2) setting's mean out-of-fold scores
    importance: dict[str, float]  # of the last round's model
    rounds: list[dict[str, Any]] = field(default_factory=list)  # best out-of-fold setting after each round
    seconds: dict[str, float] = field(default_factory=dict)
    health_reference: HealthReference | None = None  # what the job's health check compares a catalog with
    group_margin: float | None = None  # chosen out of fold for the probabilities (clusters F1)
    margins: list[dict[str, float]] = field(default_factory=list)  # every margin's out-of-fold clusters F1

    @property
    def best(self) -> dict[str, float]:
        return self.candidates.iloc[0].to_dict()


def _check_signals(cfg: DedupConfig) -> float:
    """The text weight of the fused vector (lexical gets the rest); images are not reproducible here."""
    weights = cfg.fusion.weights(list(cfg.dense_signals()))
    if "image" in weights:
        raise ConfigError(
            "config key 'fusion.image': jobs/train_reranker.py fuses text and lexical only (it embeds on one "
            "machine and has no image decoder); train with embed.image.enabled: false"
        )
    return weights.get("text", 0.0)


def searched_lists(x: np.ndarray, cfg: DedupConfig):
    """(first search, final search) as the job runs them: kNN, then one blend + kNN per INB round."""
    k = cfg.index.k
    base = knn(x, k)
    cur, emb = base, x
    for t in cfg.inb.thresholds:
        keep = cur[2] >= t
        emb = blend_numpy(emb, cur[0][keep], cur[1][keep], cur[2][keep])
        cur = knn(emb, k)
    return base, cur


def part_candidates(name: str, df: pd.DataFrame, cfg: DedupConfig, text: np.ndarray | None) -> PartCandidates:
    w_text = _check_signals(cfg)
    bits = (cfg.phash.max_bits,) if cfg.phash.enabled else ()
    part = prepare_part(name, df, cfg, text, Grid(phash_bits=bits))
    x = fused_vectors(part, w_text)
    if x is None:
        raise ConfigError("config key 'embed': the re-ranker needs the text or the lexical signal")
    base, final = searched_lists(x, cfg)
    phashes = df["image_phash"].tolist() if "image_phash" in df.columns else [None] * len(df)
    attrs = frame_attributes(listing_attributes(df))  # the optional model / brand / price, as the reader keeps them
    frame = candidate_frame(base, final, df["title"].tolist(), phashes, cfg.index.k, cfg.rerank.min_score, attrs)
    src, dst = frame["src"].to_numpy(), frame["dst"].to_numpy()
    y = (part.scorer.lab[src] == part.scorer.lab[dst]).astype(np.int8)
    # as the job counts them (quality/run_health.signal_coverage): the re-ranker always reads pHash
    titled = float((df["title"].fillna("").str.len() > 0).mean()) if len(df) else 0.0
    signals = {s: titled for s in cfg.fusion.weights(list(cfg.dense_signals()))}
    signals["phash"] = float(pd.Series(phashes).notna().mean()) if len(df) else 0.0
    labels = df["label_group"].astype(str).to_numpy()
    return PartCandidates(part, frame, pair_features(frame, train_features(cfg)), y, labels[src], signals)


def rule_pairs(
    pc: PartCandidates,
    score: np.ndarray,
    threshold: float,
    min2: float | None,
    phash_bits: int | None,
    match: MatchConf | None = None,
):
    """Undirected pairs of the job's edge rules on ``score`` (candidates re-sorted by it, so
    min2 takes the best-scoring candidate, ties to the smaller dst), plus the pHash pairs.
    ``match``: the conf's whole threshold rule (its relative and mutual rules too, as the job
    runs it on the fused score; ``threshold`` and ``min2`` are then ignored); None: threshold
    and min2 alone (the re-ranker's rule on its probabilities, ``rerank.match()``)."""
    src, dst = pc.frame["src"].to_numpy(), pc.frame["dst"].to_numpy()
    o = np.lexsort((dst, -score, src))
    if match is not None:
        e = rule_edges(src[o], dst[o], score[o], match)[:2]
    else:
        e = fast_edges(src[o], dst[o], score[o].astype(np.float64), threshold, min2)
    if phash_bits is not None and phash_bits in pc.part.phash:
        e = union_pairs(e, pc.part.phash[phash_bits])
    return e


def _lgb_params(cfg: DedupConfig) -> dict[str, Any]:
    t = cfg.rerank.train
    return {
        "objective": "binary",
        "learning_rate": t.learning_rate,
        "num_leaves": t.num_leaves,
        "min_data_in_leaf": t.min_data_in_leaf,
        "feature_fraction": t.feature_fraction,
        "bagging_fraction": t.bagging_fraction,
        "bagging_freq": 1 if t.bagging_fraction < 1 else 0,
        "num_threads": t.threads or (os.cpu_count() or 1),
        "seed": t.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbose": -1,
    }


def train_features(cfg: DedupConfig) -> tuple[str, ...]:
    """The pair features a new model is trained on: the set ``rerank.train.features`` names."""
    return FEATURE_SET_NAMES[cfg.rerank.train.features]


def feature_names(cfg: DedupConfig, graph_round: int) -> list[str]:
    return list(train_features(cfg)) + (list(GRAPH_FEATURES) if graph_round else [])


def _fit(X: np.ndarray, y: np.ndarray, cfg: DedupConfig, graph_round: int = 0, weight: np.ndarray | None = None):
    import lightgbm as lgb

    data = lgb.Dataset(
        X, y.astype(np.float64), weight=weight, feature_name=feature_names(cfg, graph_round), free_raw_data=True
    )
    return lgb.train(_lgb_params(cfg), data, num_boost_round=cfg.rerank.train.rounds)


def round_features(pcs: list[PartCandidates], probs: list[np.ndarray] | None, cfg: DedupConfig) -> list[np.ndarray]:
    """Each part's feature rows for a round: the pair features, plus (graph rounds) the graph
    features of the previous round's probabilities ``probs``."""
    if probs is None:
        return [p.X for p in pcs]
    floor = cfg.rerank.train.graph_floor
    out = []
    for pc, pr in zip(pcs, probs, strict=True):
        src, dst = pc.frame["src"].to_numpy(), pc.frame["dst"].to_numpy()
        out.append(np.column_stack([pc.X, graph_features(src, dst, pr, pc.part.scorer.n, floor)]))
    return out


def sample_weights(pcs: list[PartCandidates]) -> np.ndarray | None:
    """Each candidate's fit weight, its part's (None when every part weighs 1)."""
    if all(p.weight == 1.0 for p in pcs):
        return None
    return np.concatenate([np.full(len(p.y), float(p.weight)) for p in pcs])


def out_of_fold(
    pcs: list[PartCandidates], cfg: DedupConfig, Xs: list[np.ndarray] | None = None, graph_round: int = 0
) -> list[np.ndarray]:
    """Probability of every candidate from a model that never saw its src's group (``Xs``:
    each part's feature rows, default the pair features)."""
    from sklearn.model_selection import GroupKFold

    X = np.concatenate(Xs if Xs is not None else [p.X for p in pcs])
    y = np.concatenate([p.y for p in pcs])
    # by label across the parts: a group that two parts hold (a catalog cut from another) is held
    # out of both at once, so no part is scored by a model that saw its group in another part
    g = pd.factorize(np.concatenate([p.groups for p in pcs]))[0]
    n_groups = len(np.unique(g))
    folds = min(cfg.rerank.train.cv_folds, n_groups)
    if folds < 2 or y.min() == y.max():
        raise InputError("too few labelled groups (or no positive/negative candidate) to train the re-ranker")
    oof = np.zeros(len(y))
    w = sample_weights(pcs)
    for i, (tr, te) in enumerate(GroupKFold(n_splits=folds).split(X, y, g)):
        t0 = time.perf_counter()
        oof[te] = _fit(X[tr], y[tr], cfg, graph_round, None if w is None else w[tr]).predict(X[te])
        log.info(
            "re-ranker round %d out-of-fold model %d/%d: %.1f s", graph_round, i + 1, folds, time.perf_counter() - t0
        )
    cuts = np.cumsum([len(p.y) for p in pcs])[:-1]
    return np.split(oof, cuts)


SELECTIONS = ("mean", "gain", "pair")


def choose_thresholds(
    pcs: list[PartCandidates], probs: list[np.ndarray], phash_bits: int | None, select: str = "mean"
) -> pd.DataFrame:
    """Mean F1/precision/recall over the parts of every (threshold, min2) setting, best first.

    ``select``: "mean" ranks by the mean F1 over the parts; "gain" by the worst part's gain
    over predicting no match at all (``gain_min``: min over the parts of F1 minus the part's
    F1 with every listing alone), then the mean; "pair" by the mean pairwise F1 over the parts
    (``pair_f1``: over unordered true pairs, which a part of singletons cannot flatter; the
    titles-only built-in model, issue 30)."""
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}")
    empty = np.zeros(0, dtype=np.int64)
    none = np.array([p.part.scorer.score(empty, empty)[0] for p in pcs])
    rows = []
    for t in THRESHOLDS:
        for m in MIN2:
            if m is not None and m > t:
                continue
            edges = [rule_pairs(p, pr, t, m, phash_bits) for p, pr in zip(pcs, probs, strict=True)]
            s = np.array([p.part.scorer.score(*e) for p, e in zip(pcs, edges, strict=True)])
            pair = (
                [p.part.scorer.pair_scores(*e)[0] for p, e in zip(pcs, edges, strict=True)] if select == "pair" else [0]
            )
            rows.append(
                {
                    "threshold": float(t),
                    "min2": m,
                    "f1": s[:, 0].mean(),
                    "precision": s[:, 1].mean(),
                    "recall": s[:, 2].mean(),
                    "f1_min": s[:, 0].min(),
                    "gain_min": (s[:, 0] - none).min(),
                    "pair_f1": float(np.mean(pair)),
                }
            )
    out = pd.DataFrame(rows)
    keys = {"mean": ["f1"], "gain": ["gain_min", "f1"], "pair": ["pair_f1", "f1"]}[select] + ["threshold"]
    return out.sort_values(keys, ascending=[False] * len(keys), ignore_index=True)


def choose_group_margin(
    pcs: list[PartCandidates], probs: list[np.ndarray], threshold: float, min2: float | None, bits: int | None, cfg
) -> tuple[float, list[dict[str, float]]]:
    """The ``guard.group_margin`` for the re-ranker's probabilities: the one of :data:`MARGINS`
    with the best mean clusters F1 over the parts (the job's groups: the chosen edge rule on the
    out-of-fold probabilities, pHash union, margin, split guard), the smaller margin on a tie.
    A probability is not a fused score: the fused-score margin does not carry over."""
    mc = MatchConf(threshold=threshold, min2=min2 is not None, min2_threshold=min2 if min2 is not None else threshold)
    edges = []
    for p, pr in zip(pcs, probs, strict=True):
        ph = None
        if bits is not None and bits in p.part.phash:
            ph = (*p.part.phash[bits], p.part.phash_score[bits])
        edges.append((p, *rule_edges_any_order(p.frame["src"].to_numpy(), p.frame["dst"].to_numpy(), pr, mc, ph)))
    rows = []
    for m in MARGINS:
        guard = dataclasses.replace(cfg.guard, group_margin=float(m))
        f = [
            cluster_scores(p.part.scorer.lab, job_groups(p.part.scorer.n, a, b, w, mc, guard))[0]
            for p, a, b, w in edges
        ]
        rows.append({"group_margin": float(m), "clusters_f1": float(np.mean(f)), "clusters_f1_min": float(np.min(f))})
    best = max(rows, key=lambda r: (round(r["clusters_f1"], 6), -r["group_margin"]))
    return best["group_margin"], rows


def train_reranker(df: pd.DataFrame, cfg: DedupConfig, *, cache_dir: str | None = None) -> RerankResult:
    """Fit the re-ranker on a labelled split (see the module docstring)."""
    seconds: dict[str, float] = {}
    return train_from_candidates(labelled_parts(df, cfg, seconds, cache_dir=cache_dir), cfg, seconds)


def labelled_parts(
    df: pd.DataFrame, cfg: DedupConfig, seconds: dict[str, float], *, cache_dir: str | None = None
) -> list[PartCandidates]:
    """The searching half of :func:`train_reranker`: the labelled split ``df`` embedded and cut
    into its parts, each part's candidates with their labels (``seconds`` gains ``embed`` and
    ``candidates``)."""
    t0 = time.perf_counter()
    _check_signals(cfg)
    vecs = text_vectors(df, cfg, cache_dir)
    seconds["embed"] = time.perf_counter() - t0
    pos = pd.Series(np.arange(len(df)), index=df["posting_id"])
    t0 = time.perf_counter()
    pcs = []
    for i, sub in enumerate(split_parts(df, cfg.rerank.train.parts)):
        tv = None if vecs is None else vecs[pos[sub["posting_id"]].to_numpy()]
        name = str(sub["fold"].iloc[0]) if "fold" in sub.columns else str(i)
        pcs.append(part_candidates(name, sub, cfg, tv))
        log.info(
            "part %s: %d listings, %d candidates (%.1f%% positive)",
            name,
            len(sub),
            len(pcs[-1].y),
            100 * pcs[-1].y.mean() if len(pcs[-1].y) else 0,
        )
    seconds["candidates"] = time.perf_counter() - t0
    return pcs


def train_from_candidates(
    pcs: list[PartCandidates], cfg: DedupConfig, seconds: dict[str, float] | None = None, select: str = "mean"
) -> RerankResult:
    """The fitting half of :func:`train_reranker` on parts already searched (a bench reuses
    them across trainings on different subsets of parts, e.g. leave one catalog out);
    ``select``: how the threshold is chosen out of fold (:func:`choose_thresholds`)."""
    seconds = dict(seconds or {})
    bits = cfg.phash.max_bits if cfg.phash.enabled else None
    texts, rounds, probs, booster = [], [], None, None
    for r in range(cfg.rerank.train.graph_rounds + 1):
        t0 = time.perf_counter()
        Xs = round_features(pcs, probs, cfg)
        oof = out_of_fold(pcs, cfg, Xs, r)
        booster = _fit(np.concatenate(Xs), np.concatenate([p.y for p in pcs]), cfg, r, sample_weights(pcs))
        texts.append(booster.model_to_string())
        ranked = choose_thresholds(pcs, oof, bits, select)
        rounds.append({"round": r, **{k: _plain(v) for k, v in ranked.iloc[0].to_dict().items()}})
        log.info("re-ranker round %d: out-of-fold %s (%.1f s)", r, rounds[-1], time.perf_counter() - t0)
        seconds[f"round{r}"] = time.perf_counter() - t0
        probs = oof
    best = ranked.iloc[0]
    t, m = float(best["threshold"]), _plain(best["min2"])
    parts = []
    mc = cfg.match
    for p, pr in zip(pcs, probs, strict=True):
        score = p.frame["score"].to_numpy()
        base = p.part.scorer.score(*rule_pairs(p, score, mc.threshold, None, bits, match=mc))
        rr = p.part.scorer.score(*rule_pairs(p, pr, t, m, bits))
        parts.append(
            {
                "part": p.part.name,
                "listings": int(p.part.scorer.n),
                "candidates": int(len(p.y)),
                "positives": int(p.y.sum()),
                "weight": float(p.weight),
                "threshold_rule": dict(zip(("f1", "precision", "recall"), base, strict=True)),
                "reranked_out_of_fold": dict(zip(("f1", "precision", "recall"), rr, strict=True)),
            }
        )
    gain = booster.feature_importance("gain")
    names = feature_names(cfg, cfg.rerank.train.graph_rounds)
    importance = {f: float(v / max(gain.sum(), 1e-12)) for f, v in zip(names, gain, strict=True)}
    ref = health_reference(pcs, probs, t, m, bits, cfg)
    margin, margins = choose_group_margin(pcs, probs, t, m, bits, cfg)
    log.info("re-ranker group margin %s (out-of-fold clusters F1 %s)", margin, margins)
    return RerankResult(tuple(texts), t, m, parts, ranked, importance, rounds, seconds, ref, margin, margins)


def health_reference(
    pcs: list[PartCandidates], probs: list[np.ndarray], threshold: float, min2: float | None, bits: int | None, cfg
) -> HealthReference:
    """The health reference of the chosen re-ranker: over every part's listings, the top-1 fused
    score of the final search (the job's health check reads the same), the matches of the
    chosen rule on the out-of-fold probabilities (what a catalog the model never saw gets;
    pHash union included) and the signals' coverage."""
    ids, src_ids, dst_ids, top1 = [], [], [], []
    n = sum(p.part.scorer.n for p in pcs)
    for p, pr in zip(pcs, probs, strict=True):
        pid = np.array([f"{p.part.name}:{x}" for x in p.part.ids], dtype=object)
        a, b = rule_pairs(p, pr, threshold, min2, bits)
        ids.append(pid)
        src_ids.append(pid[np.asarray(a, dtype=np.int64)])
        dst_ids.append(pid[np.asarray(b, dtype=np.int64)])
        best = p.frame["score"].astype(np.float64).groupby(p.frame["src"].to_numpy()).max()
        top1.append(pd.Series(best.to_numpy(), index=pid[best.index.to_numpy()]))
    signals = {
        s: sum(p.signals.get(s, 0.0) * p.part.scorer.n for p in pcs) / max(n, 1)
        for s in sorted({s for p in pcs for s in p.signals})
    }
    settings = {
        "pipeline": pipeline_fingerprint(cfg),
        "rerank": {"threshold": threshold, "min2": min2 is not None, "min2_threshold": min2},
        "phash": {"enabled": bool(cfg.phash.enabled), "max_bits": int(cfg.phash.max_bits)},
    }
    return reference_from(
        np.concatenate(ids) if ids else np.array([], dtype=object),
        pd.DataFrame({"src": np.concatenate(src_ids), "dst": np.concatenate(dst_ids)}),
        pd.concat(top1) if top1 else pd.Series(dtype=np.float64),
        signals,
        source=f"re-ranker training parts {'+'.join(p.part.name for p in pcs)} ({n} listings, out-of-fold)",
        score="fused",
        settings=json.loads(json.dumps(settings)),
    )


def _plain(v: Any) -> Any:
    """A JSON-able scalar (None for a missing min2)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v


# --------------------------------------------------------------------------------------
# the model directory


def train_prior(parts: list[dict]) -> float | None:
    """The share of matches among the training candidates, each part's candidates counted at its
    fit weight (``parts``: metrics.json's, each with ``candidates``, ``positives`` and optionally
    ``weight``, default 1); None without candidates."""
    n = sum(int(p.get("candidates", 0)) * float(p.get("weight", 1.0)) for p in parts)
    pos = sum(int(p.get("positives", 0)) * float(p.get("weight", 1.0)) for p in parts)
    return round(pos / n, 6) if n else None


def write_reranker_dir(
    out: str | Path, res: RerankResult, cfg: DedupConfig, *, source: str, prior_shift: bool = False
) -> dict:
    """Write the model directory; returns the overlay it wrote (also as ``overlay.yaml``).
    ``prior_shift``: the job moves this model's thresholds to each catalog's estimated share of
    matches (graph/rerank.prior_shifted); ``train_prior`` (the share among the training
    candidates, which that estimate starts from) is always written."""
    import lightgbm as lgb

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob("reranker_graph*.txt"):
        stale.unlink()
    (d / MODEL_TXT).write_text(res.model_texts[0])
    for r, text in enumerate(res.model_texts[1:], start=1):
        (d / graph_model_file(r)).write_text(text)
    fp = pipeline_fingerprint(cfg)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "features": list(train_features(cfg)),
        "graph_features": list(GRAPH_FEATURES),
        "graph_rounds": len(res.model_texts) - 1,
        "graph_floor": cfg.rerank.train.graph_floor,
        "pipeline": fp,
        "threshold": res.threshold,
        "min2_threshold": res.min2_threshold,
        "group_margin": res.group_margin,
        "min_score": cfg.rerank.min_score,
        "train_prior": train_prior(res.parts),
        "prior_shift": bool(prior_shift),
        "phash_max_bits": cfg.phash.max_bits if cfg.phash.enabled else None,
        "trained_on": source,
        "lightgbm": {"version": lgb.__version__, "rounds": cfg.rerank.train.rounds, "params": _lgb_params(cfg)},
        "listing_dedup_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (d / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    metrics = {
        "chosen": {
            "threshold": res.threshold,
            "min2_threshold": res.min2_threshold,
            **{k: float(res.best[k]) for k in ("f1", "precision", "recall", "f1_min")},
        },
        "parts": res.parts,
        "rounds": res.rounds,
        "group_margins": res.margins,
        "importance": dict(sorted(res.importance.items(), key=lambda kv: -kv[1])),
        "settings": json.loads(res.candidates.head(20).to_json(orient="records")),
        "seconds": {k: round(v, 2) for k, v in res.seconds.items()},
        "hardware": hardware(),
    }
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if res.health_reference is not None:
        write_reference(d, res.health_reference)
    else:  # never a stale reference of an earlier model in the same directory
        (d / REFERENCE_FILE).unlink(missing_ok=True)
    _plot_importance(res.importance, d / "importance.png")
    overlay = reranker_overlay(d, res, cfg)
    header = (
        "# written by jobs/train_reranker.py: pass as the last --conf to jobs/dedup_listings.py; it sets the\n"
        "# re-ranker and the pipeline settings its features were computed with\n"
    )
    (d / "overlay.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    return overlay


def reranker_overlay(d: Path, res: RerankResult, cfg: DedupConfig) -> dict:
    weights = cfg.fusion.weights(list(cfg.dense_signals()))
    overlay: dict[str, Any] = {
        "embed": {"text": {"enabled": "text" in weights}, "lexical": {"enabled": "lexical" in weights}},
        "fusion": {s: round(weights.get(s, 0.0), 6) for s in ("text", "lexical", "image")},
        "inb": {"thresholds": [float(t) for t in cfg.inb.thresholds]},
        "index": {"k": int(cfg.index.k)},
        "phash": {"enabled": bool(cfg.phash.enabled), "max_bits": int(cfg.phash.max_bits)},
        "rerank": {
            "enabled": True,
            "model": str(d.resolve()),
            "threshold": res.threshold,
            "min2": res.min2_threshold is not None,
            "min2_threshold": res.min2_threshold if res.min2_threshold is not None else res.threshold,
            "min_score": float(cfg.rerank.min_score),
        },
    }
    if "text" in weights:
        model = cfg.embed.text.model
        overlay["embed"]["text"]["model"] = str(Path(model).resolve()) if Path(model).exists() else model
    return overlay


def _plot_importance(importance: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    ax.set_xlabel("share of split gain")
    ax.set_title("re-ranker feature importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
