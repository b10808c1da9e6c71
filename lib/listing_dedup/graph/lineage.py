"""Stable group ids across nights, and the night's ``group_changes``.

Tonight's components carry a label (any id unique to the component, e.g. its smallest
``posting_id``); the previous night's ``clusters`` carry that night's stable ``group_id``s.
This module gives each of tonight's components its stable id by its overlap with the previous
night's groups (listings present both nights, by ``posting_id``), and lists what changed.

The rule (deterministic: a rerun of a date against the same previous night gives the same ids):

1. **Heir.** Every previous group ``G`` that still has a listing tonight has one heir: the
   component holding most of its listings (ties: the component whose smallest posting_id is
   smallest). Only its heir can carry ``G``'s id on.
2. **Claim.** A component that is the heir of one or more previous groups takes the id of the
   one contributing most listings (ties: the larger previous group, then the smaller id). So a
   group that only gained or lost listings keeps its id; of merged groups the largest
   contributor's id survives; a split group's id stays with its largest piece.
3. **Birth.** A component that is no group's heir (all its listings are new, or pieces split
   off other groups) gets a new id: its smallest posting_id that is no id in use tonight and no
   id of the previous night; when every member's id is taken,
   ``<smallest posting_id>~<run_date>``. New ids never collide with a live id (checked: a
   collision raises :class:`~listing_dedup.errors.DedupError`).

A ``group_id`` is therefore an id, born as a member's posting_id, and no longer necessarily a
member's posting_id: a listing that leaves a group leaves the id behind. On the first night
(no previous clusters) every id is the component's smallest posting_id, as before.

``group_changes`` describes duplicate groups (two or more listings; a singleton is no group to
a consumer, though it carries an id too) with one row per event:

============================ ========================================================
kind                          row
============================ ========================================================
``continued-with-changes``   ``G`` keeps its id, its listings changed (gained, lost)
``merged``                   ``G``'s listings went mostly into a group that kept another
                             id: ``old_id`` -> the surviving ``new_id``
``split``                    a new group born of listings that left ``G`` (one row per
                             group it came from): ``old_id`` -> the new group's id
``new``                      a group none of whose listings were in a group (new
                             listings, or singletons that matched): ``old_id`` null
``dissolved``                ``G``'s listings are gone or alone: ``new_id`` null
============================ ========================================================

Columns: ``kind, old_id, new_id, old_size, new_size, shared`` (``shared``: listings of the old
group in the new one; null where one side is null) and ``previous_date``, the date whose
clusters the ids continue (null on the first night, when every group is ``new``). A group whose
listings did not change gets no row.

Two implementations with the same rule: :func:`assign_ids` (pandas, the reference) and
:func:`assign_ids_spark` (the job's); tests/test_lineage.py checks them against each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from listing_dedup.errors import DedupError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = [
    "CHANGE_COLUMNS",
    "CHANGE_KINDS",
    "assign_ids",
    "assign_ids_spark",
    "change_counts",
    "check_unique",
    "first_night_changes",
]

CHANGE_KINDS = ("new", "merged", "split", "dissolved", "continued-with-changes")
CHANGE_COLUMNS = ("kind", "old_id", "new_id", "old_size", "new_size", "shared", "previous_date")
CHANGES_DDL = "kind string, old_id string, new_id string, old_size int, new_size int, shared int, previous_date string"
FALLBACK_SEP = "~"


def _fallback(comp_min: str, run_date: str) -> str:
    return f"{comp_min}{FALLBACK_SEP}{run_date}"


# --------------------------------------------------------------------------- pure core


def assign_ids(
    cur: pd.DataFrame, prev: pd.DataFrame | None, run_date: str, previous_date: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stable ids for tonight's components.

    ``cur``: ``posting_id, group_id`` (tonight's component label); ``prev``: ``posting_id,
    group_id`` (the previous night's stable ids) or None on a first night. Returns tonight's
    ``posting_id, group_id, group_size`` (sorted by posting_id) and the ``group_changes`` rows
    (:data:`CHANGE_COLUMNS`, sorted by kind, old_id, new_id)."""
    comp = cur[["posting_id", "group_id"]].rename(columns={"group_id": "comp"}).astype(object)
    # each component's smallest posting_id: the first of the ids in order (a groupby "min" of
    # object strings is pandas' per-group Python loop, seconds at 100k); the groupby's comp order
    sizes = comp.groupby("comp").size()
    first = comp.sort_values("posting_id", kind="stable").drop_duplicates("comp").set_index("comp")["posting_id"]
    cs = pd.DataFrame(
        {"comp": sizes.index, "comp_min": first.reindex(sizes.index).to_numpy(), "new_size": sizes.to_numpy()}
    )
    if prev is None:
        prev = pd.DataFrame({"posting_id": pd.Series(dtype=object), "group_id": pd.Series(dtype=object)})
    p = prev[["posting_id", "group_id"]].rename(columns={"group_id": "g"}).astype(object)
    ps = p.groupby("g").size().rename("old_size").reset_index()
    ov = comp.merge(p, on="posting_id").groupby(["comp", "g"]).size().rename("shared").reset_index()
    ov = ov.merge(cs, on="comp").merge(ps, on="g")

    heirs = ov.sort_values(["g", "shared", "comp_min"], ascending=[True, False, True]).drop_duplicates("g")
    claims = heirs.sort_values(["comp", "shared", "old_size", "g"], ascending=[True, False, False, True])
    claims = claims.drop_duplicates("comp")
    ids: dict[Any, str] = dict(zip(claims["comp"], claims["g"]))
    taken = set(ids.values()) | set(ps["g"])
    fresh = cs[~cs["comp"].isin(ids.keys())]
    free = comp[comp["comp"].isin(fresh["comp"]) & ~comp["posting_id"].isin(taken)]
    first_free = free.groupby("comp")["posting_id"].min()
    for c, m in zip(fresh["comp"], fresh["comp_min"]):
        ids[c] = first_free.get(c, _fallback(m, run_date))
    if len(set(ids.values())) != len(ids):
        raise DedupError(f"stable group ids collide on {run_date}: a posting_id looks like a fallback id")

    out = comp.assign(group_id=comp["comp"].map(ids))
    out = out.merge(cs[["comp", "new_size"]], on="comp").rename(columns={"new_size": "group_size"})
    out = out[["posting_id", "group_id", "group_size"]].sort_values("posting_id").reset_index(drop=True)
    out["group_size"] = out["group_size"].astype("int32")

    rows = []
    size_of = dict(zip(cs["comp"], cs["new_size"]))
    heir_of = {g: (c, s) for g, c, s in zip(heirs["g"], heirs["comp"], heirs["shared"])}
    for g, old_size in zip(ps["g"], ps["old_size"]):
        if old_size < 2:
            continue
        if g not in heir_of:
            rows.append(("dissolved", g, None, old_size, None, 0))
            continue
        c, shared = heir_of[g]
        n = size_of[c]
        if ids[c] != g:
            rows.append(("merged", g, ids[c], old_size, n, shared))
        elif n < 2:
            rows.append(("dissolved", g, None, old_size, None, shared))
        elif not (shared == old_size == n):
            rows.append(("continued-with-changes", g, g, old_size, n, shared))
    claim_size = dict(zip(claims["comp"], claims["old_size"]))
    pieces: dict[Any, list[tuple]] = {}  # a fresh component's pieces split off other groups
    for c, g, old_size, shared in zip(ov["comp"], ov["g"], ov["old_size"], ov["shared"]):
        if c not in claim_size:
            pieces.setdefault(c, []).append((g, old_size, shared))
    for c, n in zip(cs["comp"], cs["new_size"]):
        if n < 2:
            continue
        if c in claim_size:
            if claim_size[c] < 2:
                rows.append(("new", None, ids[c], None, n, None))
            continue
        if c not in pieces:  # new listings only
            rows.append(("new", None, ids[c], None, n, None))
        for g, old_size, shared in pieces.get(c, []):
            rows.append(("split", g, ids[c], old_size, n, shared))
    changes = pd.DataFrame(rows, columns=list(CHANGE_COLUMNS[:-1]))
    for col in ("old_size", "new_size", "shared"):
        changes[col] = changes[col].astype("Int32")
    changes["previous_date"] = previous_date
    return out, _sort_changes(changes)


def _sort_changes(changes: pd.DataFrame) -> pd.DataFrame:
    return changes.sort_values(["kind", "old_id", "new_id"], na_position="first", kind="stable").reset_index(drop=True)


def change_counts(changes: pd.DataFrame) -> dict[str, int]:
    """Rows of each kind (every kind present, 0 when none)."""
    got = changes["kind"].value_counts().to_dict()
    return {k: int(got.get(k, 0)) for k in CHANGE_KINDS}


# --------------------------------------------------------------------------- Spark


def assign_ids_spark(
    groups: DataFrame, prev: DataFrame | None, run_date: str, previous_date: str | None = None
) -> tuple[DataFrame, DataFrame]:
    """:func:`assign_ids` on Spark DataFrames: ``groups`` (``posting_id, group_id``: tonight's
    component label; other columns ignored), ``prev`` (``posting_id, group_id``) or None.
    Returns (``posting_id, group_id, group_size`` int, the changes: :data:`CHANGES_DDL`), both
    lazy over joins and windows of the two inputs (no driver collect). The caller checks the
    ids' uniqueness with :func:`check_unique`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = groups.sparkSession
    comp = groups.select("posting_id", F.col("group_id").alias("comp"))
    cs = comp.groupBy("comp").agg(
        F.min("posting_id").alias("comp_min"), F.count(F.lit(1)).cast("int").alias("new_size")
    )
    if prev is None:
        prev = spark.createDataFrame([], "posting_id string, group_id string")
    p = prev.select("posting_id", F.col("group_id").alias("g"))
    ps = p.groupBy("g").agg(F.count(F.lit(1)).cast("int").alias("old_size"))
    ov = (
        comp.join(p, "posting_id")
        .groupBy("comp", "g")
        .agg(F.count(F.lit(1)).cast("int").alias("shared"))
        .join(cs, "comp")
        .join(ps, "g")
    )
    by_g = Window.partitionBy("g").orderBy(F.col("shared").desc(), F.col("comp_min"))
    heirs = ov.withColumn("_r", F.row_number().over(by_g)).where(F.col("_r") == 1).drop("_r")
    by_comp = Window.partitionBy("comp").orderBy(F.col("shared").desc(), F.col("old_size").desc(), F.col("g"))
    claims = heirs.withColumn("_r", F.row_number().over(by_comp)).where(F.col("_r") == 1).drop("_r")
    inherited = claims.select("comp", F.col("g").alias("id"))
    taken = inherited.select(F.col("id").alias("posting_id")).unionByName(ps.select(F.col("g").alias("posting_id")))
    fresh = cs.join(inherited, "comp", "left_anti")
    first_free = (
        comp.join(fresh.select("comp"), "comp")
        .join(taken, "posting_id", "left_anti")
        .groupBy("comp")
        .agg(F.min("posting_id").alias("free"))
    )
    born = fresh.join(first_free, "comp", "left").select(
        "comp", F.coalesce("free", F.concat("comp_min", F.lit(FALLBACK_SEP + run_date))).alias("id")
    )
    ids = inherited.unionByName(born)
    out = comp.join(ids, "comp").join(cs.select("comp", "new_size"), "comp")
    out = out.select("posting_id", F.col("id").alias("group_id"), F.col("new_size").alias("group_size"))

    def row(kind, old_id, new_id, old_size, new_size, shared):
        return [
            F.lit(kind).alias("kind"),
            F.col(old_id).alias("old_id") if old_id else F.lit(None).cast("string").alias("old_id"),
            F.col(new_id).alias("new_id") if new_id else F.lit(None).cast("string").alias("new_id"),
            (F.col(old_size) if old_size else F.lit(None)).cast("int").alias("old_size"),
            (F.col(new_size) if new_size else F.lit(None)).cast("int").alias("new_size"),
            (F.col(shared) if isinstance(shared, str) else F.lit(shared)).cast("int").alias("shared"),
        ]

    big = ps.where(F.col("old_size") >= 2)
    old_side = big.join(
        heirs.select("g", "comp", "shared").join(ids, "comp").join(cs.select("comp", "new_size"), "comp"), "g", "left"
    )
    gone = old_side.where(F.col("comp").isNull()).select(*row("dissolved", "g", None, "old_size", None, 0))
    mine = F.col("id") == F.col("g")
    alone = old_side.where(mine & (F.col("new_size") < 2)).select(
        *row("dissolved", "g", None, "old_size", None, "shared")
    )
    same = (F.col("shared") == F.col("old_size")) & (F.col("new_size") == F.col("old_size"))
    kept = old_side.where(mine & (F.col("new_size") >= 2) & ~same).select(
        *row("continued-with-changes", "g", "g", "old_size", "new_size", "shared")
    )
    merged = old_side.where(~mine).select(*row("merged", "g", "id", "old_size", "new_size", "shared"))

    cur_big = cs.where(F.col("new_size") >= 2).join(ids, "comp")
    from_single = cur_big.join(claims.where(F.col("old_size") < 2).select("comp"), "comp")
    fresh_big = cur_big.join(fresh.select("comp"), "comp")
    brand_new = fresh_big.join(ov.select("comp"), "comp", "left_anti")
    new = from_single.unionByName(brand_new).select(*row("new", None, "id", None, "new_size", None))
    split = fresh_big.join(ov.select("comp", "g", "old_size", "shared"), "comp").select(
        *row("split", "g", "id", "old_size", "new_size", "shared")
    )
    changes = gone.unionByName(alone).unionByName(kept).unionByName(merged).unionByName(new).unionByName(split)
    changes = changes.withColumn("previous_date", F.lit(previous_date).cast("string"))
    return out, changes


def first_night_changes(groups: DataFrame) -> DataFrame:
    """The changes of a first night (no previous clusters): every group of two or more listings
    is ``new``, its id the component's label (the smallest posting_id); one narrow select."""
    from pyspark.sql import functions as F

    null = F.lit(None)
    return groups.where((F.col("group_size") >= 2) & (F.col("posting_id") == F.col("group_id"))).select(
        F.lit("new").alias("kind"),
        null.cast("string").alias("old_id"),
        F.col("group_id").alias("new_id"),
        null.cast("int").alias("old_size"),
        F.col("group_size").cast("int").alias("new_size"),
        null.cast("int").alias("shared"),
        null.cast("string").alias("previous_date"),
    )


def check_unique(groups: DataFrame, run_date: str) -> None:
    """Raise :class:`DedupError` when two of tonight's groups got one id (only a posting_id of
    the form ``<id>~<run_date>`` can cause it)."""
    from pyspark.sql import functions as F

    bad = (
        groups.groupBy("group_id")
        .agg(F.min("group_size").alias("lo"), F.max("group_size").alias("hi"), F.count(F.lit(1)).alias("n"))
        .where((F.col("lo") != F.col("hi")) | (F.col("n") != F.col("lo")))
        .limit(1)
        .collect()
    )
    if bad:
        raise DedupError(
            f"stable group ids collide on {run_date} (group {bad[0]['group_id']}): "
            "a posting_id looks like a fallback id"
        )
