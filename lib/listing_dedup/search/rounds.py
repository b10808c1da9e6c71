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

__all__ = [
    "SearchRounds",
    "blend_affected",
    "delta_rounds",
    "full_rounds",
    "ranked",
    "rule_depth",
    "rule_rows",
    "top_k",
]


@dataclass
class SearchRounds:
    """The rounds' results: ``lists[r]`` each round's lists at ``depth`` with their ``rank`` (what the state keeps),
    ``vectors[r]`` each round's vectors (``posting_id, emb``; round 0 the fused ones),
    ``first_nbrs`` / ``nbrs`` the pre-INB and the last round's top ``k`` (the later stages'),
    the quantizer every round used, and the counts of an incremental night."""

    lists: list[Any]
    vectors: list[Any]
    first_nbrs: Any
    nbrs: Any
    quantizer: Quantizer
    counts: dict[str, int] = field(default_factory=dict)
    # the driver plan's arrays (search/driver_night.DriverState): the state tonight leaves as
    # files; None for the Spark plan's rounds (their state is collected when the catalog fits)
    driver: Any = None
    # the ranks nbrs holds a list (None: index.k): the driver plan ships fewer when the later
    # stages read its arrays (search/driver_night.incremental_rounds)
    nbrs_k: int | None = None


def top_k(lists: DataFrame, k: int, depth: int) -> DataFrame:
    """Each src's best ``k`` rows of ``lists`` (score desc, then dst) as ``src, dst, score``,
    materialised. Lists that carry their ``rank`` (the search's, kept by the update and the
    state) are filtered by it: no window, no shuffle of the ``N * depth`` rows; lists without
    one are ranked by a window. ``lists`` itself when it holds no more than ``k`` a src
    (``depth <= k``)."""
    from pyspark.sql import functions as F

    if depth <= k:
        return lists.select("src", "dst", "score")
    return cut_lineage(ranked(lists).where(F.col("rank") <= k).select("src", "dst", "score"))


def ranked(lists: DataFrame) -> DataFrame:
    """``lists`` with each row's ``rank`` in its src's list (1 = nearest; score desc, then dst):
    as it is when it has one, else by a window (lists of a state written before ranks were kept)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if "rank" in lists.columns:
        return lists
    w = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst"))
    return lists.withColumn("rank", F.row_number().over(w))


def rule_depth(rule: Any) -> int:
    """How deep into a listing's ranked list the edge rules of ``rule`` (a ``MatchConf``, graph/
    edges.py) read, beyond its rows at or above ``threshold``: the relative rule's background
    rank, the mutual rank, the nearest for min2 (1 at least)."""
    return max(
        int(rule.relative_rank) if rule.relative else 0,
        int(rule.mutual_rank),
        1,
    )


def rule_rows(lists: DataFrame, k: int, rule: Any) -> DataFrame:
    """The rows of each src's top ``k`` the edge rules can read (``src, dst, score``): the top
    :func:`rule_depth` and every row at or above ``rule.threshold`` (compared in double, as the
    rules do). The rules read a listing's ranks in order, so this is a prefix of its list, and
    ``select_edges`` gives the same edges from it as from the whole top ``k`` (tested in
    tests/test_rule_rows.py for every rule); the edge stage then ranks ~3 rows a listing, not
    ``k``. ``lists`` must carry its ``rank``."""
    from pyspark.sql import functions as F

    reads = (F.col("rank") <= F.lit(rule_depth(rule))) | (F.col("score").cast("double") >= F.lit(float(rule.threshold)))
    return lists.where((F.col("rank") <= F.lit(int(k))) & reads).select("src", "dst", "score")


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
            nbrs = cut_lineage(search(index, emb, depth, fail_stage=cfg.testing.fail_once_stage, with_rank=True))
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
    tops = [top_k(first_lists, k, depth)]  # each round's top k: blended from, and the later stages'
    vectors = [emb]
    for r, threshold in enumerate(cfg.inb.thresholds, start=1):
        with timer.stage(f"blend{r}") as c:
            emb = keep(blend(emb, tops[-1], threshold))
            c["blended"] = emb.count()
        vectors.append(emb)
        lists.append(_search_all(emb, cfg, n_rows, timer, str(r), quantizer, depth)[0])
        tops.append(top_k(lists[-1], k, depth))
    return SearchRounds(lists, vectors, tops[0], tops[-1], quantizer)


def blend_affected(
    prev_top: DataFrame,
    now_top: DataFrame,
    changed: DataFrame,
    alive: DataFrame,
    threshold: float,
    touched: DataFrame | None = None,
) -> DataFrame:
    """The listings whose blended vector changes tonight (``posting_id``): those whose own
    vector changed (``changed``), those whose neighbours at or above ``threshold`` differ
    between yesterday's and tonight's top-k lists (``prev_top``, ``now_top``: another neighbour
    or another score), and those with such a neighbour among ``changed`` (its vector moved);
    only listings of tonight's catalog (``alive``). ``touched`` (``posting_id``, small): the
    srcs whose lists the night's update rebuilt (search_delta); every other list is yesterday's
    row for row, so only theirs are compared (two broadcast semi joins instead of a full outer
    join of both nights' ``N * k`` rows)."""
    from pyspark.sql import functions as F

    t = F.lit(float(threshold))
    a = prev_top.where(F.col("score") >= t).select("src", "dst", F.col("score").alias("s_prev"))
    b = now_top.where(F.col("score") >= t).select("src", "dst", F.col("score").alias("s_now"))
    a_cmp, b_cmp = a, b
    if touched is not None:
        ids = F.broadcast(touched.select(F.col("posting_id").alias("src")))
        a_cmp, b_cmp = a.join(ids, "src", "left_semi"), b.join(ids, "src", "left_semi")
    moved = (
        a_cmp.join(b_cmp, ["src", "dst"], "full")
        .where(F.col("s_prev").isNull() | F.col("s_now").isNull() | (F.col("s_prev") != F.col("s_now")))
        .select(F.col("src").alias("posting_id"))
    )
    dsts = F.broadcast(changed.select(F.col("posting_id").alias("dst")))
    via = b.join(dsts, "dst").select(F.col("src").alias("posting_id"))
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
    blend_reach: int = 4,
) -> SearchRounds:
    """The incremental night's rounds. ``delta``: ``posting_id, kind`` of tonight against the
    state (:func:`~listing_dedup.search.incremental.night_delta_spark`); ``prev_lists[r]`` the
    state's lists of round ``r``, ``prev_vectors[r]`` its vectors of round ``r >= 1``
    (``posting_id, emb``; index 0 unused: tonight's fused vectors of unchanged listings are
    yesterday's, the cache's bits); ``quantizer`` the epoch's. ``search_depth`` (default
    ``depth`` in round 0, ``blend_reach * depth`` in the blending rounds): how many neighbours an
    inserted listing's search returns, its reach into other lists. A re-blended listing leaves
    every list that held it and re-enters those its own search returns: in a dense catalog many
    more lists hold it than its top ``depth`` holds (the kNN graph is not symmetric), and a list
    that loses more than its slack goes stale and is searched again in full; a deeper reach of
    the re-blended listings' searches (whose cost is the probed lists' scan, not ``k``) puts
    them back into more of those lists: fewer stale lists, and fewer lists that miss a listing
    whose search did not reach them (the approximation of module search/incremental.py)."""
    from pyspark.sql import functions as F

    k = cfg.index.k
    fail = cfg.testing.fail_once_stage
    alive = keep(emb.select("posting_id"))
    # each read by several joins: from the state's files once (ranked: the top k is a filter)
    prev_lists = [keep(ranked(lists)) for lists in prev_lists]
    counts = {f"{kind}": 0 for kind in ("added", "changed", "deleted", "unchanged")}
    counts.update({r["kind"]: int(r["count"]) for r in delta.groupBy("kind").count().collect()})

    def round_search(vecs, round_delta, prev, suffix):
        reach = search_depth or (depth if not suffix else blend_reach * depth)
        with timer.stage(f"index{suffix}") as c:
            index = build_index(vecs, cfg.index, n_rows=n_rows, quantizer=quantizer)
            c["lists"] = index.nlist
        try:
            with timer.stage(f"search{suffix}") as c:
                lists, got, touched = search_delta(
                    index,
                    vecs,
                    prev,
                    round_delta,
                    k=k,
                    depth=depth,
                    search_depth=reach,
                    fail_stage=fail,
                    with_touched=True,
                )
                c.update(searched=got["searched"], stale=got["stale"])
        finally:
            index.unpersist()
        counts[f"searched{suffix}"] = got["searched"]
        counts[f"stale{suffix}"] = got["stale"]
        counts[f"touched{suffix}"] = touched.count()  # the lists that differ from yesterday's (at most)
        touched_by.append(touched)
        return lists

    touched_by: list[DataFrame] = []  # each round's rebuilt lists' srcs (the others are yesterday's)
    lists = [round_search(emb, delta, prev_lists[0], "")]
    tops = [top_k(lists[0], k, depth)]  # each round's top k: blended from, and the later stages'
    vectors = [emb]
    changed = keep(delta.where(F.col("kind").isin("added", "changed")).select("posting_id"))
    deleted = keep(delta.where(F.col("kind") == "deleted").select("posting_id"))
    added = keep(delta.where(F.col("kind") == "added").select("posting_id"))
    for r, threshold in enumerate(cfg.inb.thresholds, start=1):
        with timer.stage(f"blend{r}") as c:
            prev_top = top_k(prev_lists[r - 1], k, depth)
            now_top = tops[-1]
            affected = cut_lineage(
                blend_affected(prev_top, now_top, changed, alive, threshold, touched=touched_by[r - 1])
            )
            fresh = blend(emb, now_top, threshold, only=affected)
            # yesterday's blended vectors of the others: a narrow anti join with the (broadcast)
            # ids that leave, no shuffle of the vectors
            leave = F.broadcast(deleted.unionByName(affected.select("posting_id")).distinct())
            kept_old = prev_vectors[r].join(leave, "posting_id", "left_anti")
            emb = keep(cut_lineage(kept_old.unionByName(fresh)))
            c.update(blended=affected.count(), vectors=emb.count())
        counts[f"blended{r}"] = c["blended"]
        # the round's delta: the re-blended listings (new, or changed vectors) and the deleted
        # ones; the unchanged are not listed (search_delta reads the inserted and the removed)
        is_added = F.broadcast(added.withColumn("_a", F.lit(True)))
        kinds = (
            affected.join(is_added, "posting_id", "left")
            .select("posting_id", F.when(F.col("_a"), "added").otherwise("changed").alias("kind"))
            .unionByName(deleted.withColumn("kind", F.lit("deleted")))
        )
        vectors.append(emb)
        lists.append(round_search(emb, kinds, prev_lists[r], str(r)))
        tops.append(top_k(lists[-1], k, depth))
        changed = affected
    return SearchRounds(lists, vectors, tops[0], tops[-1], quantizer, counts)
