"""The dedup job, stage by stage. Spark I/O stays here and in the stage wrappers; every
algorithm lives in its own module as a pure function with a thin Spark layer.

    ingest -> embed -> index + search -> (INB rounds: blend -> index + search) -> edges
           -> connected components -> stage tables -> commit (one Delta transaction per table)

All four tables are staged (files written by executors) before any is committed, so a
failure in any compute stage leaves every table at its previous version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from listing_dedup import __version__
from listing_dedup.blender import blend
from listing_dedup.components import connected_components
from listing_dedup.config import DedupConfig
from listing_dedup.edges import match_sets, select_edges
from listing_dedup.embedder import Encoder, TextEncoderBuilder, embed_texts
from listing_dedup.errors import DedupError, InputError
from listing_dedup.indexer import build_index, search
from listing_dedup.reader import read_listings
from listing_dedup.timing import StageTimer
from listing_dedup.writer import DeltaSink

log = logging.getLogger(__name__)

TABLES = ("matches", "clusters", "rejects", "runs")


@dataclass
class RunSummary:
    run_id: str
    run_date: str
    warehouse: str
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    images_unreadable: int = 0  # kept listings whose image is missing or does not decode
    rows_embedded: int = 0
    n_edges: int = 0
    n_groups: int = 0  # groups with 2 or more listings
    n_grouped: int = 0  # listings in such groups
    n_singletons: int = 0
    largest_group: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)

    def as_text(self) -> str:
        lines = [
            f"listing-dedup run {self.run_id} for {self.run_date}",
            f"  rows in        {self.rows_in}",
            f"  rows kept      {self.rows_kept}",
            f"  rows rejected  {self.rows_rejected}"
            + (
                f"  ({', '.join(f'{k}: {v}' for k, v in sorted(self.rejects_by_reason.items()))})"
                if self.rejects_by_reason
                else ""
            ),
            f"  bad images     {self.images_unreadable} (kept listings whose image is missing or does not decode)",
            f"  embedded       {self.rows_embedded}",
            f"  match edges    {self.n_edges}",
            f"  groups found   {self.n_groups} groups of 2+ listings ({self.n_grouped} listings; largest "
            f"{self.largest_group}), {self.n_singletons} singletons",
            "  seconds per stage: "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.items())
            + f" (total {sum(self.stage_seconds.values()):.1f})",
            f"  tables under {self.warehouse}:",
        ]
        for t in TABLES:
            v = self.table_versions.get(t)
            lines.append(
                f"    {t:<8} {self.warehouse.rstrip('/')}/{t}" + (f"  (Delta version {v})" if v is not None else "")
            )
        return "\n".join(lines)


def check_run_date(run_date: str) -> str:
    try:
        return dt.date.fromisoformat(run_date).isoformat()
    except ValueError:
        raise InputError(f"run date must be YYYY-MM-DD, got '{run_date}'") from None


def _persist(df: DataFrame) -> DataFrame:
    return df.persist(StorageLevel.MEMORY_AND_DISK)


def neighbours_for(emb: DataFrame, cfg: DedupConfig, n_rows: int, timer: StageTimer, suffix: str = "") -> DataFrame:
    """Index ``emb`` and search it with itself: each listing's top-k neighbours (self excluded)."""
    with timer.stage(f"index{suffix}") as c:
        index = build_index(emb, cfg.index, n_rows=n_rows)
        c["lists"] = index.nlist
    try:
        with timer.stage(f"search{suffix}") as c:
            nbrs = _persist(search(index, emb, cfg.index.k, fail_stage=cfg.testing.fail_once_stage))
            c["neighbour_pairs"] = nbrs.count()
    finally:
        index.unpersist()  # the neighbours are materialised; the shards are no longer needed
    return nbrs


def run_dedup(
    *,
    spark: SparkSession,
    cfg: DedupConfig,
    input_path: str,
    run_date: str,
    warehouse: str,
    text_encoder: Callable[[], Encoder] | None = None,
) -> RunSummary:
    """Run the whole job for one ``run_date`` and commit its four tables.

    ``text_encoder`` is the builder of the text model (default: the one ``cfg.embed.text``
    names); tests pass a small one in.
    """
    run_date = check_run_date(run_date)
    started = dt.datetime.now(dt.timezone.utc)
    summary = RunSummary(run_id=uuid.uuid4().hex, run_date=run_date, warehouse=warehouse)
    timer = StageTimer()
    sink = DeltaSink(warehouse)
    persisted: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        df = _persist(df)
        persisted.append(df)
        return df

    try:
        builder = text_encoder or TextEncoderBuilder.from_conf(cfg.embed.text)  # fail fast on a bad model path

        with timer.stage("ingest") as c:
            ing = read_listings(spark, input_path, cfg.input)
            persisted.extend(ing.cached)
            kept = keep(ing.kept)
            rejects = keep(ing.rejects)
            summary.rows_kept = kept.count()
            if ing.has_image_column:
                summary.images_unreadable = kept.where(F.col("image_error").isNotNull()).count()
            by_reason = {r["reason"]: r["count"] for r in rejects.groupBy("reason").count().collect()}
            summary.rejects_by_reason = by_reason
            summary.rows_rejected = sum(by_reason.values())
            summary.rows_in = ing.rows_in()
            if summary.rows_in != summary.rows_kept + summary.rows_rejected:
                raise DedupError(
                    f"row accounting broke: {summary.rows_in} in != {summary.rows_kept} kept + "
                    f"{summary.rows_rejected} rejected"
                )
            c.update(rows_in=summary.rows_in, kept=summary.rows_kept, rejected=summary.rows_rejected)
            if summary.rows_in == 0:
                log.warning("input %s holds no rows: the %s partitions will be empty", input_path, run_date)

        with timer.stage("embed") as c:
            texts = kept.where(F.length("title") > 0).select("posting_id", "title")
            emb = keep(
                embed_texts(texts, "title", "emb", builder, fail_stage=cfg.testing.fail_once_stage).select(
                    "posting_id", "emb"
                )
            )
            summary.rows_embedded = emb.count()
            c["embedded"] = summary.rows_embedded

        n_emb = summary.rows_embedded
        nbrs = keep(neighbours_for(emb, cfg, n_emb, timer)) if n_emb else None
        for r, threshold in enumerate(cfg.inb.thresholds, start=1):
            if nbrs is None:
                break
            with timer.stage(f"blend{r}") as c:
                emb = keep(blend(emb, nbrs, threshold))
                c["blended"] = emb.count()
            nbrs = keep(neighbours_for(emb, cfg, n_emb, timer, suffix=str(r)))

        vertices = kept.select("posting_id")
        with timer.stage("edges") as c:
            if nbrs is None:
                edges = spark.createDataFrame([], "src string, dst string, score float")
            else:
                edges = keep(select_edges(nbrs, cfg.match))
            summary.n_edges = edges.count() // 2  # both directions are stored
            c["edges"] = summary.n_edges

        with timer.stage("components") as c:
            groups = keep(connected_components(vertices, edges.select("src", "dst")))
            stats = groups.agg(
                F.countDistinct(F.when(F.col("group_size") > 1, F.col("group_id"))).alias("groups"),
                F.sum(F.when(F.col("group_size") > 1, 1).otherwise(0)).alias("grouped"),
                F.sum(F.when(F.col("group_size") == 1, 1).otherwise(0)).alias("singletons"),
                F.max("group_size").alias("largest"),
            ).first()
            summary.n_groups = int(stats["groups"] or 0)
            summary.n_grouped = int(stats["grouped"] or 0)
            summary.n_singletons = int(stats["singletons"] or 0)
            summary.largest_group = int(stats["largest"] or 0)
            c.update(groups=summary.n_groups, singletons=summary.n_singletons)

        with timer.stage("write") as c:
            matches = match_sets(edges, vertices)
            staged = {
                "matches": sink.stage(matches.select("posting_id", "match_ids", "scores"), "matches", run_date),
                "clusters": sink.stage(groups.select("posting_id", "group_id", "group_size"), "clusters", run_date),
                "rejects": sink.stage(rejects.select("posting_id", "reason", "raw"), "rejects", run_date),
            }
            for name in ("matches", "clusters", "rejects"):
                res = sink.commit(staged[name], crash_before_commit=cfg.testing.crash_before_commit)
                summary.table_versions[name] = res.version
            c["tables"] = len(staged)

        summary.stage_seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
        summary.table_versions["runs"] = _write_run_row(
            spark, sink, summary, cfg, input_path, started, status="succeeded"
        )
        return summary
    except Exception as e:
        summary.stage_seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
        if not cfg.testing.crash_before_commit:  # a simulated driver crash writes nothing at all
            try:
                _write_run_row(spark, sink, summary, cfg, input_path, started, status="failed", error=str(e))
            except Exception:  # noqa: BLE001 - never mask the original failure
                log.warning("could not record the failed run in the runs table", exc_info=True)
        raise
    finally:
        for df in persisted:
            df.unpersist()


RUNS_SCHEMA = (
    "run_id string, status string, error string, started_at timestamp, finished_at timestamp, "
    "input_path string, config_json string, version string, rows_in long, rows_kept long, rows_rejected long, "
    "rejects_by_reason string, rows_embedded long, n_edges long, n_groups long, n_grouped long, "
    "n_singletons long, largest_group long, stage_seconds string, images_unreadable long"
)


def _write_run_row(spark, sink, summary: RunSummary, cfg, input_path, started, *, status: str, error: str = "") -> int:
    finished = dt.datetime.now(dt.timezone.utc)
    row = (
        summary.run_id,
        status,
        error[:4000],
        started,
        finished,
        input_path,
        cfg.to_json(),
        __version__,
        summary.rows_in,
        summary.rows_kept,
        summary.rows_rejected,
        json.dumps(summary.rejects_by_reason, sort_keys=True),
        summary.rows_embedded,
        summary.n_edges,
        summary.n_groups,
        summary.n_grouped,
        summary.n_singletons,
        summary.largest_group,
        json.dumps(summary.stage_seconds),
        summary.images_unreadable,
    )
    df = spark.createDataFrame([row], RUNS_SCHEMA).coalesce(1)
    return sink.write(df, "runs", summary.run_date, mode="append").version
