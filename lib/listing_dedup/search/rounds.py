"""The search rounds of a night, in its two plans: the pre-INB search and one search a blending
round (``inb.thresholds``), each over an index of that round's vectors.

* :func:`full_rounds`: every listing searched, every vector blended (the first night, ``--full``
  and every night with ``incremental.enabled`` off);
* :func:`delta_rounds`: the incremental night (docs/incremental.md): the night's delta searched
  against tonight's index and the other lists updated symmetrically
  (:func:`listing_dedup.search.incremental.search_delta`), and in each blending round only the
  listings whose blended vector changes are blended again (:func:`blend_affected`); the others'
  come from the state.

Both search ``depth`` neighbours a listing (``index.k`` plus the state's slack; ``depth == k``
with the incremental state off) and give the later stages each round's top ``k`` (:func:`top_k`),
so the edges, the re-ranker and the health check see the same lists in both plans."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from listing_dedup.frames import cut_lineage
from listing_dedup.search.blender import blend
from listing_dedup.search.incremental import search_delta
from listing_dedup.search.indexer import Quantizer, build_index, search, train

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from listing_dedup.config import DedupConfig
    from listing_dedup.timing import StageTimer

log = logging.getLogger(__name__)

__all__ = ["SearchRounds", "blend_affected", "delta_rounds", "full_rounds", "top_k"]


@dataclass
class SearchRounds:
    """The rounds' results: ``lists[r]`` each round's lists at ``depth`` (what the state keeps),
    ``vectors[r]`` each round's vectors (``posting_id, emb``; round 0 the fused ones),
    ``first_nbrs`` / ``nbrs`` the pre-INB and the last round's top ``k`` (the later stages'),
    the quantizer every round used, and the counts of an incremental night."""

    lists: list[Any]
    vectors: list[Any]
    first_nbrs: Any
    nbrs: Any
    quantizer: Quantizer
    counts: dict[str, int] = field(default_factory=dict)


def top_k(lists: DataFrame, k: int, depth: int) -> DataFrame:
    """Each src's best ``k`` rows of ``lists`` (score desc, then dst), materialised; ``lists``
    itself when it holds no more than ``k`` a src (``depth <= k``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if depth <= k:
        return lists
    w = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst"))
    return cut_lineage(lists.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= k).drop("_r"))


def _search_all(emb, cfg, n_rows, timer, suffix, quantizer, depth) -> tuple[DataFrame, Quantizer]:
    """Index ``emb`` and search it with itself at ``depth`` (the quantizer trained here when
    None, inside the index stage); returns the lists and the quantizer."""
    with timer.stage(f"index{suffix}") as c:
        if quantizer is None:
            quantizer = train(emb, cfg.index, n_rows=n_rows)
        index = build_index(emb, cfg.index, n_rows=n_rows, quantizer=quantizer)
        c["lists"] = index.nlist
    try:
        with timer.stage(f"search{suffix}") as c:
            # materialised without lineage: the edge rules, the health check and the next INB
            # round would otherwise re-analyse every stage's plan up to here at each action
            nbrs = cut_lineage(search(index, emb, depth, fail_stage=cfg.testing.fail_once_stage))
            c["neighbour_pairs"] = nbrs.count()
    finally:
        index.unpersist()  # the neighbours are materialised; the shards are no longer needed
    return nbrs, quantizer


def full_rounds(
    emb: DataFrame,
    cfg: DedupConfig,
    n_rows: int,
    timer: StageTimer,
    keep: Callable[[DataFrame], DataFrame],
    *,
    depth: int,
    quantizer: Quantizer | None = None,
) -> SearchRounds:
    """Every listing searched in every round (``quantizer``: trained here from ``emb`` when None,
    reused by the blending rounds)."""
    k = cfg.index.k
    first_lists, quantizer = _search_all(emb, cfg, n_rows, timer, "", quantizer, depth)
    lists = [first_lists]
    vectors = [emb]
    for r, threshold in enumerate(cfg.inb.thresholds, start=1):
        with timer.stage(f"blend{r}") as c:
            emb = keep(blend(emb, top_k(lists[-1], k, depth), threshold))
            c["blended"] = emb.count()
        vectors.append(emb)
        lists.append(_search_all(emb, cfg, n_rows, timer, str(r), quantizer, depth)[0])
    first = top_k(lists[0], k, depth)
    last = top_k(lists[-1], k, depth) if len(lists) > 1 else first
    return SearchRounds(lists, vectors, first, last, quantizer)


def blend_affected(
    prev_top: DataFrame, now_top: DataFrame, changed: DataFrame, alive: DataFrame, threshold: float
) -> DataFrame:
    """The listings whose blended vector changes tonight (``posting_id``): those whose own
    vector changed (``changed``), those whose neighbours at or above ``threshold`` differ
    between yesterday's and tonight's top-k lists (``prev_top``, ``now_top``: another neighbour
    or another score), and those with such a neighbour among ``changed`` (its vector moved);
    only listings of tonight's catalog (``alive``)."""
    from pyspark.sql import functions as F

    t = F.lit(float(threshold))
    a = prev_top.where(F.col("score") >= t).select("src", "dst", F.col("score").alias("s_prev"))
    b = now_top.where(F.col("score") >= t).select("src", "dst", F.col("score").alias("s_now"))
    moved = (
        a.join(b, ["src", "dst"], "full")
        .where(F.col("s_prev").isNull() | F.col("s_now").isNull() | (F.col("s_prev") != F.col("s_now")))
        .select(F.col("src").alias("posting_id"))
    )
    via = b.join(changed.select(F.col("posting_id").alias("dst")), "dst").select(F.col("src").alias("posting_id"))
    out = moved.unionByName(via).unionByName(changed.select("posting_id")).distinct()
    return out.join(alive.select("posting_id"), "posting_id")


def delta_rounds(
    emb: DataFrame,
    cfg: DedupConfig,
    n_rows: int,
    timer: StageTimer,
    keep: Callable[[DataFrame], DataFrame],
    *,
    depth: int,
    quantizer: Quantizer,
    delta: DataFrame,
    prev_lists: list[DataFrame],
    prev_vectors: list[DataFrame | None],
    search_depth: int | None = None,
) -> SearchRounds:
    """The incremental night's rounds. ``delta``: ``posting_id, kind`` of tonight against the
    state (:func:`~listing_dedup.search.incremental.night_delta_spark`); ``prev_lists[r]`` the
    state's lists of round ``r``, ``prev_vectors[r]`` its vectors of round ``r >= 1``
    (``posting_id, emb``; index 0 unused: tonight's fused vectors of unchanged listings are
    yesterday's, the cache's bits); ``quantizer`` the epoch's."""
    from pyspark.sql import functions as F

    k = cfg.index.k
    fail = cfg.testing.fail_once_stage
    alive = keep(emb.select("posting_id"))
    prev_lists = [keep(lists) for lists in prev_lists]  # each read by several joins: from the state's files once
    counts = {f"{kind}": 0 for kind in ("added", "changed", "deleted", "unchanged")}
    counts.update({r["kind"]: int(r["count"]) for r in delta.groupBy("kind").count().collect()})

    def round_search(vecs, round_delta, prev, suffix):
        with timer.stage(f"index{suffix}") as c:
            index = build_index(vecs, cfg.index, n_rows=n_rows, quantizer=quantizer)
            c["lists"] = index.nlist
        try:
            with timer.stage(f"search{suffix}") as c:
                lists, got = search_delta(
                    index, vecs, prev, round_delta, k=k, depth=depth, search_depth=search_depth, fail_stage=fail
                )
                c.update(searched=got["searched"], stale=got["stale"])
        finally:
            index.unpersist()
        counts[f"searched{suffix}"] = got["searched"]
        counts[f"stale{suffix}"] = got["stale"]
        return lists

    lists = [round_search(emb, delta, prev_lists[0], "")]
    vectors = [emb]
    changed = keep(delta.where(F.col("kind").isin("added", "changed")).select("posting_id"))
    deleted = delta.where(F.col("kind") == "deleted").select("posting_id")
    added = delta.where(F.col("kind") == "added").select("posting_id")
    for r, threshold in enumerate(cfg.inb.thresholds, start=1):
        with timer.stage(f"blend{r}") as c:
            prev_top = top_k(prev_lists[r - 1], k, depth)
            now_top = top_k(lists[-1], k, depth)
            affected = cut_lineage(blend_affected(prev_top, now_top, changed, alive, threshold))
            fresh = blend(emb, now_top, threshold, only=affected)
            kept_old = prev_vectors[r].join(alive, "posting_id").join(affected, "posting_id", "left_anti")
            emb = keep(cut_lineage(kept_old.unionByName(fresh)))
            c.update(blended=affected.count(), vectors=emb.count())
        counts[f"blended{r}"] = c["blended"]
        kinds = (
            alive.join(added.withColumn("_a", F.lit(True)), "posting_id", "left")
            .join(affected.withColumn("_b", F.lit(True)), "posting_id", "left")
            .select(
                "posting_id",
                F.when(F.col("_a"), "added").when(F.col("_b"), "changed").otherwise("unchanged").alias("kind"),
            )
            .unionByName(deleted.withColumn("kind", F.lit("deleted")))
        )
        vectors.append(emb)
        lists.append(round_search(emb, kinds, prev_lists[r], str(r)))
        changed = affected
    first = top_k(lists[0], k, depth)
    last = top_k(lists[-1], k, depth) if len(lists) > 1 else first
    return SearchRounds(lists, vectors, first, last, quantizer, counts)
