"""From nearest neighbours to match edges and per-listing match sets.

Rules, applied in this order to directed neighbour rows ``src, dst, score``:

1. **threshold**: keep ``src -> dst`` when ``score >= threshold``.
2. **min2** (only when ``MatchConf.min2``): a ``src`` with no kept row (its best score is
   below ``threshold``) keeps its single nearest neighbour when that score is
   ``>= min2_threshold``. Ties for the nearest neighbour go to the smallest ``dst``.
   The rule looks at the directed neighbour list of ``src`` only (before step 3).
3. **relative** (only when ``MatchConf.relative``): ``src -> dst`` is also kept when it
   stands out from ``src``'s own neighbourhood: ``score >= relative_floor`` and
   ``score - background(src) >= relative_margin``, where ``background(src)`` is the score of
   ``src``'s neighbour at rank ``relative_rank`` (1 = nearest; the last neighbour when the
   list is shorter). Ranks follow the order score desc, then ``dst`` asc. A listing among
   many near neighbours (a crowded product line, a dense catalog) needs a neighbour well
   above its crowd; a listing whose nearest neighbours all look alike keeps none of them,
   whatever the catalog's density. Looked at on the directed list of ``src`` (before step 5).
4. **mutual** (only when ``MatchConf.mutual_rank > 0``): ``src -> dst`` is also kept when
   ``dst`` is among the ``mutual_rank`` nearest neighbours of ``src`` and ``src`` among those
   of ``dst`` (ranks as in rule 3), and ``score >= mutual_floor``: two listings that pick each
   other out of their neighbourhoods, whatever the catalog's density.
5. **symmetrise**: an undirected edge exists when either direction was kept; its score is
   the max of both directions' scores; it is written in both directions.

Self rows (``src == dst``) are ignored, the output has no duplicates. Scores are compared
in double precision (a float32 score is widened, then compared with the threshold), the
same in the pandas and the Spark implementation.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.config import MatchConf
from listing_dedup.frames import empty_pairs

log = logging.getLogger(__name__)


def select_edges_pandas(
    nbrs: pd.DataFrame,
    threshold: float,
    min2: bool,
    min2_threshold: float,
    *,
    relative: bool = False,
    relative_rank: int = 10,
    relative_margin: float = 0.1,
    relative_floor: float = 0.5,
    mutual_rank: int = 0,
    mutual_floor: float = 0.6,
) -> pd.DataFrame:
    """Pure pandas version of :func:`select_edges`: ``src, dst, score`` rows (both
    directions of every edge), sorted by ``src``, ``score`` desc, ``dst``. The keyword
    arguments are ``MatchConf``'s relative rule (off by default)."""
    df = nbrs[["src", "dst", "score"]].dropna()
    df = df[df["src"] != df["dst"]]
    if df.empty:
        return empty_pairs()
    s64 = df["score"].astype(np.float64)
    kept = df[s64 >= threshold]
    if relative:
        kept = pd.concat([kept, _relative_rows(df, relative_rank, relative_margin, relative_floor)], ignore_index=True)
    if mutual_rank > 0:
        kept = pd.concat([kept, _mutual_rows(df, mutual_rank, mutual_floor)], ignore_index=True)
    if min2:
        best = df.assign(_s=s64).sort_values(["src", "_s", "dst"], ascending=[True, False, True])
        best = best.drop_duplicates("src", keep="first")
        rescue = best[(best["_s"] < threshold) & (best["_s"] >= min2_threshold)].drop(columns="_s")
        kept = pd.concat([kept, rescue], ignore_index=True)
    if kept.empty:
        return empty_pairs()
    a = np.where(kept["src"] < kept["dst"], kept["src"], kept["dst"])
    b = np.where(kept["src"] < kept["dst"], kept["dst"], kept["src"])
    und = (
        pd.DataFrame({"a": a, "b": b, "score": kept["score"].to_numpy()})
        .groupby(["a", "b"], as_index=False, sort=False)["score"]
        .max()
    )
    out = pd.concat(
        [
            pd.DataFrame({"src": und["a"], "dst": und["b"], "score": und["score"]}),
            pd.DataFrame({"src": und["b"], "dst": und["a"], "score": und["score"]}),
        ],
        ignore_index=True,
    )
    out["score"] = out["score"].astype(np.float32)
    out["src"] = out["src"].astype(object)
    out["dst"] = out["dst"].astype(object)
    return out.sort_values(["src", "score", "dst"], ascending=[True, False, True], ignore_index=True)


def _relative_rows(df: pd.DataFrame, rank: int, margin: float, floor: float) -> pd.DataFrame:
    """Rows that stand out from their source's neighbourhood (rule 3 of the module doc)."""
    o = df.assign(_s=df["score"].astype(np.float64)).sort_values(
        ["src", "_s", "dst"], ascending=[True, False, True], kind="mergesort"
    )
    g = o.groupby("src", sort=False)["_s"]
    pos = g.cumcount().to_numpy()
    cnt = g.transform("size").to_numpy()
    start = np.arange(len(o)) - pos
    bg = o["_s"].to_numpy()[start + np.minimum(rank, cnt) - 1]
    s = o["_s"].to_numpy()
    keep = (s >= floor) & (s - bg >= margin)
    return o[keep].drop(columns="_s")


def _mutual_rows(df: pd.DataFrame, rank: int, floor: float) -> pd.DataFrame:
    """Rows whose two ends are each among the other's ``rank`` nearest (rule 4)."""
    o = df.assign(_s=df["score"].astype(np.float64)).sort_values(
        ["src", "_s", "dst"], ascending=[True, False, True], kind="mergesort"
    )
    top = o[o.groupby("src", sort=False).cumcount().to_numpy() < rank]
    rev = top[["src", "dst"]].rename(columns={"src": "dst", "dst": "src"}).drop_duplicates()
    both = top.merge(rev, on=["src", "dst"], how="inner")
    return both[both["_s"] >= floor].drop(columns="_s")


def select_edges_match(nbrs: pd.DataFrame, cfg: MatchConf) -> pd.DataFrame:
    """:func:`select_edges_pandas` with the rules of a ``MatchConf``."""
    return select_edges_pandas(
        nbrs,
        cfg.threshold,
        cfg.min2,
        cfg.min2_threshold,
        relative=cfg.relative,
        relative_rank=cfg.relative_rank,
        relative_margin=cfg.relative_margin,
        relative_floor=cfg.relative_floor,
        mutual_rank=cfg.mutual_rank,
        mutual_floor=cfg.mutual_floor,
    )


def select_edges(nbrs_df: Any, cfg: MatchConf) -> Any:
    """Spark version of :func:`select_edges_pandas` (same rules, same result): a lazy
    DataFrame ``src, dst, score`` (string, string, float) holding both directions."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    df = (
        nbrs_df.select(
            F.col("src").cast("string").alias("src"),
            F.col("dst").cast("string").alias("dst"),
            F.col("score").cast("float").alias("score"),
        )
        .dropna()
        .filter(F.col("src") != F.col("dst"))
    )
    s64 = F.col("score").cast("double")
    kept = df.filter(s64 >= F.lit(float(cfg.threshold)))
    if cfg.relative:
        by_src = Window.partitionBy("src")
        ordered = by_src.orderBy(s64.desc(), F.col("dst").asc())
        ranked = df.withColumn("_rank", F.row_number().over(ordered)).withColumn("_n", F.count("*").over(by_src))
        at = F.least(F.lit(int(cfg.relative_rank)), F.col("_n"))
        ranked = ranked.withColumn("_bg", F.max(F.when(F.col("_rank") == at, s64)).over(by_src))
        rel = ranked.filter(
            (s64 >= F.lit(float(cfg.relative_floor))) & (s64 - F.col("_bg") >= F.lit(float(cfg.relative_margin)))
        ).select("src", "dst", "score")
        kept = kept.unionByName(rel)
    if cfg.mutual_rank > 0:
        ordered = Window.partitionBy("src").orderBy(s64.desc(), F.col("dst").asc())
        top = df.withColumn("_rank", F.row_number().over(ordered)).filter(F.col("_rank") <= int(cfg.mutual_rank))
        rev = top.select(F.col("dst").alias("src"), F.col("src").alias("dst")).distinct()
        mutual = (
            top.join(rev, ["src", "dst"], "inner")
            .filter(s64 >= F.lit(float(cfg.mutual_floor)))
            .select("src", "dst", "score")
        )
        kept = kept.unionByName(mutual)
    if cfg.min2:
        w = Window.partitionBy("src").orderBy(s64.desc(), F.col("dst").asc())
        rescue = (
            df.withColumn("_rank", F.row_number().over(w))
            .filter(
                (F.col("_rank") == 1) & (s64 < F.lit(float(cfg.threshold))) & (s64 >= F.lit(float(cfg.min2_threshold)))
            )
            .drop("_rank")
        )
        kept = kept.unionByName(rescue)
    und = kept.groupBy(F.least("src", "dst").alias("a"), F.greatest("src", "dst").alias("b")).agg(
        F.max("score").alias("score")
    )
    out = und.select(F.col("a").alias("src"), F.col("b").alias("dst"), "score").unionByName(
        und.select(F.col("b").alias("src"), F.col("a").alias("dst"), "score")
    )
    log.info(
        "edges (planned, lazy): threshold=%.4f min2=%s min2_threshold=%.4f relative=%s rank=%d margin=%.4f "
        "floor=%.4f mutual_rank=%d mutual_floor=%.4f seconds=%.2f",
        cfg.threshold,
        cfg.min2,
        cfg.min2_threshold,
        cfg.relative,
        cfg.relative_rank,
        cfg.relative_margin,
        cfg.relative_floor,
        cfg.mutual_rank,
        cfg.mutual_floor,
        time.perf_counter() - t0,
    )
    return out


def match_sets(edges_df: Any, vertices_df: Any) -> Any:
    """One row per vertex (``posting_id`` of ``vertices_df``): ``posting_id``,
    ``match_ids`` array<string> and ``scores`` array<float>, sorted by score desc then id.
    A listing is not in its own match set; listings without edges get empty arrays."""
    from pyspark.sql import functions as F

    agg = edges_df.groupBy(F.col("src").alias("posting_id")).agg(
        F.sort_array(
            F.collect_list(F.struct((-F.col("score").cast("float")).alias("neg"), F.col("dst").alias("id")))
        ).alias("_m")
    )
    joined = vertices_df.select(F.col("posting_id").cast("string").alias("posting_id")).join(agg, "posting_id", "left")
    return joined.select(
        "posting_id",
        F.coalesce(F.transform("_m", lambda s: s["id"]), F.array().cast("array<string>")).alias("match_ids"),
        F.coalesce(F.transform("_m", lambda s: -s["neg"]), F.array().cast("array<float>")).alias("scores"),
    )


def match_sets_pandas(edges: pd.DataFrame, vertices: pd.Series | list[str]) -> pd.DataFrame:
    """Pure pandas version of :func:`match_sets` (rows in the order of ``vertices``)."""
    e = edges.sort_values(["src", "score", "dst"], ascending=[True, False, True])
    grouped = {src: g for src, g in e.groupby("src", sort=False)}
    rows = []
    for v in vertices:
        g = grouped.get(v)
        if g is None:
            rows.append((v, [], []))
        else:
            rows.append((v, g["dst"].tolist(), g["score"].astype(np.float32).tolist()))
    return pd.DataFrame(rows, columns=["posting_id", "match_ids", "scores"])


# --------------------------------------------------------------------------------------
# identifier veto (issue 30): the threshold rule's edges whose titles disagree on what decides
# identity (lib/listing_dedup/embed/identifiers.py)

VETO_KINDS = ("code", "quantity", "brand")


def veto_mask(
    titles_a: list,
    titles_b: list,
    score: np.ndarray,
    above: float,
    *,
    models_a: list | None = None,
    models_b: list | None = None,
    brands_a: list | None = None,
    brands_b: list | None = None,
    kinds=VETO_KINDS,
) -> np.ndarray:
    """Which edges the veto keeps: an edge whose two listings share no product code while their
    codes conflict (both have codes), a quantity conflicts (16 GB against 32 GB) or their brands
    conflict (the optional ``brand`` attribute) is dropped unless its score is at least
    ``above`` (the other signals overwhelming). ``models_*`` / ``brands_*``: the optional
    ``model`` / ``brand`` attributes of each end (None: absent); ``kinds``: the conflicts that
    veto (of :data:`VETO_KINDS`)."""
    from listing_dedup.embed.identifiers import evidence_of, identifiers

    n = len(titles_a)
    none = [None] * n
    ma, mb = models_a or none, models_b or none
    ba, bb = brands_a or none, brands_b or none
    keep = np.ones(n, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    cache: dict = {}

    def ids(t, m, b):
        key = (t, m, b)
        got = cache.get(key)
        if got is None:
            got = cache[key] = identifiers(t, m, b)
        return got

    for i in range(n):
        if s[i] >= above:
            continue
        a, b = ids(titles_a[i], ma[i], ba[i]), ids(titles_b[i], mb[i], bb[i])
        _, code, qty, brand = evidence_of(a, b, {})
        conflict = ("code" in kinds and code) or ("quantity" in kinds and qty) or ("brand" in kinds and brand)
        keep[i] = bool(a.codes & b.codes) or not conflict
    return keep


def veto_edges(edges_df: Any, listings_df: Any, above: float) -> Any:
    """Spark: the edges ``src, dst, score`` (both directions) minus those :func:`veto_mask`
    drops, judged once per undirected pair on ``listings_df``'s ``title`` (and its optional
    ``model`` / ``brand`` columns when present); both directions of a kept edge are returned."""
    from pyspark.sql import functions as F

    attrs = [c for c in ("model", "brand") if c in listings_df.columns]
    side_cols = ["title", *attrs]

    def side(end: str, suffix: str):
        return listings_df.select(
            F.col("posting_id").alias(end), *[F.col(c).cast("string").alias(f"{c}_{suffix}") for c in side_cols]
        )

    und = edges_df.where(F.col("src") < F.col("dst")).select("src", "dst", F.col("score").cast("float").alias("score"))
    joined = und.join(side("src", "a"), "src", "left").join(side("dst", "b"), "dst", "left")
    threshold = float(above)

    def _keep(batches):
        for pdf in batches:
            if pdf.empty:
                continue

            def col(name: str, pdf=pdf):
                return pdf[name].tolist() if name in pdf.columns else None

            k = veto_mask(
                col("title_a"),
                col("title_b"),
                pdf["score"].to_numpy(),
                threshold,
                models_a=col("model_a"),
                models_b=col("model_b"),
                brands_a=col("brand_a"),
                brands_b=col("brand_b"),
            )
            yield pdf.loc[k, ["src", "dst", "score"]]

    kept = joined.mapInPandas(_keep, "src string, dst string, score float")
    return kept.unionByName(kept.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "score"))
