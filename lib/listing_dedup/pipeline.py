"""The dedup job as a plan of stages. Spark I/O stays here and in the stage wrappers; every
algorithm lives in its own module as a pure function with a thin Spark layer.

    full night:         prepare -> ingest -> plan_night -> embed -> full_rounds  -> match -> commit -> record
    incremental night:  prepare -> ingest -> plan_night -> embed -> delta_rounds -> match -> commit -> record
    match:              phash -> rerank -> extra_edges -> group (edges, components, health) -> stable_ids

``run_dedup`` composes them; each stage takes what it reads and returns what it made (the
dataclasses below). ``full_rounds`` searches every listing in every round (``index + search``,
then per INB threshold ``blend -> index + search``); ``delta_rounds`` (an incremental night,
``incremental.enabled``: docs/incremental.md) searches the night's delta against tonight's index
with the epoch's quantizer, updates the other lists symmetrically and blends only the listings
whose neighbourhood moved. Everything after the search is the same in both plans; group ids
continue the previous night's (graph/lineage.py) and the night's ``group_changes`` are written.

All tables are staged (files written by executors) before any is committed, so a failure in any
compute stage leaves every table at its previous version. Before the first commit every staged
table, and the ``runs`` row to come, is checked against its existing table (schema,
partitioning), so a schema error cannot leave one table new and the next old; with the match
state kept, a state another run committed meanwhile fails the run there too. The data tables are
committed first, then the match state and its ``state_log`` row, then the embeddings cache, then
the ``runs`` row: a night is continued by the next only once its ``runs`` row says succeeded.
An input that is empty or shrank past ``input.max_shrink`` against the previous succeeded run
(in rows read, or in rows kept), or of which more than ``input.max_rejected_share`` is rejected,
is refused after ingest, before anything is computed or staged. Every data table's rows carry
the run's ``run_id`` (sink/verify.py tells a date whose tables come from different runs), and a
table the run does not write (``candidates`` with ``output.candidates: false``) has the date's
partition emptied in the same commit sequence, so that no earlier run's rows stay beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from listing_dedup.config import DedupConfig, MatchConf
from listing_dedup.dates import check_run_date
from listing_dedup.embed.encoder import Encoder, TextEncoderBuilder, embed_texts
from listing_dedup.embed.fusion import Layout, candidate_scores, fuse
from listing_dedup.embed.lexical import (
    counts_to_vectors,
    embed_lexical,
    embed_lexical_counts,
    fit_idf,
    fit_idf_counts,
    lexical_counts,
)
from listing_dedup.errors import DedupError, InputError, RunRecordError, SinkError, first_line
from listing_dedup.frames import cut_lineage, empty_pairs_spark
from listing_dedup.graph.components import components_on_driver, connected_components
from listing_dedup.graph.driver_graph import DriverGraph, codes_of, group_codes, match_table, union_edges
from listing_dedup.graph.edges import select_edges, select_edges_match, veto_edges
from listing_dedup.graph.explain import EdgeRule, matches_of_run, unexplained_match_sets
from listing_dedup.graph.guard import margin_cut, split_large
from listing_dedup.graph.lineage import (
    CHANGE_KINDS,
    CHANGES_DDL,
    assign_ids,
    assign_ids_spark,
    change_counts,
    check_unique,
    first_night_changes,
)
from listing_dedup.graph.rerank import (
    candidate_frame_spark,
    for_coverage,
    group_margin_of,
    rerank_rule_spark,
    rerank_spark,
    reranker_for,
)
from listing_dedup.incremental import (
    Plan,
    choose_plan,
    drift_since_epoch,
    listing_digests_spark,
    refuse_out_of_order,
    settings_fingerprint,
)
from listing_dedup.ingest.images import image_roots_for
from listing_dedup.ingest.reader import check_kept_rows, check_row_count, read_listings
from listing_dedup.quality.health import Health, HealthReference, decide, with_fallback
from listing_dedup.quality.review import nightly_queue
from listing_dedup.quality.run_health import (
    choose_reference,
    edge_counts,
    group_counts,
    health_inputs_spark,
    limits_of,
    listing_counts,
    signal_coverage,
)
from listing_dedup.search.driver_night import (
    has_state,
    incremental_rounds,
    last_frame,
    load_state,
    prune_states,
    rule_prefix,
    save_state,
    state_frames,
    state_of_rounds,
    to_frame,
    vectors_frame,
)
from listing_dedup.search.incremental import DELTA_KINDS, night_delta, night_delta_spark
from listing_dedup.search.indexer import Quantizer, build_index, search, train
from listing_dedup.search.phash_match import phash_found, split_found
from listing_dedup.search.rounds import SearchRounds, delta_rounds, full_rounds, ranked, rule_rows
from listing_dedup.sink.cache import (
    CachedSignal,
    EmbeddingCache,
    content_digest_column,
    fingerprint_column,
    image_digest_column,
    need_column,
)
from listing_dedup.sink.decisions import Decisions
from listing_dedup.sink.delta import DeltaSink, StagedWrite, read_table
from listing_dedup.sink.runs import RunSummary, check_runs_table, last_succeeded_run, write_run_row
from listing_dedup.sink.schemas import ADDED_COLUMNS, OUTPUT_DATA_SCHEMAS, RUN_ID_COLUMN, normalize_arrow_schema
from listing_dedup.sink.state import (
    STATE_ADDED_COLUMNS,
    STATE_LOG,
    STATE_SCHEMAS,
    Epoch,
    append_state_log,
    base_state,
    check_state_unmoved,
    load_epoch,
    previous_clusters,
    previous_date,
    prune_state,
    read_state,
    save_epoch,
    state_dates,
    state_log,
)
from listing_dedup.timing import StageTimer

log = logging.getLogger(__name__)


def _persist(df: DataFrame) -> DataFrame:
    return df.persist(StorageLevel.MEMORY_AND_DISK)


def neighbours_for(
    emb: DataFrame,
    cfg: DedupConfig,
    n_rows: int,
    timer: StageTimer,
    suffix: str = "",
    quantizers: dict[str, Quantizer] | None = None,
    space: str = "fused",
) -> DataFrame:
    """Index ``emb`` and search it with itself: each listing's top-k neighbours (self excluded).

    ``quantizers`` holds the job's coarse quantizer of each vector ``space``: trained by the
    first index of that space, reused by the later ones (the INB rounds)."""
    with timer.stage(f"index{suffix}") as c:
        quantizer = (quantizers or {}).get(space)
        if quantizer is None:
            quantizer = train(emb, cfg.index, n_rows=n_rows)
            if quantizers is not None:
                quantizers[space] = quantizer
        index = build_index(emb, cfg.index, n_rows=n_rows, quantizer=quantizer)
        c["lists"] = index.nlist
    try:
        with timer.stage(f"search{suffix}") as c:
            # materialised without lineage: the edge rules, the health check and the next INB
            # round would otherwise re-analyse every stage's plan up to here at each action
            nbrs = cut_lineage(search(index, emb, cfg.index.k, fail_stage=cfg.testing.fail_once_stage))
            c["neighbour_pairs"] = nbrs.count()
    finally:
        index.unpersist()  # the neighbours are materialised; the shards are no longer needed
    return nbrs


def _run_signals(cfg: DedupConfig, has_image_column: bool) -> list[str]:
    signals = list(cfg.dense_signals())
    if "image" in signals and not has_image_column:
        log.warning("embed.image is enabled but the input has no image column: the image signal is off")
        signals.remove("image")
    return signals


def _signal_dims(sig: DataFrame, signals: list[str]) -> dict[str, int]:
    """Vector length of each signal (from one row that has it)."""
    dims = {}
    for s in signals:
        row = sig.where(F.col(f"v_{s}").isNotNull()).select(F.size(f"v_{s}").alias("d")).limit(1).collect()
        dims[s] = int(row[0]["d"]) if row else 1
    return dims


def _union_edges(spark: SparkSession, parts: list[DataFrame]) -> DataFrame:
    """Union of edge sets (both directions each); a pair found by several keeps its best score."""
    if not parts:
        return empty_pairs_spark(spark)
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.groupBy("src", "dst").agg(F.max("score").cast("float").alias("score"))


def run_health(
    cfg: DedupConfig,
    *,
    kept: DataFrame,
    edges: DataFrame,
    groups: DataFrame,
    pairs: DataFrame | None,
    signals: dict[str, float],
    dense_signals: list[str],
    counts: dict,
    guard_cut: bool,
    reference: HealthReference | None,
    reference_note: str,
) -> Health:
    """The unsupervised health check of the run (quality/health.py): Spark aggregates of the
    listings, the match edges, the groups and the final search (``pairs``: each listing's best
    fused score is its top-1), judged against ``reference``. Without one, the signals the run
    fuses are the expected ones. ``counts``: the edge and group counts the earlier stages took
    (quality/run_health), ``guard_cut``: whether the guard re-cut any group."""
    x = health_inputs_spark(
        kept.select("posting_id", "title"),
        edges,
        groups,
        pairs,
        signals,
        ref_quantiles=reference.top1_quantiles if reference is not None else None,
        slack=cfg.health.top1_slack,
        n_largest=cfg.health.largest_groups,
        n_titles=cfg.health.sample_titles,
        guard_cut=guard_cut,
        **counts,
    )
    health = decide(
        x,
        reference=reference,
        expected_signals=() if reference is not None else dense_signals,
        limits=limits_of(cfg.health),
        reference_note=reference_note,
    )
    for w in health.warnings:
        log.warning("health %s: %s", w.code, w.message)
    return health


def _union_reads(cfg: DedupConfig, signals) -> bool:
    """Whether a per-signal search (``union.<signal>``) reads the signal vectors after the fusion."""
    return any(getattr(cfg.union, s).enabled for s in signals)


def _embeddings_cache(cfg: DedupConfig, warehouse: str, run_id: str, text_builder, spark=None) -> EmbeddingCache | None:
    """The run's embeddings cache (None with ``cache.enabled`` off), with the fingerprint of each
    cached signal's encoder; a text encoder builder without ``fingerprint()`` (one a caller passed
    in) is not cached."""
    if not cfg.cache.enabled:
        return None
    cache = EmbeddingCache(cfg.cache.root(warehouse), run_id=run_id)
    fingerprint = getattr(text_builder, "fingerprint", None)
    if cfg.embed.text.enabled and callable(fingerprint):
        cache.fingerprints["text"] = fingerprint(spark=spark)  # the runtime the executors are expected to use
    elif cfg.embed.text.enabled:
        log.info("the text encoder %r has no fingerprint(): its vectors are not cached", text_builder)
    return cache


def check_output_tables(spark: SparkSession, sink: DeltaSink, cfg: DedupConfig) -> None:
    """Raise :class:`SinkError` when a table this run will commit (the data tables, the runs row)
    exists with a schema or partitioning its write would not fit: before any work, so that such
    a run fails in seconds and not after the embedding and the search. The staged writes are
    checked again before the first commit (a table changed meanwhile). ``candidates`` is checked
    whether or not the run writes it: an existing one has the date's partition emptied. A table
    of an earlier version that lacks only the newer columns (``ADDED_COLUMNS``) passes: the
    commit adds them."""
    for t in OUTPUT_DATA_SCHEMAS:  # matches, clusters, rejects, candidates, group_changes
        sink.check_schema(t, OUTPUT_DATA_SCHEMAS[t], added_columns=ADDED_COLUMNS[t])
    check_runs_table(spark, sink)


def _versions(table_versions: dict[str, int]) -> str:
    return ", ".join(f"{t} version {v}" for t, v in table_versions.items())


# --------------------------------------------------------------------------------------
# what the stages pass each other


@dataclass
class Run:
    """What every stage of one run shares: the session, the conf, the run's date and summary,
    its timer, its sink and the frames it persisted (released at the end)."""

    spark: SparkSession
    cfg: DedupConfig
    input_path: str
    run_date: str
    warehouse: str
    summary: RunSummary
    timer: StageTimer = field(default_factory=StageTimer)
    persisted: list[DataFrame] = field(default_factory=list)
    driver_graph: Any = None  # the driver plan's graph (graph/driver_graph.DriverGraph), set by the edges stage

    @property
    def sink(self) -> DeltaSink:
        return DeltaSink(self.warehouse)

    def keep(self, df: DataFrame) -> DataFrame:
        df = _persist(df)
        self.persisted.append(df)
        return df


@dataclass
class Setup:
    """Checked before any work: the encoders, the re-ranker and the health reference, and the
    match state's dates this run saw (None with ``incremental.enabled`` off)."""

    builder: Any
    reranker: Any
    rerank_note: str
    health_ref: HealthReference | None
    health_note: str
    decisions: Decisions | None = None  # reviewers' verdicts (listing-dedup decide), applied after the components
    state_seen: set[str] | None = None


@dataclass
class Listings:
    """The ingest stage's output: the kept and rejected rows and what the later stages read of them."""

    kept: DataFrame
    rejects: DataFrame
    counts: dict
    has_image: bool
    image_root: Any
    layout_weights: dict[str, float]
    hashes: Any = None  # kept_hashes' pandas frame, collected once

    def kept_hashes(self) -> Any:
        """``posting_id, h`` (the pHash as a string, None without) of every kept listing, on the
        driver: collected once for the pHash delta and the driver graph."""
        if self.hashes is None:
            rows = self.kept.select("posting_id", F.col("image_phash").cast("string").alias("h"))
            self.hashes = rows.where(F.col("posting_id").isNotNull()).toPandas()
        return self.hashes


@dataclass
class Night:
    """Which plan tonight runs (:mod:`listing_dedup.incremental`): None with the incremental
    state off. An incremental night carries the state it continues."""

    plan: Plan | None = None
    digests: DataFrame | None = None
    delta: DataFrame | None = None
    delta_counts: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    epoch: Epoch | None = None
    prev_lists: list[DataFrame] = field(default_factory=list)
    prev_vectors: list[DataFrame | None] = field(default_factory=list)
    prev_listings: DataFrame | None = None  # the continued night's listing_state
    driver_base: bool = False  # the continued night's lists and vectors are files (the driver plan's)
    prev_pd: Any = None  # the continued night's listing_state and the delta, on the driver (a driver-plan night)
    delta_pd: Any = None

    @property
    def keeps_state(self) -> bool:
        return self.plan is not None

    @property
    def incremental(self) -> bool:
        return self.plan is not None and self.plan.incremental


@dataclass
class Embedded:
    """The embed stage's output: the fused vectors, the signal vectors (``sig``), the layout, the
    lexical idf applied, and the cache's staged writes."""

    emb: DataFrame
    sig: DataFrame
    layout: Layout
    idf: Any
    cache: EmbeddingCache | None
    cache_staged: list
    partial: bool = False  # only the night's delta embedded (a driver-plan night: the others' are its arrays)


@dataclass
class Matched:
    """The match stages' output: tonight's search rounds, pHash pairs, re-ranker scores, edges,
    groups (stable ids) and their changes, and the health check."""

    embedded: Embedded
    rounds: SearchRounds | None
    ph_pairs: DataFrame | None
    scored: DataFrame | None
    edges: DataFrame
    groups: DataFrame
    changes: DataFrame
    health: Health
    rule: MatchConf  # the rule that kept the edges, as applied (the titles model's prior-shifted thresholds)
    reranked: bool  # the re-ranker's edges were kept (no fallback to the threshold rule)


# --------------------------------------------------------------------------------------
# the two plans


def run_dedup(
    *,
    spark: SparkSession,
    cfg: DedupConfig,
    input_path: str,
    run_date: str,
    warehouse: str,
    text_encoder: Callable[[], Encoder] | None = None,
) -> RunSummary:
    """Run the whole job for one ``run_date`` and commit its tables.

    ``text_encoder`` is the builder of the text model (default: the one ``cfg.embed.text``
    names); tests pass a small one in. A night is full, or incremental when it continues the
    match state of the night before it (``incremental.enabled``; docs/incremental.md)."""
    run_date = check_run_date(run_date)
    run = Run(spark, cfg, input_path, run_date, warehouse, RunSummary(uuid.uuid4().hex, run_date, warehouse))
    started = dt.datetime.now(dt.timezone.utc)
    try:
        setup = prepare(run, text_encoder)
        listings = ingest(run)
        setup = for_catalog(run, setup, listings)
        night = plan_night(run, setup, listings)
        if night.incremental:
            matched = incremental_night(run, setup, listings, night)
        else:
            matched = full_night(run, setup, listings)
        commit(run, setup, listings, night, matched)
        nightly_queue(run, setup, listings, matched)  # review.nightly: the night's review_queue (quality/review)
        record(run, started)
        return run.summary
    except RunRecordError:
        raise  # the data is committed and good: a "failed" row would say otherwise
    except Exception as e:
        run.summary.stage_seconds = {k: round(v, 3) for k, v in run.timer.seconds.items()}
        if not cfg.testing.crash_before_commit:  # a simulated driver crash writes nothing at all
            try:
                write_run_row(spark, run.sink, run.summary, run.cfg, input_path, started, status="failed", error=str(e))
            except Exception:  # noqa: BLE001 - never mask the original failure
                log.warning("could not record the failed run in the runs table", exc_info=True)
        raise
    finally:
        for df in run.persisted:
            df.unpersist()


def full_night(run: Run, setup: Setup, listings: Listings) -> Matched:
    """Every listing embedded (the cache's vectors reused), searched and blended."""
    embedded = embed(run, setup, listings, epoch_idf=None)
    n = run.summary.rows_embedded
    rounds = full_rounds(embedded.emb, run.cfg, n, run.timer, run.keep, depth=_depth(run.cfg)) if n else None
    return match(run, setup, listings, embedded, rounds)


def incremental_night(run: Run, setup: Setup, listings: Listings, night: Night) -> Matched:
    """The epoch's idf and quantizer; only the night's delta searched, only the listings whose
    neighbourhood moved blended (search/rounds.delta_rounds); the later stages as a full night's."""
    cfg = run.cfg
    only = None
    if _embed_delta_only(run, setup, listings, night):  # the others' fused vectors are the state's arrays
        only = night.delta.where(F.col("kind").isin("added", "changed")).select("posting_id")
    embedded = embed(run, setup, listings, epoch_idf=night.epoch.idf, only=only)
    quantizer = Quantizer(night.epoch.centroids, 0)
    if cfg.incremental.search_all:  # the reference: every listing searched on the epoch
        rounds = full_rounds(
            embedded.emb, cfg, run.summary.rows_embedded, run.timer, run.keep, depth=_depth(cfg), quantizer=quantizer
        )
        return match(run, setup, listings, embedded, rounds)
    if night.driver_base:
        with run.timer.stage("load_state"):
            base = night.plan.base
            prev = load_state(run.warehouse, base.run_date, base.run_id)
        if _driver_plan(run):  # the driver plan: numpy on the state's arrays (search/driver_night.py)
            rounds = incremental_rounds(
                embedded.emb,
                night.delta,
                prev,
                quantizer,
                cfg,
                depth=_depth(cfg),
                timer=run.timer,
                keep=run.keep,
                with_first=setup.reranker is not None,
                # the health check's top-1 only, where the later stages read the arrays
                nbrs_k=1 if _lists_on_driver(run, setup, listings) else None,
            )
            run.summary.signal_counts["incremental_driver"] = 1
            run.summary.signal_counts.update({f"incremental_{k}": v for k, v in rounds.counts.items()})
            return match(run, setup, listings, embedded, rounds, night)
        # the catalog outgrew the driver plan: its state's arrays as the Spark plan's frames
        night.prev_lists, night.prev_vectors = state_frames(run.spark, prev)
    rounds = delta_rounds(
        embedded.emb,
        cfg,
        run.summary.rows_embedded,
        run.timer,
        run.keep,
        depth=_depth(cfg),
        quantizer=quantizer,
        delta=night.delta,
        prev_lists=night.prev_lists,
        prev_vectors=night.prev_vectors,
        search_depth=cfg.incremental.search_depth or None,
    )
    run.summary.signal_counts.update({f"incremental_{k}": v for k, v in rounds.counts.items()})
    return match(run, setup, listings, embedded, rounds, night)


def match(
    run: Run,
    setup: Setup,
    listings: Listings,
    embedded: Embedded,
    rounds: SearchRounds | None,
    night: Night | None = None,
) -> Matched:
    """The stages after the search, the same in both plans: pHash pairs (an incremental night's
    from the state's and its delta), the re-ranker, the edges, components and health (with the
    re-ranker's fallback), and the stable group ids."""
    ph_pairs = phash(run, listings, night)
    scored = rerank(run, setup, listings, rounds)
    extra = extra_edges(run, listings, embedded, ph_pairs)
    edges, groups, health, rule = group(run, setup, listings, rounds, scored, extra)
    groups, changes = stable_ids(run, groups)
    reranked = scored is not None and not run.summary.signal_counts.get("rerank_fallback")
    return Matched(embedded, rounds, ph_pairs, scored, edges, groups, changes, health, rule, reranked)


def _driver_plan(run: Run) -> bool:
    """Whether tonight's lists are the driver plan's arrays (search/driver_night.py): the
    catalog within ``incremental.driver_max_listings`` and the index's flat storage (the
    driver scans exactly; ``sq8``'s compressed scan is the Spark plan's)."""
    cfg = run.cfg
    return run.summary.rows_kept <= cfg.incremental.driver_max_listings and cfg.index.storage == "flat"


def _embed_delta_only(run: Run, setup: Setup, listings: Listings, night: Night) -> bool:
    """Whether tonight embeds only its delta: a driver-plan night (its fused vectors are the
    state's arrays, the delta's collected from ``emb``) whose later stages read no other
    listing's vector from Spark (:func:`_lists_on_driver`), of the title signals only (an
    image's listing need not have a title)."""
    cfg = run.cfg
    return (
        night.driver_base
        and not cfg.incremental.search_all
        and _driver_plan(run)
        and "image" not in listings.layout_weights
        and _lists_on_driver(run, setup, listings)
    )


def _depth(cfg: DedupConfig) -> int:
    """Neighbours a search keeps a listing: ``index.k``, plus the state's slack when kept."""
    return cfg.index.k + (cfg.incremental.slack if cfg.incremental.enabled else 0)


# --------------------------------------------------------------------------------------
# the stages


def prepare(run: Run, text_encoder: Callable[[], Encoder] | None) -> Setup:
    """Fail fast: the text model's path, the re-ranker, the output tables' schemas, and (with
    the incremental state) a date older than the newest state without ``--full``."""
    cfg = run.cfg
    builder = text_encoder or TextEncoderBuilder.from_conf(cfg.embed.text)  # fail fast on a bad model path
    # fail fast on a bad model directory or a pipeline it was not trained for; the built-in
    # one on other settings: none, and the note says why (the threshold rule decides)
    reranker, rerank_note = reranker_for(cfg)
    if rerank_note:
        log.warning("%s", rerank_note)
    # the re-ranker's reference, the defaults' or none
    health_ref, health_note = choose_reference(cfg if reranker is not None else cfg.without_reranker())
    check_output_tables(run.spark, run.sink, cfg)  # fail fast on a table another writer changed
    # reviewers' verdicts (listing-dedup decide), read once; applied after the components
    decisions = Decisions.read(run.warehouse) if cfg.decisions.enabled else None
    seen = None
    if cfg.incremental.enabled:
        seen = state_dates(run.sink)
        refuse_out_of_order(run.run_date, max(seen) if seen else None, cfg.incremental.full)
    return Setup(builder, reranker, rerank_note, health_ref, health_note, decisions, seen)


def ingest(run: Run) -> Listings:
    """Read and validate the input: every row kept or rejected with a reason; the input-size guards."""
    cfg, summary = run.cfg, run.summary
    with run.timer.stage("ingest") as c:
        ing = read_listings(run.spark, run.input_path, cfg.input)
        run.persisted.extend(ing.cached)
        summary.rows_in = ing.rows_in()
        previous = last_succeeded_run(run.sink)
        check_row_count(
            summary.rows_in,
            cfg.input,
            previous_rows=previous.rows_in if previous else None,
            previous_run=previous.describe() if previous else "",
            path=run.input_path,
        )
        kept = run.keep(ing.kept)
        rejects = run.keep(ing.rejects)
        kept_counts = listing_counts(kept, has_image=ing.has_image_column)  # also the health's signals
        summary.rows_kept = kept_counts["n"]
        if ing.has_image_column:
            summary.images_unreadable = kept_counts["image_error"]
        by_reason = {r["reason"]: r["count"] for r in rejects.groupBy("reason").count().collect()}
        summary.rejects_by_reason = by_reason
        summary.rows_rejected = sum(by_reason.values())
        if summary.rows_in != summary.rows_kept + summary.rows_rejected:
            raise DedupError(
                f"row accounting broke: {summary.rows_in} in != {summary.rows_kept} kept + "
                f"{summary.rows_rejected} rejected"
            )
        c.update(rows_in=summary.rows_in, kept=summary.rows_kept, rejected=summary.rows_rejected)
        check_kept_rows(
            summary.rows_in,
            summary.rows_kept,
            cfg.input,
            previous_in=previous.rows_in if previous else None,
            previous_kept=previous.rows_kept if previous else None,
            previous_run=previous.describe() if previous else "",
            rejects_by_reason=by_reason,
            path=run.input_path,
        )
        if summary.rows_in == 0:  # accepted by input.allow_empty / --allow-empty
            log.warning("input %s holds no rows: the %s partitions will be empty", run.input_path, run.run_date)
    signals = _run_signals(cfg, ing.has_image_column)
    return Listings(
        kept=kept,
        rejects=rejects,
        counts=kept_counts,
        has_image=ing.has_image_column,
        image_root=image_roots_for(run.input_path, cfg.input),  # the roots image files are read below
        layout_weights=cfg.fusion.weights(signals),
    )


def for_catalog(run: Run, setup: Setup, listings: Listings) -> Setup:
    """The built-in re-ranker for the catalog's signals: the titles-only one where pHash is rare
    (graph/rerank.for_coverage); the run's conf, re-ranker and health reference follow it."""
    n = listings.counts["n"]
    cfg, coverage_note = for_coverage(run.cfg, listings.counts["phash"] / n if n else 0.0)
    if not coverage_note:
        return setup
    log.info("%s", coverage_note)
    run.cfg = cfg
    reranker, rerank_note = reranker_for(cfg)
    health_ref, health_note = choose_reference(cfg if reranker is not None else cfg.without_reranker())
    return dataclasses.replace(
        setup,
        reranker=reranker,
        rerank_note=rerank_note or coverage_note,
        health_ref=health_ref,
        health_note=health_note,
    )


def plan_night(run: Run, setup: Setup, listings: Listings) -> Night:
    """Full or incremental, and why (lib/listing_dedup/incremental.py); the night's delta
    against the state it would continue. A Night without a plan when the state is off."""
    cfg, sink = run.cfg, run.sink
    if not cfg.incremental.enabled:
        return Night()
    with run.timer.stage("delta") as c:
        encoders = _encoder_fingerprints(run, setup, listings)
        fingerprint = settings_fingerprint(cfg.to_dict(), cfg.incremental.slack, encoders)
        digests = run.keep(
            listing_digests_spark(listings.kept, has_image=listings.has_image, image_root=listings.image_root)
        )
        base = base_state(sink, run.run_date)
        prev_date = previous_date(sink, run.run_date)
        delta, counts, epoch, drift = None, {}, None, None
        if base is not None and not cfg.incremental.full:
            epoch = load_epoch(run.warehouse, base.epoch)
            prev = read_state(run.spark, sink, "listing_state", base.run_date)
            prev_pd = delta_pd = None
            counts = {k: 0 for k in DELTA_KINDS}
            if _driver_plan(run):  # the digests' join on the driver (search/incremental.night_delta)
                prev_pd = read_table(
                    run.warehouse, "listing_state", base.run_date, storage_options=sink.storage_options
                )
                delta_pd = night_delta(prev_pd, digests.select("posting_id", "digest").toPandas())
                delta = run.keep(to_frame(run.spark, delta_pd, "posting_id string, kind string"))
                counts.update({k: int(v) for k, v in delta_pd["kind"].value_counts().items()})
                c["where"] = "driver"
            else:
                delta = cut_lineage(night_delta_spark(prev, digests))
                counts.update({r["kind"]: int(r["count"]) for r in delta.groupBy("kind").count().collect()})
            drift = drift_since_epoch(
                state_log(sink), base.epoch, run.run_date, counts["added"] + counts["changed"], epoch.listings
            )
        plan = choose_plan(
            full=cfg.incremental.full,
            base=base,
            previous_date=prev_date,
            epoch_fingerprint=epoch.fingerprint if epoch is not None else None,
            fingerprint=fingerprint,
            drift=drift,
            max_drift=cfg.incremental.max_drift,
        )
        night = Night(plan, digests, delta, counts, fingerprint, epoch)
        if plan.incremental:
            night.prev_listings = prev
            night.prev_pd, night.delta_pd = prev_pd, delta_pd
            night.driver_base = has_state(run.warehouse, base.run_date, base.run_id)
            if not night.driver_base:  # a driver state's lists are its files (incremental_night reads them)
                rounds = 1 + len(cfg.inb.thresholds)
                lists = read_state(run.spark, sink, "neighbours", base.run_date)
                vecs = read_state(run.spark, sink, "vectors", base.run_date)
                cols = [c for c in ("src", "dst", "score", "rank") if c in lists.columns]  # rank: a state since it
                night.prev_lists = [lists.where(F.col("round") == r).select(*cols) for r in range(rounds)]
                night.prev_vectors = [None] + [
                    vecs.where(F.col("round") == r).select("posting_id", "emb") for r in range(1, rounds)
                ]
        run.summary.plan = f"{plan.kind}: {plan.reason}"
        run.summary.signal_counts.update({f"night_{k}": v for k, v in counts.items()})
        c.update(plan=plan.kind, **{k: v for k, v in counts.items()})
        log.info("tonight's plan: %s (%s)", plan.kind, plan.reason)
    return night


def _encoder_fingerprints(run: Run, setup: Setup, listings: Listings) -> dict[str, Any]:
    """What decides each dense signal's vectors (model files, runtime): part of the state's
    settings fingerprint. An encoder without ``fingerprint()`` (a test's) is named by its type."""
    out: dict[str, Any] = {}
    if "text" in listings.layout_weights:
        fp = getattr(setup.builder, "fingerprint", None)
        out["text"] = fp(spark=run.spark) if callable(fp) else type(setup.builder).__name__
    if "image" in listings.layout_weights:
        from listing_dedup.embed.image import ImageEncoderBuilder

        out["image"] = ImageEncoderBuilder.from_conf(run.cfg.embed.image).fingerprint(spark=run.spark)
    return out


def embed(run: Run, setup: Setup, listings: Listings, *, epoch_idf: Any, only: DataFrame | None = None) -> Embedded:
    """The fused vector of every listing with a title or an image: the cache's vectors reused,
    the missing ones computed; the lexical idf fitted on tonight's catalog, or the epoch's
    (``epoch_idf``) on an incremental night. ``only`` (``posting_id``: a driver-plan night's
    delta, titles only): only those listings are embedded (the others' fused vectors are the
    state's arrays), every listing's cache keys still marked used; ``rows_embedded`` counts the
    catalog's."""
    spark, cfg, timer, keep, summary, run_date = run.spark, run.cfg, run.timer, run.keep, run.summary, run.run_date
    kept, image_root, layout_weights, builder = (
        listings.kept,
        listings.image_root,
        listings.layout_weights,
        setup.builder,
    )
    idf = None
    cache = _embeddings_cache(cfg, run.warehouse, summary.run_id, builder, spark)
    cache_staged: list = []  # the cache's staged writes (embed stage), committed after the data tables
    with timer.stage("embed") as c:
        sig = kept.where(F.length("title") > 0).select("posting_id", "title")
        catalog = sig
        if only is not None:
            sig = sig.join(F.broadcast(only.select("posting_id")), "posting_id")
        fail = cfg.testing.fail_once_stage
        params = cfg.embed.lexical.params()
        t_step = [time.perf_counter()]

        def step(name: str) -> None:  # the seconds of the embed stage's steps, in its log line
            now = time.perf_counter()
            c[f"{name}_s"] = round(now - t_step[0], 1)
            t_step[0] = now

        def text_fn(df: DataFrame) -> DataFrame:
            return embed_texts(df, "title", "v_text", builder, fail_stage=fail)

        cached_text = cache is not None and "text" in layout_weights and "text" in cache.fingerprints
        cached_lexical = cache is not None and "lexical" in layout_weights
        title_signals = []
        if cached_text:
            title_signals.append(CachedSignal("text", cache.fingerprints["text"], "v_text"))
        if cached_lexical:  # the hashed counts: today's idf and projection apply to them below
            title_signals.append(CachedSignal("lexical", params.counts_fingerprint(), "lex_counts"))

        def titles_fn(df: DataFrame) -> DataFrame:
            # each signal reads the title only where its vector is missing (null elsewhere: not
            # computed), so a changed lexical setting does not re-run the text encoder
            for t in title_signals:
                df = df.withColumn("_title", F.when(F.col(need_column(t.name)), F.col("title")))
                if t.name == "text":
                    fp_col = fingerprint_column("text")  # each vector's: the runtime its executor really used
                    df = embed_texts(df, "_title", t.out_col, builder, fail_stage=fail, fingerprint_col=fp_col)
                else:
                    df = lexical_counts(df, "_title", t.out_col, params, fail_stage=fail)
            return df.drop("_title")

        if title_signals:  # one lookup and one computing pass for both signals of the title
            sig = cache.embed_signals(
                spark,
                sig,
                signals=title_signals,
                digest=content_digest_column(F.col("title")),
                embed_fn=titles_fn,
                keep=keep,
                content_cols=["title"],
                few=only is not None,  # the delta's titles: a broadcast semi join of the cache
            )
            if only is not None:  # the catalog's other titles read their vectors from the state
                cache.mark_used(catalog, signals=title_signals, digest=content_digest_column(F.col("title")))
            step("title_cache")
        # no layout step: the index's sample and shards depend on the rows alone (search/indexer.py)
        if cached_text or cached_lexical:
            # materialised without lineage: each cache join is a diamond in the plan, and every later
            # stage's plan (INB, edges) would otherwise carry and print them all (a 30k-listing run's
            # plan string filled the driver's heap)
            sig = cut_lineage(sig)
            step("materialise")
        if "text" in layout_weights and not cached_text:
            sig = text_fn(sig)
        encoded_here = "text" in layout_weights and not cached_text
        # sig is kept (computed once) when a later step reads it again: the encoder ran in it (no
        # cache), it holds images, or a per-signal search (union) reads it
        keep_sig = encoded_here or "image" in layout_weights or _union_reads(cfg, layout_weights)
        columns = {s: f"v_{s}" for s in layout_weights}
        transforms = {}
        if "lexical" in layout_weights:
            if cached_lexical:  # sig is materialised above: read twice (the catalog's idf, the vectors)
                idf = epoch_idf if epoch_idf is not None else fit_idf_counts(sig, "lex_counts", params)
                step("idf")
                idf_bc = spark.sparkContext.broadcast(idf)
                if keep_sig:
                    sig = embed_lexical_counts(sig, "lex_counts", "v_lexical", params, idf_bc, fail_stage=fail)
                    sig = sig.drop("lex_counts")
                else:  # projected inside the fusion's pass: the vectors never go back to the JVM alone
                    columns["lexical"] = "lex_counts"
                    transforms["lexical"] = counts_to_vectors(params, idf_bc, fail_stage=fail)
            else:
                idf = (
                    epoch_idf if epoch_idf is not None else fit_idf(kept.where(F.length("title") > 0), "title", params)
                )
                sig = embed_lexical(
                    sig, "title", "v_lexical", params, spark.sparkContext.broadcast(idf), fail_stage=fail
                )
        sig = sig.drop("title")
        if "image" in layout_weights:
            from listing_dedup.embed.image import ImageEncoderBuilder, embed_images

            img = kept.where(F.col("image").isNotNull() & F.col("image_error").isNull())
            img_builder = ImageEncoderBuilder.from_conf(cfg.embed.image)

            def image_fn(df: DataFrame) -> DataFrame:
                fp_col = fingerprint_column("image") if cache is not None else None  # the executor's runtime
                return embed_images(df, "image", "v_image", img_builder, image_root, fingerprint_col=fp_col)

            img = img.select("posting_id", "image")
            if cache is not None:
                img = cache.embed(
                    spark,
                    img,
                    signal="image",
                    fingerprint=img_builder.fingerprint(spark=spark),
                    digest=image_digest_column(F.col("image"), image_root),
                    out_col="v_image",
                    embed_fn=image_fn,
                    keep=keep,
                    digest_nullable=True,
                )
            else:
                img = image_fn(img)
            img = img.select("posting_id", "v_image")
            sig = sig.join(img, "posting_id", "full")
        # otherwise the vectors come from the materialised frame above (the lexical projection
        # computed once, inside the fusion's pass) and only the fused vectors are kept
        if keep_sig:
            sig = keep(sig)
        # the lexical block's length is the projection's; the others' from one row of the frame
        dims = _signal_dims(sig, [s for s in layout_weights if s != "lexical"])
        dims = {s: params.dim if s == "lexical" else dims[s] for s in layout_weights}
        layout = Layout.of(dims, layout_weights)
        fused = fuse(sig, {s: columns[s] for s in layout.signals}, layout, transforms=transforms)
        emb = keep(fused.select("posting_id", "emb"))
        summary.rows_embedded = emb.count()  # one row a listing of sig: no count of its own
        if only is not None:
            c["embedded_delta"] = summary.signal_counts["embedded_delta"] = summary.rows_embedded
            summary.rows_embedded = listings.counts["titled"]  # the catalog's titled rows, counted at ingest
        step("fuse")
        c.update(embedded=summary.rows_embedded, signals=",".join(layout.signals), dim=layout.dim)
        if cache is not None:
            summary.cache = {s: {"reused": u.reused, "computed": u.computed} for s, u in cache.uses.items()}
            summary.cache_warning = cache.read_error  # an unreadable cache: recomputed, said in the summary
            c.update(vectors_reused=cache.reused, vectors_computed=cache.computed)
            # the new vectors are written now, while they are in memory (committed after the data
            # tables); the cache's frames are then released
            cache_staged = cache.stage(run_date, fail_stage=cfg.testing.fail_once_stage)
            cache.release()
            step("stage_cache")
    return Embedded(emb, sig, layout, idf, cache, cache_staged, partial=only is not None)


def phash(run: Run, listings: Listings, night: Night | None = None) -> DataFrame | None:
    """pHash pairs within ``phash.max_bits`` (both directions, with a score), or None when off.
    An incremental night takes the state's pairs and searches only the blocks its delta touches
    (:func:`_phash_delta`); a full night, or one whose state cannot be continued, all blocks."""
    cfg, summary = run.cfg, run.summary
    if not cfg.phash.enabled:
        return None
    with run.timer.stage("phash") as c:
        got = _phash_delta(run, listings, night) if night is not None and night.incremental else None
        if got is not None:
            ph_pairs, n_skipped = got
            c["where"] = "delta"
            summary.signal_counts["phash_delta"] = 1  # the state's pairs and the delta's blocks
        else:
            # image_phash: given, or computed by the reader from the image (one decode)
            ph_src = listings.kept.select("posting_id", F.col("image_phash").alias("phash"))
            # one pass finds the pairs and the listings of skipped blocks; banding by catalog size
            found = run.keep(phash_found(ph_src, cfg.phash.max_bits, cfg.phash.max_bucket, n_rows=summary.rows_kept))
            ph_pairs, skipped = split_found(found)
            ph_pairs = run.keep(ph_pairs)
            n_skipped = skipped.count()
        summary.signal_counts["phash_pairs"] = ph_pairs.count() // 2
        summary.signal_counts["phash_skipped"] = n_skipped
        c.update(pairs=summary.signal_counts["phash_pairs"], skipped=summary.signal_counts["phash_skipped"])
    return ph_pairs


def _phash_delta(run: Run, listings: Listings, night: Night) -> tuple[DataFrame, int] | None:
    """An incremental night's pHash pairs (search/phash_match.phash_pairs_delta, on the driver):
    the continued night's pairs, less those of removed listings and of the blocks the delta
    touches, plus those blocks searched again; exactly a full search's pairs. None (the full
    search runs) when the state has no pairs or old hashes (a state of an older version), when
    tonight's catalog size picks another banding than the continued night's, or past
    ``components.driver_max_vertices`` listings (the driver sorts every listing's band keys)."""
    from listing_dedup.search.phash_match import choose_banding, phash_pairs_delta

    cfg, spark = run.cfg, run.spark
    prev = night.prev_listings
    if prev is None or "phash" not in prev.columns:
        return None
    if not cfg.components.on_driver(run.summary.rows_kept, 0):  # every listing's keys are sorted on the driver
        return None
    try:
        prev_pairs = read_state(spark, run.sink, "phash_pairs", night.plan.base.run_date)
    except InputError:  # no phash_pairs table: a state of an older version
        return None
    n_prev = len(night.prev_pd) if night.prev_pd is not None else prev.count()
    banding = choose_banding(cfg.phash.max_bits, run.summary.rows_kept, cfg.phash.max_bucket)
    if banding != choose_banding(cfg.phash.max_bits, n_prev, cfg.phash.max_bucket):
        return None
    hashes = listings.kept_hashes()
    cur = hashes[hashes["h"].notna()].rename(columns={"h": "image_phash"})
    delta = night.delta
    if night.delta_pd is not None:  # the delta on the driver (plan_night)
        d = night.delta_pd
        inserted = d.loc[d["kind"].isin(["added", "changed"]), "posting_id"]
        removed = d.loc[d["kind"].isin(["deleted", "changed"]), ["posting_id"]]
        removed = removed.merge(night.prev_pd[["posting_id", "phash"]], on="posting_id", how="left")
    else:
        inserted = delta.where(F.col("kind").isin("added", "changed")).select("posting_id").toPandas()["posting_id"]
        removed = (
            delta.where(F.col("kind").isin("deleted", "changed"))
            .select("posting_id")
            .join(prev.select("posting_id", "phash"), "posting_id", "left")
            .toPandas()
        )
    pairs, n_skipped = phash_pairs_delta(
        cur["posting_id"],
        cur["image_phash"],
        set(inserted),
        prev_pairs.toPandas(),
        set(removed["posting_id"]),
        removed["phash"].dropna(),
        cfg.phash.max_bits,
        cfg.phash.max_bucket,
        banding,
    )
    out = to_frame(spark, pairs[["src", "dst", "bits", "score"]], "src string, dst string, bits int, score float")
    return run.keep(out), n_skipped


def rerank(run: Run, setup: Setup, listings: Listings, rounds: SearchRounds | None) -> DataFrame | None:
    """The re-ranker's probability of every candidate of the final search (None when off)."""
    if setup.reranker is None or rounds is None:
        return None
    with run.timer.stage("rerank") as c:
        frame = candidate_frame_spark(
            rounds.first_nbrs,
            rounds.nbrs,
            listings.kept,  # posting_id, title, image_phash and the optional model / brand (issue 30; H30)
            run.cfg.index.k,
            run.cfg.rerank.min_score,
        )
        # each round's result is materialised without lineage: the frame joins the
        # searches several times, and every later stage would otherwise re-plan all of it
        scored = rerank_spark(frame, setup.reranker, cut=cut_lineage)
        c["candidates"] = scored.count()
        run.summary.signal_counts["reranked_pairs"] = c["candidates"]
    return scored


def extra_edges(run: Run, listings: Listings, embedded: Embedded, ph_pairs: DataFrame | None) -> list[DataFrame]:
    """The edges every attempt shares: pHash pairs and the optional one-signal searches."""
    cfg = run.cfg
    parts = [ph_pairs.select("src", "dst", "score")] if ph_pairs is not None else []
    quantizers: dict[str, Quantizer] = {}
    n_emb = run.summary.rows_embedded
    for s in listings.layout_weights:
        u = getattr(cfg.union, s)
        if u.enabled and n_emb:
            one = embedded.sig.where(F.col(f"v_{s}").isNotNull()).select("posting_id", F.col(f"v_{s}").alias("emb"))
            s_nbrs = neighbours_for(one, cfg, n_emb, run.timer, suffix=f"_{s}", quantizers=quantizers, space=s)
            mc = MatchConf(threshold=u.threshold, min2=u.min2, min2_threshold=u.min2_threshold)
            parts.append(select_edges(s_nbrs, mc))
    return parts


def group(
    run: Run,
    setup: Setup,
    listings: Listings,
    rounds: SearchRounds | None,
    scored: DataFrame | None,
    extra: list[DataFrame],
) -> tuple[DataFrame, DataFrame, Health, MatchConf]:
    """Edges -> components -> health, with the re-ranker's rule; redone with the threshold rule
    when the re-ranker's run is flagged (``rerank.fallback: rule``). The rule is the one applied."""
    cfg, summary = run.cfg, run.summary
    if rounds is not None and not _graph_on_driver(run, setup, listings, scored is not None, cfg.match, extra):
        last_frame(run.spark, rounds, cfg.index.k, run.keep)  # the Spark stages read the top k
    nbrs = rounds.nbrs if rounds is not None else None
    lists = rounds.lists[-1] if rounds is not None else None  # ranked: the rule reads a prefix of each
    driver = rounds.driver if rounds is not None else None  # set before the commit by the driver plan only
    edges, groups, health, rule = graph(
        run,
        listings,
        nbrs,
        scored,
        extra,
        setup,
        scored is not None,
        setup.health_ref,
        setup.health_note,
        lists=lists,
        driver=driver,
    )
    if scored is not None and health.warnings and cfg.rerank.fallback == "rule":
        # the catalog is unlike the re-ranker's training rows: the threshold rule decides
        refused = health
        log.warning(
            "the re-ranker's run is flagged (%s): edges and groups redone with the threshold rule "
            "(rerank.fallback: rule)",
            ",".join(refused.warning_codes),
        )
        rule_ref, rule_note = choose_reference(cfg.without_reranker())
        edges, groups, health, rule = graph(
            run, listings, nbrs, scored, extra, setup, False, rule_ref, rule_note, "_rule", lists=lists, driver=driver
        )
        health = with_fallback(health, refused)
        summary.signal_counts["rerank_fallback"] = 1
    if setup.rerank_note:
        health = dataclasses.replace(health, notes=[setup.rerank_note, *health.notes])
    summary.health = health
    return edges, groups, health, rule


def graph(
    run: Run,
    listings: Listings,
    nbrs: DataFrame | None,
    scored: DataFrame | None,
    extra: list[DataFrame],
    setup: Setup,
    use_reranker: bool,
    reference: HealthReference | None,
    note: str,
    suffix: str = "",
    lists: DataFrame | None = None,
    driver: Any = None,
) -> tuple[DataFrame, DataFrame, Health, MatchConf]:
    """Edges -> components (margin, guard) -> health, with the re-ranker's probabilities and
    rule or with the threshold rule on the fused score; and the rule applied (the titles model's
    thresholds prior-shifted to the catalog: graph/rerank.rerank_rule_spark). ``lists``: the last round's ranked lists,
    whose rows the threshold rule reads (search/rounds.rule_rows) instead of the whole top k;
    ``driver``: the driver plan's arrays (search/driver_night), whose prefixes the threshold rule
    reads in pandas (graph/edges.select_edges_match: the same edges) instead."""
    spark, cfg, timer, keep, summary = run.spark, run.cfg, run.timer, run.keep, run.summary
    kept = listings.kept
    vertices = kept.select("posting_id")
    rule, shift = rerank_rule_spark(cfg, setup.reranker, scored) if use_reranker else (cfg.match, "")
    margin = group_margin_of(cfg, setup.reranker) if use_reranker else cfg.guard.group_margin
    run.driver_graph = None
    with timer.stage("edges" + suffix) as c:
        parts = []
        if driver is not None and _graph_on_driver(run, setup, listings, use_reranker, rule, extra):
            # the driver plan's graph: the edges, groups and matches from its arrays (graph/driver_graph)
            run.driver_graph = _driver_edges(run, listings, driver, rule, extra)
            edges = keep(to_frame(spark, run.driver_graph.edge_table(), "src string, dst string, score float"))
            c["where"] = "driver"
        else:
            if use_reranker:
                parts.append(select_edges(scored, rule))
            elif driver is not None:  # the driver plan: the rule on its arrays' prefixes, on the driver
                rows = select_edges_match(rule_prefix(driver, cfg.index.k, rule), rule)
                parts.append(to_frame(spark, rows[["src", "dst", "score"]], "src string, dst string, score float"))
            elif nbrs is not None:
                rows = rule_rows(lists, cfg.index.k, rule) if lists is not None else nbrs
                parts.append(select_edges(rows, rule))
            edges = cut_lineage(_union_edges(spark, parts + extra))  # components, health, write
            if not use_reranker and rule.veto:  # the identifier veto on the rule's edges (match.veto)
                edges = cut_lineage(veto_edges(edges, kept, rule.veto_above))
        edge_stats = edge_counts(edges)  # matches a listing too, for the health check
        summary.n_edges = edge_stats["directed"] // 2  # both directions are stored
        c["edges"] = summary.n_edges

    with timer.stage("components" + suffix) as c:
        group_edges = edges  # the edges that group listings: the match edges, or those the margin keeps
        summary.signal_counts.pop("margin_cut", None)
        summary.signal_counts.pop("guard_levels", None)
        dg = run.driver_graph
        if dg is not None and cfg.components.on_driver(summary.rows_kept, 2 * summary.n_edges):
            # the margin, the components and the guard's re-cut on the driver graph's vertices
            groups = keep(_driver_groups(run, dg, rule, margin))
            c["where"] = "driver"
        else:
            run.driver_graph = None  # past the components' driver bounds: the matches are Spark's too
            if margin > 0 and summary.n_edges:
                group_edges = keep(margin_cut(edges, margin))
                n_margin = summary.n_edges - group_edges.count() // 2
                summary.signal_counts["margin_cut"] = n_margin
                c["margin_cut"] = n_margin
            if cfg.components.on_driver(summary.rows_kept, 2 * summary.n_edges):
                groups = keep(components_on_driver(vertices, group_edges.select("src", "dst")))
                c["where"] = "driver"
            else:
                groups = keep(connected_components(vertices, group_edges.select("src", "dst")))
                c["where"] = "spark"
            if setup.decisions is not None:  # a cannot-link cuts its group, a must-link joins two (graph/constraints)
                groups, group_edges, edges = setup.decisions.apply(
                    spark,
                    kept=kept,
                    groups=groups,
                    group_edges=group_edges,
                    edges=edges,
                    counts=summary.signal_counts,
                )
                groups = keep(groups)
            if cfg.guard.mode == "split":
                groups, levels = split_large(
                    spark,
                    groups,
                    group_edges,
                    base_threshold=rule.min2_threshold if rule.min2 else rule.threshold,
                    max_group=cfg.guard.max_group,
                    step=cfg.guard.step,
                    components_fn=connected_components,
                    driver_max_vertices=cfg.guard.driver_max_vertices,
                    driver_max_edges=cfg.guard.driver_max_edges,
                )
                groups = keep(groups)
                summary.signal_counts["guard_levels"] = levels
        group_stats = group_counts(groups)  # with the group-size histogram of the health check
        summary.n_groups = group_stats["groups"]
        summary.n_grouped = group_stats["grouped"]
        summary.n_singletons = group_stats["singletons"]
        summary.largest_group = group_stats["largest"]
        c.update(groups=summary.n_groups, singletons=summary.n_singletons)

    with timer.stage("health" + suffix) as c:
        health = run_health(
            cfg,
            kept=kept,
            edges=edges,
            groups=groups,
            pairs=nbrs,
            signals=signal_coverage(listings.counts, cfg, list(listings.layout_weights), reranker=use_reranker),
            dense_signals=list(listings.layout_weights),
            counts={"edge_stats": edge_stats, "group_stats": group_stats},
            guard_cut=summary.signal_counts.get("guard_levels", 0) > 0
            or summary.signal_counts.get("margin_cut", 0) > 0,
            reference=reference,
            reference_note=note,
        )
        c["health_warnings"] = len(health.warnings)
    if shift:  # the titles model's thresholds moved to this catalog's share of matches (issue 30)
        health = dataclasses.replace(health, notes=[*health.notes, shift])
    health = dataclasses.replace(health, edge_threshold=float(rule.threshold))  # the runs row's, as applied
    return edges, groups, health, rule


def _graph_on_driver(
    run: Run, setup: Setup, listings: Listings, use_reranker: bool, rule: MatchConf, extra: list[DataFrame]
) -> bool:
    """Whether the driver plan's night takes its edges, groups and matches from its arrays
    (graph/driver_graph.py): the threshold rule (no re-ranker, no identifier veto), no
    reviewers' decisions and no one-signal search to union (their Spark stages stay the Spark
    plan's), and a catalog the components stage labels on the driver."""
    cfg = run.cfg
    unions = any(getattr(cfg.union, s).enabled for s in listings.layout_weights)
    return (
        not use_reranker
        and not rule.veto
        and setup.decisions is None
        and not unions
        and len(extra) <= 1
        and cfg.components.on_driver(run.summary.rows_kept, 0)
    )


def _lists_on_driver(run: Run, setup: Setup, listings: Listings) -> bool:
    """Whether no stage after the driver plan's search reads its top ``k`` as a frame: the
    graph is the driver's (:func:`_graph_on_driver`, the threshold rule) and neither the
    ``candidates`` table nor the nightly review queue is written. A night whose graph falls
    back to Spark after all (too many edges for the driver) ships them then (``last_frame``)."""
    cfg = run.cfg
    return (
        _graph_on_driver(run, setup, listings, setup.reranker is not None, cfg.match, [])
        and not cfg.output.candidates
        and not cfg.review.nightly
    )


def _driver_edges(run: Run, listings: Listings, driver: Any, rule: MatchConf, extra: list[DataFrame]) -> DriverGraph:
    """The match edges on the driver: the threshold rule on the arrays' prefixes
    (``rule_prefix`` + graph/edges.select_edges_match) and the pHash pairs (``extra``, the
    pHash stage's: a few rows a listing), their union on every kept listing's vertex."""
    kept = listings.kept_hashes()
    ids = np.asarray(sorted(set(kept["posting_id"])), dtype=object)
    phash = np.full(len(ids), None, dtype=object)
    phash[codes_of(ids, kept["posting_id"])] = kept["h"].astype(object).where(kept["h"].notna(), None).to_numpy()
    rows_of = codes_of(ids, driver.ids)  # each array row's vertex: the rule sorts integers, in posting_id order
    rows = select_edges_match(rule_prefix(driver, run.cfg.index.k, rule, labels=rows_of), rule)
    rule_part = (rows["src"].to_numpy(np.int64), rows["dst"].to_numpy(np.int64), rows["score"].to_numpy(np.float32))
    parts = [rule_part]
    ph = union_edges(len(ids), [])
    if extra:
        pdf = extra[0].select("src", "dst", "score").toPandas()
        ph = union_edges(len(ids), [(codes_of(ids, pdf["src"]), codes_of(ids, pdf["dst"]), pdf["score"].to_numpy())])
        parts.append((ph.src, ph.dst, ph.score))
    edges = union_edges(len(ids), parts)
    return DriverGraph(ids, phash, codes_of(driver.ids, ids), edges, ph)


def _driver_groups(run: Run, dg: DriverGraph, rule: MatchConf, margin: float) -> DataFrame:
    """The components stage on the driver graph: the group margin, the components, the guard's
    re-cut (graph/driver_graph.group_codes); the groups as a frame (the health check's)."""
    cfg, summary = run.cfg, run.summary
    split = cfg.guard.mode == "split"
    dg.groups, n_cut, levels = group_codes(
        len(dg.ids),
        dg.edges,
        margin=margin,
        guard=split,
        base_threshold=rule.min2_threshold if rule.min2 else rule.threshold,
        max_group=cfg.guard.max_group,
        step=cfg.guard.step,
    )
    if margin > 0 and summary.n_edges:
        summary.signal_counts["margin_cut"] = n_cut // 2
    if split:
        summary.signal_counts["guard_levels"] = levels
    summary.signal_counts["graph_driver"] = 1
    return to_frame(run.spark, dg.group_frame(), "posting_id string, group_id string, group_size int")


def _driver_matches(run: Run, matched: Matched, dg: DriverGraph) -> pa.Table:
    """The ``matches`` rows of a driver-graph night with their explanations, built on the
    driver (graph/driver_graph: graph/explain.explain_pairs on the match edges, the scores
    from the arrays' last round and the pHash pairs, the fused vectors from round 0's)."""
    drv = matched.rounds.driver
    last = drv.rounds[-1]
    kk = min(run.cfg.index.k, last.ids.shape[1])
    vectors = drv.rounds[0].vectors if run.summary.rows_embedded else None
    rule = EdgeRule.of(run.cfg, matched.rule, matched.reranked)
    explained = dg.explained(last.ids[:, :kk], last.scores[:, :kk], vectors, matched.embedded.layout, rule)
    return match_table(dg.ids, explained, run.summary.run_id, normalize_arrow_schema(OUTPUT_DATA_SCHEMAS["matches"]))


def stable_ids(run: Run, groups: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Tonight's groups keep the ids of the previous night's they continue (graph/lineage.py),
    and the night's ``group_changes``: on the driver (pandas) for a catalog the components stage
    would label there, else as Spark joins; a first night's ids are its components' own."""
    spark, summary = run.spark, run.summary
    with run.timer.stage("lineage") as c:
        prev_date, prev = previous_clusters(spark, run.sink, run.run_date)
        if prev is None:  # a first night: every group is new
            ids, changes = groups.select("posting_id", "group_id", "group_size"), first_night_changes(groups)
            kinds = {"new": summary.n_groups}
            c["where"] = "first night"
        elif run.cfg.components.on_driver(summary.rows_kept, 0):
            dg = run.driver_graph
            ids_pd, changes_pd = assign_ids(
                dg.group_frame()[["posting_id", "group_id"]]
                if dg is not None and dg.groups is not None
                else groups.select("posting_id", "group_id").toPandas(),
                prev.toPandas(),
                run.run_date,
                prev_date,
            )
            ids = run.keep(to_frame(spark, ids_pd, "posting_id string, group_id string, group_size int"))
            changes = run.keep(to_frame(spark, changes_pd.astype(object).where(changes_pd.notna(), None), CHANGES_DDL))
            kinds = change_counts(changes_pd)
            c["where"] = "driver"
        else:
            ids, changes = assign_ids_spark(groups, prev, run.run_date, prev_date)
            ids = run.keep(cut_lineage(ids))
            check_unique(ids, run.run_date)
            changes = run.keep(cut_lineage(changes))
            kinds = {r["kind"]: int(r["count"]) for r in changes.groupBy("kind").count().collect()}
            c["where"] = "spark"
        for kind in CHANGE_KINDS:
            summary.signal_counts[f"groups_{kind.split('-')[0]}"] = kinds.get(kind, 0)
        c.update(previous=prev_date or "none", **{k.split("-")[0]: v for k, v in kinds.items() if v})
    return ids, changes


def commit(run: Run, setup: Setup, listings: Listings, night: Night, matched: Matched) -> None:
    """Stage every table, check them all, then commit: the data tables, the match state, the
    embeddings cache. A failure before the first commit leaves every table as it was."""
    spark, cfg, sink, summary, run_date = run.spark, run.cfg, run.sink, run.summary, run.run_date
    rounds = matched.rounds
    if night.keeps_state and rounds is not None and rounds.driver is None and _driver_plan(run):
        with run.timer.stage("state") as c:  # the Spark plan's rounds as the driver plan's arrays
            rounds.driver = state_of_rounds(rounds, _depth(cfg), cfg.index.nprobe)  # with each one's probes
            c["listings"] = rounds.driver.n
    if run.driver_graph is None and rounds is not None:  # a graph that fell back to Spark: its matches read the top k
        last_frame(spark, rounds, cfg.index.k, run.keep)
        if matched.embedded.partial and rounds.driver is not None:  # ... and every listing's fused vector
            matched.embedded.emb = run.keep(vectors_frame(spark, rounds.driver))
            matched.embedded.partial = False
    with run.timer.stage("write") as c:
        fail = cfg.testing.fail_once_stage
        run_id = F.lit(summary.run_id).alias(RUN_ID_COLUMN)

        def stage(df: DataFrame, table: str):  # the table's columns in order, the run's id last
            cols = [c for c in OUTPUT_DATA_SCHEMAS[table].names if c != RUN_ID_COLUMN]
            return sink.stage(
                df.select(*cols, run_id), table, run_date, fail_stage=fail, added_columns=ADDED_COLUMNS[table]
            )

        rounds = matched.rounds
        nbrs = rounds.nbrs if rounds is not None else None
        dg = run.driver_graph
        if cfg.output.explanations and dg is not None and dg.groups is not None:  # built on the driver
            staged = {
                "matches": sink.stage_arrow(
                    _driver_matches(run, matched, dg),
                    "matches",
                    run_date,
                    fail_stage=fail,
                    added_columns=ADDED_COLUMNS["matches"],
                )
            }
            c["matches"] = "driver"
        elif cfg.output.explanations:  # with why each match was kept (graph/explain)
            staged = {"matches": stage(matches_of_run(run, setup, listings, matched), "matches")}
        else:
            staged = {
                "matches": stage(unexplained_match_sets(matched.edges, listings.kept.select("posting_id")), "matches")
            }
        staged["clusters"] = stage(matched.groups, "clusters")
        staged["rejects"] = stage(listings.rejects, "rejects")
        staged["group_changes"] = stage(matched.changes, "group_changes")
        if cfg.output.candidates and nbrs is not None:
            cand = candidate_scores(
                nbrs.where(F.col("score") >= F.lit(cfg.output.candidates_min_score)),
                matched.embedded.emb,
                matched.embedded.layout,
                matched.ph_pairs,
                rerank_scores=matched.scored,
            )
            staged["candidates"] = stage(cand, "candidates")
        elif sink.table_exists("candidates"):  # an earlier run's candidates of the date go too
            staged["candidates"] = sink.stage_empty(
                "candidates", run_date, OUTPUT_DATA_SCHEMAS["candidates"], added_columns=ADDED_COLUMNS["candidates"]
            )
        state = stage_state(run, night, matched) if night.keeps_state else {}
        cache, cache_staged = matched.embedded.cache, matched.embedded.cache_staged
        # every table (and the runs row to come) must fit before the first one moves
        sink.check([*staged.values(), *state.values()])
        if cache is not None:
            cache.check(cache_staged)
        check_runs_table(spark, sink)
        if state:  # two runs must not update one state at once
            check_state_unmoved(sink, run_date, setup.state_seen or set())
        for name, s in [*staged.items(), *state.items()]:
            try:
                res = sink.commit(s, crash_before_commit=cfg.testing.crash_before_commit)
            except Exception as e:
                if not summary.table_versions:
                    raise
                raise SinkError(
                    f"committing table '{name}' failed after {_versions(summary.table_versions)} were "
                    f"committed: {first_line(e)}; the date's tables are inconsistent until it is rerun"
                ) from e
            summary.table_versions[name] = res.version
        if state:
            summary.table_versions[STATE_LOG] = log_state(run, night, matched)
            prune_state(sink, previous_date(sink, run_date) or run_date)
            prune_states(run.warehouse, previous_date(sink, run_date) or run_date)
        c["tables"] = len(staged) + len(state)
        if cache_staged:  # after the data: a cache that failed to land costs the next run time, no data
            try:
                summary.table_versions.update(cache.commit(cache_staged))
            except Exception as e:  # noqa: BLE001
                summary.cache_error = first_line(e)
                log.warning("the embeddings cache was not committed (the next run recomputes): %s", e)


def record(run: Run, started: dt.datetime) -> None:
    """The ``runs`` row of a run whose tables are committed."""
    summary = run.summary
    summary.stage_seconds = {k: round(v, 3) for k, v in run.timer.seconds.items()}
    try:
        summary.table_versions["runs"] = write_run_row(
            run.spark, run.sink, summary, run.cfg, run.input_path, started, status="succeeded"
        )
    except Exception as e:
        raise RunRecordError(
            f"the data tables were committed ({_versions(summary.table_versions)}) but the runs row was "
            f"not recorded: {first_line(e)}; rerun {run.run_date} to record it (the rerun replaces the "
            "date's partitions: idempotent)"
        ) from e


def stage_state(run: Run, night: Night, matched: Matched) -> dict[str, StagedWrite]:
    """The match state tonight leaves for the next night (docs/incremental.md): the listings'
    digests, each round's lists at depth and each blending round's vectors; a full night also
    writes its epoch's files (the idf and the quantizer it fitted). None without a search."""
    rounds = matched.rounds
    if rounds is None:
        return {}
    sink, run_date, fail = run.sink, run.run_date, run.cfg.testing.fail_once_stage
    if not night.incremental:
        night.epoch = Epoch(
            epoch_id=f"{run_date}.{run.summary.run_id[:12]}",
            started=run_date,
            reason=night.plan.reason,
            fingerprint=night.fingerprint,
            listings=run.summary.rows_embedded,
            centroids=rounds.quantizer.centroids,
            idf=matched.embedded.idf,
        )
        save_epoch(run.warehouse, night.epoch)
    rid = F.lit(run.summary.run_id).alias("run_id")
    staged = {
        "listing_state": sink.stage(
            night.digests.select("posting_id", "digest", "phash", rid),
            "listing_state",
            run_date,
            added_columns=STATE_ADDED_COLUMNS["listing_state"],
        )
    }
    if rounds.driver is not None:  # the lists and vectors as files, read through this night's state_log row
        save_state(run.warehouse, run_date, run.summary.run_id, rounds.driver)
        for t in ("neighbours", "vectors"):
            staged[t] = sink.stage_empty(t, run_date, STATE_SCHEMAS[t], added_columns=STATE_ADDED_COLUMNS.get(t, ()))
        return _stage_phash_pairs(run, matched, staged, rid)
    lists = None
    for r, df in enumerate(rounds.lists):
        one = ranked(df).select(F.lit(r).cast("int").alias("round"), "src", "dst", "score", "rank", rid)
        lists = one if lists is None else lists.unionByName(one)
    staged["neighbours"] = sink.stage(
        lists, "neighbours", run_date, fail_stage=fail, added_columns=STATE_ADDED_COLUMNS["neighbours"]
    )
    if len(rounds.vectors) > 1:
        vecs = None
        for r, df in enumerate(rounds.vectors[1:], start=1):
            one = df.select(F.lit(r).cast("int").alias("round"), "posting_id", "emb", rid)
            vecs = one if vecs is None else vecs.unionByName(one)
        staged["vectors"] = sink.stage(vecs, "vectors", run_date, fail_stage=fail)
    else:
        staged["vectors"] = sink.stage_empty("vectors", run_date, STATE_SCHEMAS["vectors"])
    return _stage_phash_pairs(run, matched, staged, rid)


def _stage_phash_pairs(run: Run, matched: Matched, staged: dict[str, StagedWrite], rid) -> dict[str, StagedWrite]:
    """The night's pHash pairs, each once; none with pHash off (the settings fingerprint has it)."""
    sink, run_date, fail = run.sink, run.run_date, run.cfg.testing.fail_once_stage
    if matched.ph_pairs is not None:
        one = matched.ph_pairs.where(F.col("src") < F.col("dst")).select("src", "dst", "bits", rid)
        staged["phash_pairs"] = sink.stage(one, "phash_pairs", run_date, fail_stage=fail)
    else:
        staged["phash_pairs"] = sink.stage_empty("phash_pairs", run_date, STATE_SCHEMAS["phash_pairs"])
    return staged


def log_state(run: Run, night: Night, matched: Matched) -> int:
    """Append tonight's ``state_log`` row (the state the next night continues); its version."""
    counts = night.delta_counts if night.incremental else {}
    rc = matched.rounds.counts if matched.rounds is not None else {}
    row = (
        run.summary.run_id,
        night.plan.base.run_date if night.incremental else None,
        night.epoch.epoch_id,
        night.plan.kind,
        night.plan.reason,
        *(counts.get(k) for k in DELTA_KINDS),
        rc.get("searched"),
        rc.get("stale"),
        dt.datetime.now(dt.timezone.utc),
    )
    return append_state_log(run.sink, run.run_date, row)
