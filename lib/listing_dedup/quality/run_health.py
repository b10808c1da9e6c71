"""The job's health check: which reference applies to a run, and the run's aggregates in Spark.

:func:`choose_reference` picks the :class:`~listing_dedup.quality.health.HealthReference` the
run is judged against: the re-ranker's (``health_reference.json`` in its model directory,
written by ``jobs/train_reranker.py``) when the re-ranker is on, else the conf defaults'
(:mod:`listing_dedup.quality.health_defaults`) when the run's threshold-rule settings are the
defaults it was computed for; otherwise none, and the check falls back to its absolute rules.

:func:`health_inputs_spark` computes the decision's inputs as Spark aggregates: a handful of
rows reach the driver (counts, a group-size histogram, approximate top-1 quantiles and the
exact share of top-1 scores under each reference quantile, signal coverage, the few largest
groups with their first titles), never a frame that grows with the catalog.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from listing_dedup.errors import ConfigError, first_line
from listing_dedup.graph.rerank import pipeline_fingerprint
from listing_dedup.quality.health import (
    BIN_NAMES,
    CODE_SAMPLE,
    QUANTILES,
    REFERENCE_FILE,
    SIZE_BINS,
    HealthInputs,
    HealthReference,
    Limits,
    code_conflict_counts,
    read_reference,
    read_reference_file,
)

QUANTILE_ACCURACY = 10_000  # percentile_approx: rank error about 1/accuracy of the rows


def _plain(d: Any) -> Any:
    return json.loads(json.dumps(d))


def _match_settings(match) -> dict[str, Any]:
    """An edge rule's settings; the identifier veto's keys only when it is on (references
    recorded before it existed were recorded without it)."""
    d = dataclasses.asdict(match)
    if not d.get("veto"):
        d.pop("veto", None)
        d.pop("veto_above", None)
    return d


def threshold_settings(cfg) -> dict[str, Any]:
    """What the threshold rule's figures depend on: the searched vector (signals, fusion, INB,
    k, text model, lexical settings), the edge rules and the pHash union."""
    fp = pipeline_fingerprint(cfg)
    fp.pop("features", None)  # the re-ranker's feature constants
    return _plain(
        {
            "pipeline": fp,
            "match": _match_settings(cfg.match),
            "phash": {"enabled": bool(cfg.phash.enabled), "max_bits": int(cfg.phash.max_bits)},
        }
    )


def rerank_settings(cfg) -> dict[str, Any]:
    """What a re-ranker's reference was recorded under (the model's pipeline, its edge rules, pHash)."""
    return _plain(
        {
            "pipeline": pipeline_fingerprint(cfg),
            "rerank": _match_settings(cfg.rerank.match()),
            "phash": {"enabled": bool(cfg.phash.enabled), "max_bits": int(cfg.phash.max_bits)},
        }
    )


def _differences(want: Mapping, have: Mapping) -> list[str]:
    out = []
    for k in sorted(set(want) | set(have)):
        a, b = want.get(k), have.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{k}.{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
        elif a != b:
            out.append(k)
    return out


def choose_reference(cfg) -> tuple[HealthReference | None, str]:
    """(reference, why there is none)."""
    if cfg.rerank.enabled:
        try:
            ref = read_reference(cfg.rerank.model)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"config key 'rerank.model': cannot read {REFERENCE_FILE} in {cfg.rerank.model}: {e}"
            ) from None
        if ref is None:
            return None, (
                f"the re-ranker model directory {cfg.rerank.model} has no {REFERENCE_FILE} (written by "
                "jobs/train_reranker.py since the health check; retrain to get one)"
            )
        return ref, ""
    if cfg.health.reference:  # a tuned rule's (jobs/tune.py)
        path = Path(cfg.health.reference)
        try:
            ref = read_reference_file(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"config key 'health.reference': cannot read {path}: {first_line(e)}") from None
        what = f"the reference {path} (jobs/tune.py)"
    else:
        from listing_dedup.quality.health_defaults import reference as defaults_reference

        ref = defaults_reference()
        what = "the shipped reference is for the conf defaults' threshold rule;"
    diffs = _differences(ref.settings, threshold_settings(cfg))
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        if cfg.health.reference:
            return None, f"{what} was recorded under other settings: this run's {shown} differ"
        return None, f"{what} this run's {shown} differ"
    return ref, ""


def limits_of(health_conf) -> Limits:
    """The health conf's limits (a limit the conf has no key for keeps its default)."""
    return Limits(
        **{f.name: getattr(health_conf, f.name) for f in dataclasses.fields(Limits) if hasattr(health_conf, f.name)}
    )


def listing_counts(listings, *, has_image: bool) -> dict[str, int]:
    """One aggregate over the kept listings: ``n``, ``titled`` (a non-empty title), ``phash``,
    and with an image column ``image_ok`` (decoded) and ``image_error`` (missing or undecodable).
    The job's ingest stage counts its kept rows with it."""
    from pyspark.sql import functions as F

    aggs = [
        F.count(F.lit(1)).alias("n"),
        F.sum(F.when(F.length("title") > 0, 1).otherwise(0)).alias("titled"),
        F.sum(F.when(F.col("image_phash").isNotNull(), 1).otherwise(0)).alias("phash"),
    ]
    if has_image:
        aggs.append(F.sum(F.when(F.col("image_error").isNotNull(), 1).otherwise(0)).alias("image_error"))
        ok = F.col("image").isNotNull() & F.col("image_error").isNull()
        aggs.append(F.sum(F.when(ok, 1).otherwise(0)).alias("image_ok"))
    row = listings.agg(*aggs).first().asDict()
    return {k: int(v or 0) for k, v in row.items()}


def signal_coverage(counts: Mapping[str, int], cfg, dense_signals: Sequence[str], *, reranker: bool) -> dict:
    """Share of the listings carrying each signal the run uses, from :func:`listing_counts`.
    pHash counts when the pHash union is on or the re-ranker reads it (its ``phash_bits``
    feature); 0 otherwise."""
    n = counts.get("n", 0)

    def share(c: str) -> float:
        return counts.get(c, 0) / n if n else 0.0

    out = {s: share("image_ok") if s == "image" else share("titled") for s in dense_signals}
    out["phash"] = share("phash") if (cfg.phash.enabled or reranker) else 0.0
    return out


def edge_counts(edges, accuracy: int = QUANTILE_ACCURACY) -> dict[str, float]:
    """One aggregate over the match edges (``src, dst``, both directions, each once):
    ``directed`` rows, ``matched`` listings, ``max`` and ``p99`` matches of a matched listing.
    The job's edge stage counts its edges with it."""
    from pyspark.sql import functions as F

    deg = edges.groupBy("src").agg(F.count(F.lit(1)).alias("deg"))
    row = deg.agg(
        F.sum("deg").alias("directed"),
        F.count(F.lit(1)).alias("matched"),
        F.max("deg").alias("max"),
        F.percentile_approx("deg", 0.99, accuracy).alias("p99"),
    ).first()
    return {k: (float(row[k]) if k == "p99" else int(row[k])) if row[k] is not None else 0 for k in row.asDict()}


def group_counts(groups) -> dict[str, Any]:
    """One aggregate over the groups (``posting_id, group_id, group_size`` of every listing,
    ``group_id`` the posting_id of one member, as the job's components and guard give):
    listings ``n``, ``groups`` of 2+ (their ``grouped`` listings), ``singletons``, ``largest``,
    and the ``histogram`` of listings per group-size bin. The job's components stage counts
    its groups with it."""
    from pyspark.sql import functions as F

    size = F.col("group_size")
    b = _bin_of(size)
    row = groups.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.when((F.col("posting_id") == F.col("group_id")) & (size > 1), 1).otherwise(0)).alias("groups"),
        F.sum(F.when(size > 1, 1).otherwise(0)).alias("grouped"),
        F.max(size).alias("largest"),
        *[F.sum(F.when(b == name, 1).otherwise(0)).alias(f"bin{i}") for i, name in enumerate(BIN_NAMES)],
    ).first()
    out: dict[str, Any] = {k: int(row[k] or 0) for k in ("n", "groups", "grouped", "largest")}
    out["singletons"] = out["n"] - out["grouped"]
    out["histogram"] = {name: int(row[f"bin{i}"] or 0) for i, name in enumerate(BIN_NAMES)}
    return out


def _bin_of(size):
    from pyspark.sql import functions as F

    expr = None
    for (lo, hi), name in zip(SIZE_BINS, BIN_NAMES, strict=True):
        cond = (size >= lo) & (size <= hi) if hi is not None else (size >= lo)
        expr = F.when(cond, name) if expr is None else expr.when(cond, name)
    return expr


def health_inputs_spark(
    listings,
    edges,
    groups,
    pairs,
    signals: Mapping[str, float],
    *,
    ref_quantiles: Sequence[float] | None = None,
    slack: float = 0.0,
    n_largest: int = 5,
    n_titles: int = 5,
    guard_cut: bool = True,
    accuracy: int = QUANTILE_ACCURACY,
    edge_stats: Mapping | None = None,
    group_stats: Mapping | None = None,
) -> HealthInputs:
    """The health inputs of a run, as Spark aggregates (a few small jobs; only their result rows
    reach the driver).

    ``listings``: ``posting_id, title`` of the kept listings; ``edges``: the match edges
    ``src, dst``, both directions, each once (the job's edge stage output); ``groups``:
    ``posting_id, group_id, group_size`` of every listing after the guard, ``group_id`` the
    posting_id of one member (the job's: the smallest); ``pairs``: the final search ``src,
    dst, score`` (each listing's best score is its top-1), or None; ``ref_quantiles``: the
    reference's top-1 quantiles, read ``slack`` below and above. ``guard_cut=False`` when no
    guard re-cut a group (the groups are the components of the edges: no edge is cut).
    ``edge_stats`` / ``group_stats``: :func:`edge_counts` / :func:`group_counts` when the caller has them."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    e = edges.select("src", "dst")
    ec = edge_stats if edge_stats is not None else edge_counts(e, accuracy)
    gc = group_stats if group_stats is not None else group_counts(groups)
    n = gc["n"]

    n_cut = 0
    if guard_cut:
        ga = groups.select(F.col("posting_id").alias("src"), F.col("group_id").alias("ga"))
        gb = groups.select(F.col("posting_id").alias("dst"), F.col("group_id").alias("gb"))
        n_cut = e.where(F.col("src") < F.col("dst")).join(ga, "src").join(gb, "dst").where("ga != gb").count()

    n_top1, quant, cdf, cdf_high = 0, (), None, None
    if pairs is not None:
        t = pairs.groupBy("src").agg(F.max("score").cast("double").alias("t")).where(~F.isnan("t"))
        rq = [float(q) for q in ref_quantiles] if ref_quantiles is not None else []
        lo = [q - slack for q in rq]
        hi = [q + slack for q in rq] if slack else []
        trow = t.agg(
            F.count(F.lit(1)).alias("n"),
            F.percentile_approx("t", list(QUANTILES), accuracy).alias("q"),
            *[F.sum(F.when(F.col("t") <= F.lit(q), 1).otherwise(0)).alias(f"lo{i}") for i, q in enumerate(lo)],
            *[F.sum(F.when(F.col("t") <= F.lit(q), 1).otherwise(0)).alias(f"hi{i}") for i, q in enumerate(hi)],
        ).first()
        n_top1 = int(trow["n"] or 0)
        if n_top1:
            quant = tuple(float(v) for v in trow["q"])
            if ref_quantiles is not None:
                cdf = tuple(float(trow[f"lo{i}"] or 0) / n_top1 for i in range(len(lo)))
                cdf_high = tuple(float(trow[f"hi{i}"] or 0) / n_top1 for i in range(len(hi))) if hi else None

    largest = []
    if n_largest > 0:
        # one row a group (its id is one of its members): the largest without a shuffle
        top = (
            groups.where((F.col("posting_id") == F.col("group_id")) & (F.col("group_size") > 1))
            .select("group_id", "group_size")
            .orderBy(F.col("group_size").desc(), F.col("group_id"))
            .limit(n_largest)
            .collect()
        )
        titles: dict[str, list[str]] = {r["group_id"]: [] for r in top}
        if top and n_titles > 0:
            w = Window.partitionBy("group_id").orderBy("posting_id")
            first = (
                groups.where(F.col("group_id").isin(list(titles)))
                .select("posting_id", "group_id")
                .withColumn("rn", F.row_number().over(w))
                .where(F.col("rn") <= n_titles)
                .join(listings.select("posting_id", "title"), "posting_id", "left")
                .where(F.col("title").isNotNull())
                .select("group_id", "posting_id", "title")
                .collect()
            )
            for r in sorted(first, key=lambda r: (r["group_id"], r["posting_id"])):
                titles[r["group_id"]].append(str(r["title"]))
        largest = [
            {"group_id": r["group_id"], "size": int(r["group_size"]), "titles": titles[r["group_id"]]} for r in top
        ]

    n_code_pairs = n_code_conflicts = 0
    n_und = int(ec["directed"]) // 2
    if n_und and "title" in listings.columns:
        # a deterministic sample of about CODE_SAMPLE match edges, their two titles compared
        every = max(1, n_und // CODE_SAMPLE)
        und = e.where(F.col("src") < F.col("dst"))
        if every > 1:
            und = und.where(F.pmod(F.xxhash64("src", "dst"), F.lit(every)) == 0)
        ta = listings.select(F.col("posting_id").alias("src"), F.col("title").alias("ta"))
        tb = listings.select(F.col("posting_id").alias("dst"), F.col("title").alias("tb"))
        rows = und.limit(2 * CODE_SAMPLE).join(ta, "src").join(tb, "dst").select("ta", "tb").collect()
        n_code_pairs, n_code_conflicts = code_conflict_counts((r["ta"], r["tb"]) for r in rows)

    return HealthInputs(
        n_listings=n,
        n_matched=int(ec["matched"]),
        n_edges=int(ec["directed"]) // 2,
        max_matches=int(ec["max"]),
        matches_p99=float(ec["p99"]),
        size_histogram=dict(gc["histogram"]),
        largest_groups=largest,
        n_top1=n_top1,
        top1_quantiles=quant,
        top1_cdf=cdf,
        n_guard_cut=int(n_cut),
        signals={str(k): float(v) for k, v in signals.items()},
        top1_cdf_high=cdf_high,
        n_code_pairs=n_code_pairs,
        n_code_conflicts=n_code_conflicts,
    )
