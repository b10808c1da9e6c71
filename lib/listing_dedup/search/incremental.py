"""The incremental night's search, its pure parts: the night's delta and the neighbour lists'
update (docs/incremental.md has the design and what of it is built).

* :func:`night_delta` / :func:`night_delta_spark`: tonight's listings against the previous
  state by ``posting_id`` and content digest (:func:`listing_digest_column`: the cleaned title,
  the image's digest and the pHash, what the signals read): ``added``, ``changed``,
  ``deleted`` (absent from tonight's full extract), ``unchanged``.
* :func:`update_neighbours`: each listing keeps its ``depth`` best neighbours (``depth = k +
  slack``). Tonight's removed listings (deleted, and the old version of the changed) leave
  every list that held them; the inserted ones (added, and the new version of the changed),
  searched against the updated index, enter their neighbours' lists symmetrically (the score
  is an inner product: ``s(u, i) = s(i, u)``). A list is kept only down to the weakest
  neighbour it still holds from before (below it, a listing it never held could rank), so it
  shrinks by the deletions it suffered; a list left with fewer than ``k`` is *stale* and its
  listing is searched again in full (with the inserted ones). With an exhaustive search of the
  inserted listings the result equals a full search of tonight's catalog (tested); with the
  IVF search, an inserted listing enters the lists of the listings its own top-``depth``
  search returned: a listing whose weakest kept neighbour scores below the inserted one's
  ``depth``-th can miss it at its list's tail (the bench measures what that changes).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = [
    "DELTA_KINDS",
    "listing_digest_column",
    "listing_digests",
    "night_delta",
    "night_delta_spark",
    "search_delta",
    "update_neighbours",
    "update_neighbours_spark",
]

DELTA_KINDS = ("added", "changed", "deleted", "unchanged")
_SEP = "\x1f"


def listing_digests(frame: pd.DataFrame) -> pd.Series:
    """sha256 hex of what the signals read of each listing: ``title`` (cleaned), ``image_digest``
    and ``image_phash`` (None reads as empty), joined by a unit separator."""

    def one(*values: Any) -> str:
        text = _SEP.join("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    cols = [frame[c] if c in frame else pd.Series([None] * len(frame), index=frame.index) for c in _DIGEST_COLS]
    return pd.Series([one(*vs) for vs in zip(*cols)], index=frame.index, dtype=object)


_DIGEST_COLS = ("title", "image_digest", "image_phash")


def listing_digest_column(title: Any, image_digest: Any, phash: Any) -> Any:
    """:func:`listing_digests` as a Spark column (Spark's own sha2, no Python UDF)."""
    from pyspark.sql import functions as F

    parts = [F.coalesce(c.cast("string"), F.lit("")) for c in (title, image_digest, phash)]
    return F.sha2(F.concat_ws(_SEP, *parts), 256)


def night_delta(prev: pd.DataFrame | None, cur: pd.DataFrame) -> pd.DataFrame:
    """``posting_id, kind`` (:data:`DELTA_KINDS`) of every listing of ``prev`` or ``cur`` (both
    ``posting_id, digest``; ``prev`` None on a first night: everything ``added``), sorted by
    posting_id."""
    if prev is None:
        prev = pd.DataFrame({"posting_id": pd.Series(dtype=object), "digest": pd.Series(dtype=object)})
    j = prev[["posting_id", "digest"]].merge(
        cur[["posting_id", "digest"]], on="posting_id", how="outer", suffixes=("_prev", "_cur"), indicator=True
    )
    kind = np.where(
        j["_merge"] == "right_only",
        "added",
        np.where(
            j["_merge"] == "left_only",
            "deleted",
            np.where(j["digest_prev"] == j["digest_cur"], "unchanged", "changed"),
        ),
    )
    out = pd.DataFrame({"posting_id": j["posting_id"].astype(object), "kind": kind})
    return out.sort_values("posting_id").reset_index(drop=True)


def night_delta_spark(prev: DataFrame | None, cur: DataFrame) -> DataFrame:
    """:func:`night_delta` on Spark (``posting_id, kind``, lazy; one full outer join)."""
    from pyspark.sql import functions as F

    if prev is None:
        prev = cur.sparkSession.createDataFrame([], "posting_id string, digest string")
    p = prev.select("posting_id", F.col("digest").alias("d_prev"), F.lit(True).alias("_p"))
    c = cur.select("posting_id", F.col("digest").alias("d_cur"), F.lit(True).alias("_c"))
    j = p.join(c, "posting_id", "full")
    kind = (
        F.when(F.col("_p").isNull(), "added")
        .when(F.col("_c").isNull(), "deleted")
        .when(F.col("d_prev") == F.col("d_cur"), "unchanged")
        .otherwise("changed")
    )
    return j.select("posting_id", kind.alias("kind"))


def update_neighbours(
    lists: pd.DataFrame, removed: set[str] | Any, found: pd.DataFrame, *, k: int, depth: int
) -> tuple[pd.DataFrame, set[str]]:
    """The neighbour lists after tonight's delta.

    ``lists``: the previous state, ``src, dst, score``, each listing's best ``depth`` neighbours
    (self excluded); ``removed``: the posting_ids whose old vectors leave (deleted and changed);
    ``found``: ``src, dst, score``, the inserted listings' (added and changed) search against
    tonight's index (self excluded). Returns the lists of tonight's listings (the inserted ones'
    from ``found``, the others' updated; at most ``depth`` rows a ``src``, ordered by score
    desc then dst) and the *stale* srcs: unchanged listings left with fewer than ``min(k, rows
    kept)`` exact neighbours, which the caller searches again and whose rows it replaces."""
    removed = set(removed)
    inserted = set(found["src"])
    old = lists[~lists["src"].isin(removed) & ~lists["src"].isin(inserted)]
    lost = old["dst"].isin(removed)
    held = old[~lost]
    # the weakest neighbour each list held before tonight: below it, the list is not exact
    floor = old.groupby("src")["score"].min()
    full_before = old.groupby("src").size() < depth  # a list shorter than depth held everyone
    f = found[["src", "dst", "score"]]
    back = f[~f["dst"].isin(inserted)].rename(columns={"src": "dst", "dst": "src"})
    merged = _concat([held, back])
    merged = merged.sort_values(["src", "score", "dst"], ascending=[True, False, True], kind="stable")
    merged = merged.drop_duplicates(["src", "dst"])
    fl = merged["src"].map(floor)
    exact = merged["src"].map(full_before).fillna(True).astype(bool) | (merged["score"] >= fl) | fl.isna()
    merged = merged[exact]
    merged = merged.groupby("src", sort=False).head(depth)
    lost_any = set(old.loc[lost, "src"])
    counts = merged.groupby("src").size()
    stale = {s for s in lost_any if counts.get(s, 0) < k and not bool(full_before.get(s, False))}
    mine = f.sort_values(["src", "score", "dst"], ascending=[True, False, True], kind="stable")
    mine = mine.groupby("src", sort=False).head(depth)
    out = _concat([merged[~merged["src"].isin(stale)], mine])
    out = out.sort_values(["src", "score", "dst"], ascending=[True, False, True], kind="stable")
    return out.reset_index(drop=True)[["src", "dst", "score"]], stale


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``src, dst, score`` rows of ``frames`` (empty ones left out: no dtype guessing)."""
    full = [f[["src", "dst", "score"]] for f in frames if len(f)]
    if not full:
        return pd.DataFrame({"src": pd.Series(dtype=object), "dst": pd.Series(dtype=object), "score": []})
    return pd.concat(full, ignore_index=True)


def update_neighbours_spark(
    lists: DataFrame, removed: DataFrame, found: DataFrame, *, k: int, depth: int, with_touched: bool = False
) -> tuple[DataFrame, DataFrame] | tuple[DataFrame, DataFrame, DataFrame]:
    """:func:`update_neighbours` on Spark: ``lists`` and ``found`` are ``src, dst, score``,
    ``removed`` has ``posting_id``. Returns (tonight's lists without the stale srcs' rows, the
    stale srcs as ``posting_id``), both lazy, and with ``with_touched`` the srcs whose lists it
    rebuilt (``posting_id``; every other list passes as it was). When ``lists`` carries each row's ``rank`` (1 =
    nearest), so does the result: the untouched lists keep theirs, the rebuilt ones are ranked
    by the update's own window (the later stages' top ``k`` is then a filter, not a shuffle).

    Only the lists that can change are rebuilt: those that lost a neighbour, those an inserted
    listing enters (it beats their weakest neighbour), and the removed and inserted listings'
    own. Their ids are broadcast; every other list's rows pass through a narrow anti join, so the
    ``N * depth`` rows of the lists are read and written but never shuffled (one aggregate of
    their weakest score a list, combined map-side, is the only wide step over them)."""
    from pyspark.sql import functions as F

    from listing_dedup.frames import cut_lineage

    has_rank = "rank" in lists.columns
    lists = lists.select("src", "dst", "score", *(["rank"] if has_rank else []))
    gone = F.broadcast(removed.select("posting_id").distinct())
    inserted = found.select(F.col("src").alias("posting_id")).distinct()
    back = found.join(F.broadcast(inserted.withColumnRenamed("posting_id", "dst")), "dst", "left_anti").select(
        F.col("dst").alias("src"), F.col("src").alias("dst"), "score"
    )
    weakest = lists.groupBy("src").agg(F.min("score").alias("floor"), F.count(F.lit(1)).alias("n"))
    enters = (F.col("floor").isNull()) | (F.col("n") < F.lit(depth)) | (F.col("score") >= F.col("floor"))
    gain = back.join(weakest, "src", "left").where(enters).select("src")
    lost = lists.join(gone.withColumnRenamed("posting_id", "dst"), "dst", "left_semi").select("src")
    # materialised once (it is read by three joins): a few ids a changed listing
    touched = F.broadcast(
        cut_lineage(
            gain.unionByName(lost)
            .unionByName(inserted.withColumnRenamed("posting_id", "src"))
            .unionByName(gone.withColumnRenamed("posting_id", "src"))
            .distinct()
        )
    )
    untouched = lists.join(touched, "src", "left_anti")
    rebuilt, stale = _rebuild_lists(
        lists.join(touched, "src", "left_semi"),
        gone,
        inserted,
        back.join(touched, "src", "left_semi"),
        found,
        k=k,
        depth=depth,
        rank=has_rank,
    )
    if with_touched:
        return untouched.unionByName(rebuilt), stale, touched.select(F.col("src").alias("posting_id"))
    return untouched.unionByName(rebuilt), stale


def _rebuild_lists(old_lists, gone, inserted, back, found, *, k: int, depth: int, rank: bool = False):
    """The lists of the touched srcs (``old_lists``: their rows before tonight; ``back``: the
    inserted listings' rows reversed into them): the update, the stale srcs, the inserted
    listings' own lists (with their ``rank`` when ``rank``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from listing_dedup.frames import cut_lineage

    old = (
        old_lists.join(gone.withColumnRenamed("posting_id", "src"), "src", "left_anti")
        .join(inserted.withColumnRenamed("posting_id", "src"), "src", "left_anti")
        .join(gone.select(F.col("posting_id").alias("dst"), F.lit(True).alias("lost")), "dst", "left")
        .withColumn("lost", F.coalesce("lost", F.lit(False)))
    )
    info = old.groupBy("src").agg(
        F.min("score").alias("floor"),
        (F.count(F.lit(1)) < F.lit(depth)).alias("full_before"),
        F.max(F.col("lost").cast("int")).alias("lost_any"),
    )
    held = old.where(~F.col("lost")).select("src", "dst", "score")
    by_src = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst"))
    merged = (
        held.unionByName(back)
        .groupBy("src", "dst")
        .agg(F.max("score").alias("score"))
        .join(info.select("src", "floor", "full_before"), "src", "left")
        .where(F.col("floor").isNull() | F.col("full_before") | (F.col("score") >= F.col("floor")))
        .withColumn("_r", F.row_number().over(by_src))
        .where(F.col("_r") <= depth)
        .select("src", "dst", "score", F.col("_r").alias("rank"))
    )
    merged = cut_lineage(merged)  # the touched lists: read by the stale count and the output
    counts = merged.groupBy("src").agg(F.count(F.lit(1)).alias("n"))
    stale = (
        info.join(counts, "src", "left")
        .where((F.col("lost_any") == 1) & ~F.col("full_before") & (F.coalesce("n", F.lit(0)) < k))
        .select(F.col("src").alias("posting_id"))
    )
    mine = (
        found.select("src", "dst", "score")
        .withColumn("_r", F.row_number().over(by_src))
        .where(F.col("_r") <= depth)
        .withColumnRenamed("_r", "rank")
    )
    out = merged.join(stale.withColumnRenamed("posting_id", "src"), "src", "left_anti").unionByName(mine)
    return (out if rank else out.drop("rank")), stale


def search_delta(
    index: Any,
    emb: DataFrame,
    prev_lists: DataFrame,
    delta: DataFrame,
    *,
    k: int,
    depth: int,
    search_depth: int | None = None,
    fail_stage: str = "",
    with_touched: bool = False,
) -> tuple[DataFrame, dict[str, int]] | tuple[DataFrame, dict[str, int], DataFrame]:
    """Tonight's neighbour lists from yesterday's and the delta: the inserted listings
    (``added``, ``changed``) searched against ``index`` (tonight's vectors: ``emb``), every
    other list updated (:func:`update_neighbours_spark`), and the stale ones searched again.

    ``delta``: ``posting_id, kind`` (:func:`night_delta_spark`); ``search_depth`` (default
    ``depth``): how many neighbours an inserted listing's search returns, the reach of its
    symmetric insertion into other lists. Returns (``src, dst, score`` materialised, the
    counts: ``searched``, ``stale``), and with ``with_touched`` the srcs whose lists were
    rebuilt (``posting_id``, materialised: every other list is the previous one row for row)."""
    from pyspark.sql import functions as F

    from listing_dedup.frames import cut_lineage
    from listing_dedup.search.indexer import search

    inserted = cut_lineage(delta.where(F.col("kind").isin("added", "changed")).select("posting_id"))
    removed = delta.where(F.col("kind").isin("deleted", "changed")).select("posting_id")
    n_ins = inserted.count()
    queries = emb.join(F.broadcast(inserted), "posting_id")  # narrow: the vectors are not shuffled
    if n_ins:
        found = search(index, queries, search_depth or depth, fail_stage=fail_stage, n_queries=n_ins)
    else:
        found = emb.sparkSession.createDataFrame([], "src string, dst string, score float")
    lists, stale, touched = update_neighbours_spark(
        prev_lists, removed, cut_lineage(found), k=k, depth=depth, with_touched=True
    )
    stale = cut_lineage(stale)
    n_stale = stale.count()
    if n_stale:
        ranks = "rank" in lists.columns
        again = search(
            index,
            emb.join(F.broadcast(stale), "posting_id"),
            depth,
            fail_stage=fail_stage,
            n_queries=n_stale,
            with_rank=ranks,
        )
        lists = lists.unionByName(again.select("src", "dst", "score", *(["rank"] if ranks else [])))
    counts = {"searched": n_ins + n_stale, "stale": n_stale}
    if with_touched:
        return cut_lineage(lists), counts, touched
    return cut_lineage(lists), counts
