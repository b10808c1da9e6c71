"""Why each match was kept: the explanation columns of the ``matches`` table (issue 32).

Every match of a listing (``match_ids[i]``, ``scores[i]``) carries, at the same position:

* ``kept_by[i]``: which rule or model kept the edge, ``+``-joined when several did:
  ``must-link`` (a reviewer's ``same`` decision, graph/constraints.py), the model
  ``reranker:<rerank.model>`` (its probability at or above ``rerank.threshold``) or the rule
  ``threshold`` (the fused score at or above ``match.threshold``), ``phash`` (the pair is within
  ``phash.max_bits``); an edge none of these explain was kept by the rule's other parts:
  ``min2`` / ``relative`` / ``mutual`` (on the model's probability: ``reranker:<model>:min2``) or
  a one-signal search ``union:<signal>``, ``|``-joined when the conf enables several (the edge's
  score alone cannot tell them apart);
* ``signal_scores[i]``: the per-signal scores of the pair at edge time, from the vectors the run
  searched: the cosine of each dense signal both listings carry (``text``, ``lexical``,
  ``image``), ``fused`` (the inner product of the fused vectors, the searched score), ``rerank``
  (the re-ranker's probability where it scored the pair), ``phash`` (1 - bits / 64 where the pair
  is a pHash pair), as in the ``candidates`` table;
* ``phash_distance[i]``: the Hamming distance of the two listings' 64-bit pHashes (null when
  either has none).

The labels are read off what the stages produced (the search's neighbours, the re-ranker's
probabilities, the pHash pairs, the decisions), not recorded by them: :func:`kept_by` is the pure
rule, :func:`explained_match_sets` the Spark layer that the job's commit stage calls instead of
:func:`listing_dedup.graph.edges.match_sets` (same ``match_ids`` and ``scores``, same order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXPLAIN_COLUMNS = ("kept_by", "signal_scores", "phash_distance")
MUST_LINK, THRESHOLD, PHASH = "must-link", "threshold", "phash"


@dataclasses.dataclass(frozen=True)
class EdgeRule:
    """What kept the run's edges: the model (None: the threshold rule on the fused score) and the
    rule's parameters on its score, and the one-signal searches the conf enables."""

    model: str | None
    threshold: float
    min2: bool = False
    min2_threshold: float = 0.0
    relative: bool = False
    relative_floor: float = 0.0
    mutual_rank: int = 0
    mutual_floor: float = 0.0
    union: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: Any, rule: Any, reranked: bool) -> EdgeRule:
        """The rule of a run under ``cfg`` as the graph stage applied it: ``rule`` (a MatchConf:
        the titles model's thresholds are prior-shifted to the catalog, so not ``cfg``'s);
        ``reranked``: the re-ranker's edges were kept (no fallback), named by ``rerank.model``."""
        union = tuple(s for s in ("text", "lexical", "image") if getattr(getattr(cfg.union, s), "enabled", False))
        if reranked:
            name = str(cfg.rerank.model)
            name = name if "/" not in name and "\\" not in name else Path(name).name
            return cls(f"reranker:{name}", rule.threshold, rule.min2, rule.min2_threshold, union=union)
        return cls(
            None,
            rule.threshold,
            rule.min2,
            rule.min2_threshold,
            rule.relative,
            rule.relative_floor,
            rule.mutual_rank,
            rule.mutual_floor,
            union,
        )


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def kept_by(rule: EdgeRule, *, must: bool, rule_score: Any, phash_pair: bool) -> str:
    """The label of one kept edge (module doc): ``rule_score`` is the pair's score under the rule
    (the re-ranker's probability, or the fused score; None when the rule never scored it)."""
    parts = []
    if must:
        parts.append(MUST_LINK)
    s = float(rule_score) if _present(rule_score) else None
    if s is not None and s >= rule.threshold:
        parts.append(rule.model or THRESHOLD)
    if phash_pair:
        parts.append(PHASH)
    if parts:
        return "+".join(parts)
    prefix = f"{rule.model}:" if rule.model else ""
    others = []
    if s is not None:
        if rule.min2 and s >= rule.min2_threshold:
            others.append(prefix + "min2")
        if rule.relative and s >= rule.relative_floor:
            others.append(prefix + "relative")
        if rule.mutual_rank > 0 and s >= rule.mutual_floor:
            others.append(prefix + "mutual")
    others += [f"union:{u}" for u in rule.union]
    return "|".join(others) or "unknown"


def phash_distance(a: Any, b: Any) -> int | None:
    """Hamming distance of two 16-hex-digit pHashes; None when either is missing or malformed
    (:func:`listing_dedup.graph.rerank.phash_bits`, the re-ranker's own, on one pair)."""
    return _distances([a], [b])[0]


def _distances(a: Sequence, b: Sequence) -> list[int | None]:
    from listing_dedup.graph.rerank import phash_bits

    return [None if np.isnan(d) else int(d) for d in phash_bits(a, b)]


def explain_pairs(pdf: pd.DataFrame, rule: EdgeRule, layout: Any) -> pd.DataFrame:
    """Pure core of the Spark layer, on one batch of undirected edges: columns ``src``, ``dst``,
    ``score``, ``_must`` (bool), ``_rule`` (the rule's score or NaN), ``_rr`` (the re-ranker's
    probability or NaN), ``_ph`` (the pHash pair's score or NaN), ``_ha``/``_hb`` (the pHashes),
    ``_ea``/``_eb`` (the fused vectors, None where missing). Returns ``src, dst, score, kept_by,
    signal_scores, phash_distance``."""
    from listing_dedup.embed.fusion import signal_scores

    n = len(pdf)
    maps: list[dict[str, float]] = [{} for _ in range(n)]
    has = np.array([a is not None and b is not None for a, b in zip(pdf["_ea"], pdf["_eb"])], dtype=bool)
    if layout is not None and has.any():
        idx = np.flatnonzero(has)
        ea = np.stack([np.asarray(pdf["_ea"].iat[i], dtype=np.float32) for i in idx])
        eb = np.stack([np.asarray(pdf["_eb"].iat[i], dtype=np.float32) for i in idx])
        per = signal_scores(ea, eb, layout)
        fused = np.einsum("ij,ij->i", ea, eb)
        for j, i in enumerate(idx):
            maps[i] = {s: float(v[j]) for s, v in per.items() if not np.isnan(v[j])}
            maps[i]["fused"] = float(fused[j])
    labels = []
    dist = _distances(pdf["_ha"].tolist(), pdf["_hb"].tolist())
    for i in range(n):
        rr, ph = pdf["_rr"].iat[i], pdf["_ph"].iat[i]
        if _present(rr):
            maps[i]["rerank"] = float(rr)
        if _present(ph):
            maps[i]["phash"] = float(ph)
        labels.append(
            kept_by(rule, must=bool(pdf["_must"].iat[i]), rule_score=pdf["_rule"].iat[i], phash_pair=_present(ph))
        )
    return pd.DataFrame(
        {
            "src": pdf["src"].to_numpy(),
            "dst": pdf["dst"].to_numpy(),
            "score": pdf["score"].astype(np.float32).to_numpy(),
            "kept_by": labels,
            "signal_scores": maps,
            "phash_distance": pd.array(dist, dtype="Int32"),
        }
    )


# --------------------------------------------------------------------------- Spark


def explain_edges(
    edges: Any,
    *,
    kept: Any,
    rule: EdgeRule,
    fused: Any = None,
    layout: Any = None,
    rule_scores: Any = None,
    rerank_scores: Any = None,
    phash_pairs: Any = None,
    must_links: Sequence[tuple[str, str]] = (),
) -> Any:
    """The match ``edges`` (src, dst, score; both directions) with ``kept_by``, ``signal_scores``
    and ``phash_distance`` (both directions). ``kept``: the listings (``posting_id``,
    ``image_phash``); ``fused``: ``posting_id, emb`` (the searched vectors, with ``layout``);
    ``rule_scores``: the rule's scored pairs (the re-ranker's probabilities or the search's
    neighbours); ``rerank_scores``: the re-ranker's probabilities; ``phash_pairs``: the pHash
    pairs; ``must_links``: the honoured ``same`` decisions."""
    from pyspark.sql import functions as F

    spark = edges.sparkSession
    und = edges.where(F.col("src") < F.col("dst")).select("src", "dst", F.col("score").cast("float").alias("score"))
    # the rule's, the re-ranker's and the pHash pairs' scores: one union, one aggregation, one join
    tagged = [
        f.select(
            F.least("src", "dst").alias("src"),
            F.greatest("src", "dst").alias("dst"),
            F.lit(name).alias("_t"),
            F.col("score").cast("double").alias("_v"),
        )
        for f, name in ((rule_scores, "_rule"), (rerank_scores, "_rr"), (phash_pairs, "_ph"))
        if f is not None
    ]
    names = ("_rule", "_rr", "_ph")
    if tagged:
        scores = tagged[0]
        for t in tagged[1:]:
            scores = scores.unionByName(t)
        scores = scores.groupBy("src", "dst").agg(
            *[F.max(F.when(F.col("_t") == n, F.col("_v"))).alias(n) for n in names]
        )
        und = und.join(scores, ["src", "dst"], "left")
    else:
        for n in names:
            und = und.withColumn(n, F.lit(None).cast("double"))
    pairs = sorted({(min(a, b), max(a, b)) for a, b in must_links if a != b})
    if pairs:
        must = spark.createDataFrame(pd.DataFrame(pairs, columns=["src", "dst"]), "src string, dst string")
        und = und.join(F.broadcast(must.withColumn("_must", F.lit(True))), ["src", "dst"], "left")
        und = und.withColumn("_must", F.coalesce("_must", F.lit(False)))
    else:
        und = und.withColumn("_must", F.lit(False))
    # each end's pHash and fused vector: one frame, joined once per end
    side = kept.select("posting_id", F.col("image_phash").cast("string").alias("h"))
    if fused is not None and layout is not None:
        side = side.join(fused.select("posting_id", "emb"), "posting_id", "left")
    else:
        side = side.withColumn("emb", F.lit(None).cast("array<float>"))
    for end, x in (("src", "a"), ("dst", "b")):
        und = und.join(
            side.select(F.col("posting_id").alias(end), F.col("h").alias(f"_h{x}"), F.col("emb").alias(f"_e{x}")),
            end,
            "left",
        )

    def _explain(batches):
        for pdf in batches:
            if not pdf.empty:
                yield explain_pairs(pdf, rule, layout)

    schema = "src string, dst string, score float, kept_by string, signal_scores map<string,float>, phash_distance int"
    one = und.mapInPandas(_explain, schema)
    cols = ["score", "kept_by", "signal_scores", "phash_distance"]
    return one.unionByName(one.select(F.col("dst").alias("src"), F.col("src").alias("dst"), *cols))


def explained_match_sets(explained: Any, vertices: Any) -> Any:
    """:func:`listing_dedup.graph.edges.match_sets` with the explanation arrays aligned with
    ``match_ids`` (same order: score desc, then id): ``posting_id, match_ids, scores, kept_by,
    signal_scores, phash_distance``; a listing without matches gets empty arrays."""
    from pyspark.sql import functions as F

    item = F.struct(
        (-F.col("score").cast("float")).alias("neg"),
        F.col("dst").alias("id"),
        F.col("kept_by").alias("kept_by"),
        F.col("signal_scores").alias("signal_scores"),
        F.col("phash_distance").alias("phash_distance"),
    )

    def order(x, y):
        return (
            F.when(x["neg"] < y["neg"], -1)
            .when(x["neg"] > y["neg"], 1)
            .when(x["id"] < y["id"], -1)
            .when(x["id"] > y["id"], 1)
            .otherwise(0)
        )

    agg = explained.groupBy(F.col("src").alias("posting_id")).agg(F.array_sort(F.collect_list(item), order).alias("_m"))
    joined = vertices.select(F.col("posting_id").cast("string").alias("posting_id")).join(agg, "posting_id", "left")

    def arr(field: str, typ: str):
        return F.coalesce(F.transform("_m", lambda s: s[field]), F.array().cast(f"array<{typ}>"))

    return joined.select(
        "posting_id",
        arr("id", "string").alias("match_ids"),
        F.coalesce(F.transform("_m", lambda s: -s["neg"]), F.array().cast("array<float>")).alias("scores"),
        arr("kept_by", "string").alias("kept_by"),
        arr("signal_scores", "map<string,float>").alias("signal_scores"),
        arr("phash_distance", "int").alias("phash_distance"),
    )


def unexplained_match_sets(edges: Any, vertices: Any) -> Any:
    """The ``matches`` rows without explanations (``output.explanations: false``): the plain
    :func:`listing_dedup.graph.edges.match_sets` with ``kept_by``, ``signal_scores`` and
    ``phash_distance`` null (not recorded), so the table keeps one schema either way."""
    from pyspark.sql import functions as F

    from listing_dedup.graph.edges import match_sets

    return match_sets(edges, vertices).select(
        "posting_id",
        "match_ids",
        "scores",
        F.lit(None).cast("array<string>").alias("kept_by"),
        F.lit(None).cast("array<map<string,float>>").alias("signal_scores"),
        F.lit(None).cast("array<int>").alias("phash_distance"),
    )


def matches_of_run(run: Any, setup: Any, listings: Any, matched: Any) -> Any:
    """The ``matches`` rows of a run (the pipeline's commit stage): its final match edges
    explained with what its stages produced (``run``, ``setup``, ``listings``, ``matched``: the
    pipeline's stage objects)."""
    from listing_dedup.graph.constraints import SAME, resolve_links

    rule = EdgeRule.of(run.cfg, matched.rule, matched.reranked)
    nbrs = matched.rounds.nbrs if matched.rounds is not None else None
    must: list[tuple[str, str]] = []
    if setup.decisions is not None:
        links, _ = setup.decisions.resolve(listings.kept)
        must = [(a, b) for (a, b, v), ok in zip(links, resolve_links(links)) if ok and v == SAME]
    explained = explain_edges(
        matched.edges,
        kept=listings.kept,
        rule=rule,
        fused=matched.embedded.emb if run.summary.rows_embedded else None,
        layout=matched.embedded.layout,
        rule_scores=matched.scored if matched.reranked else nbrs,
        rerank_scores=matched.scored,
        phash_pairs=matched.ph_pairs,
        must_links=must,
    )
    return explained_match_sets(explained, listings.kept.select("posting_id"))
