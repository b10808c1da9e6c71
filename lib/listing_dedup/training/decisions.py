"""The re-ranker learns from the reviewers' decisions (issue 32; ``jobs/train_reranker.py --decisions``).

The ``decisions`` table (sink/decisions.py) holds verdicts on pairs of listings: ``same`` or
``different``, the latest per pair winning. A verdict is a label on one candidate pair, so the
decisions become training rows wherever the pair is a candidate of the catalog's search (both
directions of it; a decided pair the search never proposes is no candidate row and is counted,
not used). Two ways:

* **with a labelled file** (:func:`train_with_decisions`): the labelled split's candidates as
  :func:`listing_dedup.training.rerank_train.train_reranker` builds them, each decided pair's
  label replaced by its verdict (a reviewer who says two listings of one label group differ, or
  two of two groups are one, overrides the file), then the same fitting
  (``train_from_candidates``): out-of-fold thresholds, group margin and health reference as
  from the file alone;
* **instead of a labelled file** (:func:`refit_from_decisions`): the catalog the decisions were
  made on (the night's listings, no labels) is searched as the job searches it, and the base
  re-ranker (the conf's ``rerank.model``, e.g. the built-in one) is boosted further on the decided
  candidate pairs only (:data:`REFIT_ROUNDS` more trees in each round, LightGBM's continued
  training), keeping its thresholds. Its health reference follows: recomputed on that catalog
  with the refitted model's probabilities (the top-1 fused score, the matches a listing of its
  rule, the signals' coverage), so the job's health check compares a night with what the new
  model does, not with the base model's training data.

``bench/review.py`` retrains this way between the nights of its simulated reviewer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.errors import InputError

log = logging.getLogger(__name__)

REFIT_ROUNDS = 50  # trees added to each round's model by a refit on the decisions
UNDECIDED = -1


def decision_labels(decisions: pd.DataFrame) -> pd.DataFrame:
    """``a < b``, ``y`` (1 same, 0 different): each pair's latest decision (the table's rule:
    ``decided_at``, then ``recorded_at``, then the row order)."""
    from listing_dedup.graph.constraints import SAME, latest_first

    if decisions is None or decisions.empty:
        return pd.DataFrame({"a": pd.Series(dtype=object), "b": pd.Series(dtype=object), "y": pd.Series(dtype=np.int8)})
    d = decisions.copy()
    a, b = d["posting_id_a"].astype(str), d["posting_id_b"].astype(str)
    d["posting_id_a"], d["posting_id_b"] = np.minimum(a, b), np.maximum(a, b)
    d = latest_first(d)
    return pd.DataFrame(
        {
            "a": d["posting_id_a"].to_numpy(dtype=object),
            "b": d["posting_id_b"].to_numpy(dtype=object),
            "y": (d["verdict"] == SAME).to_numpy(dtype=np.int8),
        }
    )


def row_labels(src_ids: np.ndarray, dst_ids: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    """The verdict of each candidate row ``src_ids[i] -> dst_ids[i]`` (either order of the pair):
    1 same, 0 different, :data:`UNDECIDED` (-1) where the pair has no decision."""
    verdict = {(a, b): int(y) for a, b, y in zip(labels["a"], labels["b"], labels["y"])}
    out = np.full(len(src_ids), UNDECIDED, dtype=np.int8)
    for i, (s, d) in enumerate(zip(src_ids, dst_ids)):
        v = verdict.get((s, d) if s < d else (d, s))
        if v is not None:
            out[i] = v
    return out


@dataclass
class DecisionRows:
    """How many decisions became training rows: the decided pairs, those among the candidates
    (their rows: both directions where both are candidates), and the verdicts of those rows."""

    decided: int
    used_pairs: int
    rows: int
    same_rows: int
    changed_rows: int = 0  # with a labelled file: rows whose label the verdict changed

    @property
    def unused(self) -> int:
        return self.decided - self.used_pairs

    def line(self) -> str:
        return (
            f"{self.decided} decided pairs, {self.used_pairs} among the candidates ({self.rows} rows, "
            f"{self.same_rows} same), {self.unused} not proposed by the search (unused)"
            + (f"; {self.changed_rows} labels of the file changed by a verdict" if self.changed_rows else "")
        )


def _count(labels: pd.DataFrame, src_ids, dst_ids, y: np.ndarray) -> DecisionRows:
    hit = y != UNDECIDED
    pairs = {(min(s, d), max(s, d)) for s, d in zip(np.asarray(src_ids)[hit], np.asarray(dst_ids)[hit])}
    return DecisionRows(len(labels), len(pairs), int(hit.sum()), int((y[hit] == 1).sum()))


# --------------------------------------------------------------------------- with a labelled file


def train_with_decisions(df: pd.DataFrame, cfg: Any, decisions: pd.DataFrame, *, cache_dir: str | None = None):
    """:func:`listing_dedup.training.rerank_train.train_reranker` on the labelled split ``df``
    with every decided candidate pair labelled by its verdict. Returns (RerankResult, DecisionRows)."""
    from listing_dedup.training.rerank_train import labelled_parts, train_from_candidates

    labels = decision_labels(decisions)
    seconds: dict[str, float] = {}
    pcs = labelled_parts(df, cfg, seconds, cache_dir=cache_dir)
    t0 = time.perf_counter()
    counted, n_changed = [], 0
    for pc in pcs:
        name = pc.part.name
        ids = pc.part.ids
        s_ids, d_ids = ids[pc.frame["src"].to_numpy()], ids[pc.frame["dst"].to_numpy()]
        y = row_labels(s_ids, d_ids, labels)
        hit = y != UNDECIDED
        changed = int((pc.y[hit] != y[hit]).sum())
        n_changed += changed
        pc.y = np.where(hit, y, pc.y).astype(pc.y.dtype)
        counted.append((s_ids, d_ids, y))
        log.info("part %s: %d candidate rows decided, %d labels changed by a verdict", name, int(hit.sum()), changed)
    seconds["candidates"] += time.perf_counter() - t0
    s_all = np.concatenate([c[0] for c in counted]) if counted else np.array([], dtype=object)
    d_all = np.concatenate([c[1] for c in counted]) if counted else np.array([], dtype=object)
    y_all = np.concatenate([c[2] for c in counted]) if counted else np.array([], dtype=np.int8)
    used = dataclasses.replace(_count(labels, s_all, d_all, y_all), changed_rows=n_changed)
    return train_from_candidates(pcs, cfg, seconds), used


# --------------------------------------------------------------------------- instead of a labelled file


def _params(model: Any, n_rows: int) -> dict[str, Any]:
    """The base model's LightGBM parameters (reranker.json), leaves allowed on a few decisions."""
    params = dict(model.meta.get("lightgbm", {}).get("params", {}))
    params.update(
        objective="binary",
        min_data_in_leaf=int(max(5, min(int(params.get("min_data_in_leaf", 20)), n_rows // 10))),
        num_threads=int(params.get("num_threads", 1) or 1),
        verbose=-1,
    )
    return params


def _graph_inputs(frame: pd.DataFrame):
    codes, uniq = pd.factorize(pd.concat([frame["src"], frame["dst"]], ignore_index=True))
    return codes[: len(frame)], codes[len(frame) :], len(uniq)


def probabilities(model: Any, frame: pd.DataFrame, X: np.ndarray | None = None) -> np.ndarray:
    """``model.round_probabilities(frame)[-1]`` with the pair features ``X`` given (a caller that
    scores one frame with several models computes them once)."""
    from listing_dedup.graph.rerank import graph_features, pair_features

    X = pair_features(frame, model.features) if X is None else X
    p = model.pair_probability(X)
    if model.graph_rounds and len(frame):
        src, dst, n = _graph_inputs(frame)
        for r in range(1, model.graph_rounds + 1):
            p = model.graph_probability(r, X, graph_features(src, dst, p, n, model.graph_floor))
    return p


def refit_model(
    model: Any, frame: pd.DataFrame, y: np.ndarray, *, rounds: int = REFIT_ROUNDS, X: np.ndarray | None = None
) -> Any:
    """A :class:`listing_dedup.graph.rerank.Reranker` boosted ``rounds`` more trees in each of
    ``model``'s rounds on the candidate rows of ``frame`` whose ``y`` is decided (0/1; -1 left
    out): the pair model on the pair features, each graph round on the pair features and the
    graph features of the refitted previous round over the whole frame (as the job computes
    them); ``X``: the frame's pair features when already computed. No decided row, or one
    verdict only: ``model`` unchanged (nothing to learn a boundary from)."""
    import lightgbm as lgb

    from listing_dedup.graph.rerank import Reranker, graph_features, pair_features

    hit = np.asarray(y) != UNDECIDED
    yy = np.asarray(y)[hit].astype(np.float64)
    if not hit.any() or yy.min() == yy.max():
        return model
    X = pair_features(frame, model.features) if X is None else X
    params = _params(model, int(hit.sum()))
    src, dst, n = _graph_inputs(frame)
    texts, prev = [], None
    for r in range(model.graph_rounds + 1):
        feats = X if r == 0 else np.column_stack([X, graph_features(src, dst, prev, n, model.graph_floor)])
        base = model.booster(r)
        booster = lgb.train(
            params,
            lgb.Dataset(feats[hit], yy, free_raw_data=True),
            num_boost_round=rounds,
            init_model=base,
            keep_training_booster=True,
        )
        texts.append(booster.model_to_string())
        prev = np.asarray(booster.predict(feats, num_threads=params["num_threads"]), dtype=np.float64)
    meta = dict(model.meta)
    meta["refit"] = {"decided_rows": int(hit.sum()), "same_rows": int(yy.sum()), "rounds": int(rounds)}
    return Reranker(tuple(texts), meta)


@dataclass
class Refit:
    """A refitted re-ranker, its base, the catalog part it was fitted on and how the decisions were used."""

    model: Any
    base: str
    used: DecisionRows
    health_reference: Any
    seconds: float


def refit_from_decisions(catalog: pd.DataFrame, cfg: Any, decisions: pd.DataFrame, *, cache_dir: str | None = None):
    """The conf's re-ranker refitted on the decided candidate pairs of ``catalog`` (posting_id,
    title, optional image_phash; no labels), searched as the job searches it; its health
    reference recomputed on the catalog (module doc). Raises ConfigError when the conf runs no
    re-ranker (the built-in one on other settings: none)."""
    from listing_dedup.errors import ConfigError
    from listing_dedup.graph.rerank import reranker_for
    from listing_dedup.quality.tune import text_vectors
    from listing_dedup.training.rerank_train import health_reference, part_candidates

    t0 = time.perf_counter()
    if not cfg.rerank.enabled:
        raise ConfigError("config key 'rerank.enabled': --decisions without a labelled file refits the re-ranker")
    model, note = reranker_for(cfg)
    if model is None:
        raise ConfigError(f"config key 'rerank.model': no re-ranker to refit: {note}")
    labels = decision_labels(decisions)
    df = catalog.assign(label_group=catalog["posting_id"].astype(str))  # no labels: unused by the refit
    pc = part_candidates("catalog", df, cfg, text_vectors(df, cfg, cache_dir))
    ids = pc.part.ids
    s_ids, d_ids = ids[pc.frame["src"].to_numpy()], ids[pc.frame["dst"].to_numpy()]
    y = row_labels(s_ids, d_ids, labels)
    used = _count(labels, s_ids, d_ids, y)
    if used.rows == 0:
        raise InputError(f"no decided pair is a candidate of the catalog ({used.line()}): nothing to learn from")
    if len(set(y[y != UNDECIDED].tolist())) < 2:
        raise InputError(f"the decided candidate pairs all have one verdict ({used.line()}): nothing to learn from")
    new = refit_model(model, pc.frame, y)
    probs = new.round_probabilities(pc.frame)[-1]
    t, m2 = float(cfg.rerank.threshold), (float(cfg.rerank.min2_threshold) if cfg.rerank.min2 else None)
    bits = cfg.phash.max_bits if cfg.phash.enabled else None
    ref = health_reference([pc], [probs], t, m2, bits, cfg)
    ref = dataclasses.replace(
        ref, source=f"refit on {used.rows} decided candidate rows of a {len(df)}-listing catalog (in-sample)"
    )
    return Refit(new, str(cfg.rerank.model), used, ref, time.perf_counter() - t0)


def write_refit_dir(out: str | Path, refit: Refit, cfg: Any, *, source: str) -> dict:
    """The refitted model's directory, as ``jobs/train_reranker.py`` writes one: the model texts,
    reranker.json (the base's, with ``refit`` and ``trained_on``), its health reference, metrics
    and ``overlay.yaml`` (the base's thresholds). Returns the overlay."""
    import yaml

    from listing_dedup.graph.rerank import MODEL_JSON, MODEL_TXT, graph_model_file
    from listing_dedup.quality.health import write_reference
    from listing_dedup.training.rerank_train import reranker_overlay

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob("reranker_graph*.txt"):
        stale.unlink()
    (d / MODEL_TXT).write_text(refit.model.model_texts[0])
    for r, text in enumerate(refit.model.model_texts[1:], start=1):
        (d / graph_model_file(r)).write_text(text)
    meta = dict(refit.model.meta)
    meta["trained_on"] = f"{meta.get('trained_on', refit.base)}; refit on the decisions of {source}"
    meta["refit"] = {**meta.get("refit", {}), "base": refit.base, **dataclasses.asdict(refit.used)}
    (d / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (d / "metrics.json").write_text(
        json.dumps({"refit": meta["refit"], "seconds": round(refit.seconds, 2)}, indent=2) + "\n"
    )
    write_reference(d, refit.health_reference)
    m2 = float(cfg.rerank.min2_threshold) if cfg.rerank.min2 else None
    overlay = reranker_overlay(d, _Thresholds(float(cfg.rerank.threshold), m2), cfg)
    header = (
        "# written by jobs/train_reranker.py --decisions: pass as the last --conf to jobs/dedup_listings.py\n"
        f"# (the re-ranker {refit.base} refitted on the reviewers' decisions; its thresholds)\n"
    )
    (d / "overlay.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    return overlay


@dataclass(frozen=True)
class _Thresholds:
    threshold: float
    min2_threshold: float | None


__all__ = [
    "REFIT_ROUNDS",
    "UNDECIDED",
    "DecisionRows",
    "Refit",
    "decision_labels",
    "labels_with_decisions",
    "probabilities",
    "refit_from_decisions",
    "read_for_training",
    "refit_model",
    "row_labels",
    "train_with_decisions",
    "write_refit_dir",
]


def read_for_training(warehouse: str, input_path: str, truth: str | None, cfg: Any):
    """The warehouse's decisions and, when the input has no labels (no ``label_group`` column and
    no ``truth``), the catalog (posting_id, cleaned title, image_phash) to refit on; else
    ``(decisions, None)``: the labelled file is read by the usual path. InputError when the
    warehouse has no decisions or the input cannot be read."""
    from listing_dedup.errors import first_line
    from listing_dedup.ingest.rows import clean_posting_id
    from listing_dedup.ingest.titles import clean_title
    from listing_dedup.sink.decisions import read_decisions

    decisions = read_decisions(warehouse)
    if decisions is None or decisions.empty:
        raise InputError(f"no decisions in {warehouse}: record verdicts with listing-dedup decide first")
    if truth:
        return decisions, None
    try:
        df = pd.read_parquet(input_path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read input {input_path}: {first_line(e)}") from None
    if "label_group" in df.columns:
        return decisions, None
    if "posting_id" not in df.columns or "title" not in df.columns:
        raise InputError(f"input {input_path} needs posting_id and title columns")
    keep = [c for c in ("posting_id", "title", "image_phash") if c in df.columns]
    df = df[keep].dropna(subset=["posting_id"]).drop_duplicates("posting_id").reset_index(drop=True)
    df["posting_id"] = df["posting_id"].map(clean_posting_id)
    df = df.dropna(subset=["posting_id"]).drop_duplicates("posting_id").reset_index(drop=True)
    df["title"] = df["title"].map(lambda t: clean_title(t, cfg.input.max_title_chars))
    return decisions, df


# --------------------------------------------------------------------------- the tuning job's labels


def labels_with_decisions(df: pd.DataFrame, decisions: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Listings labelled for ``jobs/tune.py --decisions`` (a partition into ``label_group``s, which
    the tuning scores row-wise). The honoured decisions (graph/constraints.resolve_links, the
    latest first) on the listings of ``df``:

    * ``df`` with a ``label_group`` column (together with a labelled file): a ``same`` pair of two
      label groups joins them; a ``different`` pair inside one label group takes its ``b`` listing
      out of that group (alone, with any listing a ``same`` decision ties to it);
    * without one (instead of a labelled file): only the decided listings, grouped by their
      ``same`` decisions (a listing with ``different`` verdicts only is alone).

    Returns the labelled rows and counts (``joined``, ``taken_out``, ``listings``, and ``conflicts``:
    ``different`` pairs a ``same`` decision into another listing of the file's group rejoined,
    which a partition cannot honour)."""
    from listing_dedup.graph.constraints import DIFFERENT, SAME, latest_first, resolve_links

    d = decisions.copy()
    a, b = d["posting_id_a"].astype(str), d["posting_id_b"].astype(str)
    d["posting_id_a"], d["posting_id_b"] = np.minimum(a, b), np.maximum(a, b)
    d = latest_first(d)
    known = set(df["posting_id"].astype(str))
    links = [
        (x, y, v) for x, y, v in zip(d["posting_id_a"], d["posting_id_b"], d["verdict"]) if x in known and y in known
    ]
    ok = resolve_links(links)
    same = [(x, y) for (x, y, v), k in zip(links, ok) if k and v == SAME]
    diff = [(x, y) for (x, y, v), k in zip(links, ok) if k and v == DIFFERENT]
    labelled = "label_group" in df.columns
    out = df.copy()
    out["posting_id"] = out["posting_id"].astype(str)
    if not labelled:
        decided = {x for pair in same + diff for x in pair}
        out = out[out["posting_id"].isin(decided)].reset_index(drop=True)
        out["label_group"] = out["posting_id"]
    label = dict(zip(out["posting_id"], out["label_group"].astype(str)))
    taken = 0
    for x, y in diff:  # a different pair inside one label group: y leaves it
        if label[x] == label[y]:
            label[y] = f"decided:{y}"
            taken += 1
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    joined = 0
    for x, y in same:
        gx, gy = find(label[x]), find(label[y])
        if gx != gy:
            parent[max(gx, gy)] = min(gx, gy)
            joined += 1
    out["label_group"] = out["posting_id"].map(lambda p: find(label[p]))
    final = dict(zip(out["posting_id"], out["label_group"]))
    conflicts = sum(final[x] == final[y] for x, y in diff)  # a same chain through the file's groups rejoined them
    return out, {"joined": joined, "taken_out": taken, "conflicts": int(conflicts), "listings": len(out)}
