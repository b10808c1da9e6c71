"""The dedup job, stage by stage. Spark I/O stays here and in the stage wrappers; every
algorithm lives in its own module as a pure function with a thin Spark layer.

    ingest -> embed -> index + search -> (INB rounds: blend -> index + search) -> edges
           -> connected components -> stage tables -> commit (one Delta transaction per table)

All four tables are staged (files written by executors) before any is committed, so a
failure in any compute stage leaves every table at its previous version. Before the first
commit every staged table, and the ``runs`` row to come, is checked against its existing
table (schema, partitioning), so a schema error cannot leave one table new and the next old.
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
from listing_dedup.errors import DedupError, RunRecordError, SinkError, first_line
from listing_dedup.frames import empty_pairs_spark
from listing_dedup.graph.components import components_on_driver, connected_components, cut_lineage
from listing_dedup.graph.edges import match_sets, select_edges, veto_edges
from listing_dedup.graph.guard import margin_cut, split_large
from listing_dedup.graph.rerank import (
    candidate_frame_spark,
    for_coverage,
    group_margin_of,
    rerank_spark,
    reranker_for,
)
from listing_dedup.ingest.images import image_roots_for
from listing_dedup.ingest.reader import check_kept_rows, check_row_count, read_listings
from listing_dedup.quality.health import Health, HealthReference, decide, with_fallback
from listing_dedup.quality.run_health import (
    choose_reference,
    edge_counts,
    group_counts,
    health_inputs_spark,
    limits_of,
    listing_counts,
    signal_coverage,
)
from listing_dedup.search.blender import blend
from listing_dedup.search.indexer import Quantizer, build_index, search, train
from listing_dedup.search.phash_match import phash_found, split_found
from listing_dedup.sink.cache import (
    CachedSignal,
    EmbeddingCache,
    content_digest_column,
    fingerprint_column,
    image_digest_column,
    need_column,
)
from listing_dedup.sink.decisions import Decisions
from listing_dedup.sink.delta import DeltaSink
from listing_dedup.sink.runs import RunSummary, check_runs_table, last_succeeded_run, write_run_row
from listing_dedup.sink.schemas import ADDED_COLUMNS, OUTPUT_DATA_SCHEMAS, RUN_ID_COLUMN
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
    for t in ("matches", "clusters", "rejects", "candidates"):
        sink.check_schema(t, OUTPUT_DATA_SCHEMAS[t], added_columns=ADDED_COLUMNS[t])
    check_runs_table(spark, sink)


def _versions(table_versions: dict[str, int]) -> str:
    return ", ".join(f"{t} version {v}" for t, v in table_versions.items())


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
        # fail fast on a bad model directory or a pipeline it was not trained for; the built-in
        # one on other settings: none, and the note says why (the threshold rule decides)
        reranker, rerank_note = reranker_for(cfg)
        if rerank_note:
            log.warning("%s", rerank_note)
        # the re-ranker's reference, the defaults' or none
        health_ref, health_note = choose_reference(cfg if reranker is not None else cfg.without_reranker())
        check_output_tables(spark, sink, cfg)  # fail fast on a table another writer changed
        # reviewers' verdicts (listing-dedup decide), read once; applied after the components
        decisions = Decisions.read(warehouse) if cfg.decisions.enabled else None

        with timer.stage("ingest") as c:
            ing = read_listings(spark, input_path, cfg.input)
            persisted.extend(ing.cached)
            summary.rows_in = ing.rows_in()
            previous = last_succeeded_run(sink)
            check_row_count(
                summary.rows_in,
                cfg.input,
                previous_rows=previous.rows_in if previous else None,
                previous_run=previous.describe() if previous else "",
                path=input_path,
            )
            kept = keep(ing.kept)
            rejects = keep(ing.rejects)
            kept_counts = listing_counts(kept, has_image=ing.has_image_column)  # also the health's signals
            summary.rows_kept = kept_counts["n"]
            # the built-in re-ranker for the catalog's signals: the titles-only one where pHash is rare
            cfg, coverage_note = for_coverage(cfg, kept_counts["phash"] / kept_counts["n"] if kept_counts["n"] else 0.0)
            if coverage_note:
                log.info("%s", coverage_note)
                reranker, rerank_note = reranker_for(cfg)
                health_ref, health_note = choose_reference(cfg if reranker is not None else cfg.without_reranker())
                rerank_note = rerank_note or coverage_note
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
                path=input_path,
            )
            if summary.rows_in == 0:  # accepted by input.allow_empty / --allow-empty
                log.warning("input %s holds no rows: the %s partitions will be empty", input_path, run_date)

        signals = _run_signals(cfg, ing.has_image_column)
        image_root = image_roots_for(input_path, cfg.input)  # the roots image files are read below
        layout_weights = cfg.fusion.weights(signals)
        cache = _embeddings_cache(cfg, warehouse, summary.run_id, builder, spark)
        cache_staged: list = []  # the cache's staged writes (embed stage), committed after the data tables
        with timer.stage("embed") as c:
            sig = kept.where(F.length("title") > 0).select("posting_id", "title")
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
                )
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
                    idf = fit_idf_counts(sig, "lex_counts", params)
                    step("idf")
                    idf_bc = spark.sparkContext.broadcast(idf)
                    if keep_sig:
                        sig = embed_lexical_counts(sig, "lex_counts", "v_lexical", params, idf_bc, fail_stage=fail)
                        sig = sig.drop("lex_counts")
                    else:  # projected inside the fusion's pass: the vectors never go back to the JVM alone
                        columns["lexical"] = "lex_counts"
                        transforms["lexical"] = counts_to_vectors(params, idf_bc, fail_stage=fail)
                else:
                    idf = fit_idf(kept.where(F.length("title") > 0), "title", params)
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
        fused_raw = emb

        n_emb = summary.rows_embedded
        quantizers: dict[str, Quantizer] = {}  # trained once a vector space, reused by the INB rounds
        nbrs = neighbours_for(emb, cfg, n_emb, timer, quantizers=quantizers) if n_emb else None
        first_nbrs = nbrs  # the pre-INB search (the re-ranker's raw_score)
        for r, threshold in enumerate(cfg.inb.thresholds, start=1):
            if nbrs is None:
                break
            with timer.stage(f"blend{r}") as c:
                emb = keep(blend(emb, nbrs, threshold))
                c["blended"] = emb.count()
            nbrs = neighbours_for(emb, cfg, n_emb, timer, suffix=str(r), quantizers=quantizers)

        ph_pairs = None
        if cfg.phash.enabled:
            with timer.stage("phash") as c:
                # image_phash: given, or computed by the reader from the image (one decode)
                ph_src = kept.select("posting_id", F.col("image_phash").alias("phash"))
                # one pass finds the pairs and the listings of skipped blocks; banding by catalog size
                found = keep(phash_found(ph_src, cfg.phash.max_bits, cfg.phash.max_bucket, n_rows=summary.rows_kept))
                ph_pairs, skipped = split_found(found)
                ph_pairs = keep(ph_pairs)
                summary.signal_counts["phash_pairs"] = ph_pairs.count() // 2
                summary.signal_counts["phash_skipped"] = skipped.count()
                c.update(pairs=summary.signal_counts["phash_pairs"], skipped=summary.signal_counts["phash_skipped"])

        vertices = kept.select("posting_id")
        scored = None
        if reranker is not None and nbrs is not None:
            with timer.stage("rerank") as c:
                frame = candidate_frame_spark(
                    first_nbrs,
                    nbrs,
                    kept.select("posting_id", "title", "image_phash"),
                    cfg.index.k,
                    cfg.rerank.min_score,
                )
                # each round's result is materialised without lineage: the frame joins the
                # searches several times, and every later stage would otherwise re-plan all of it
                scored = rerank_spark(frame, reranker, cut=cut_lineage)
                c["candidates"] = scored.count()
                summary.signal_counts["reranked_pairs"] = c["candidates"]
        # the edges every attempt shares: pHash pairs and the optional one-signal searches
        extra_parts = [ph_pairs.select("src", "dst", "score")] if ph_pairs is not None else []
        for s in layout_weights:
            u = getattr(cfg.union, s)
            if u.enabled and n_emb:
                one = sig.where(F.col(f"v_{s}").isNotNull()).select("posting_id", F.col(f"v_{s}").alias("emb"))
                s_nbrs = neighbours_for(one, cfg, n_emb, timer, suffix=f"_{s}", quantizers=quantizers, space=s)
                mc = MatchConf(threshold=u.threshold, min2=u.min2, min2_threshold=u.min2_threshold)
                extra_parts.append(select_edges(s_nbrs, mc))

        def graph(use_reranker: bool, reference: HealthReference | None, note: str, suffix: str = ""):
            """Edges -> components (margin, guard) -> health, with the re-ranker's probabilities
            and rule or with the threshold rule on the fused score."""
            rule = cfg.rerank.match() if use_reranker else cfg.match
            margin = group_margin_of(cfg, reranker) if use_reranker else cfg.guard.group_margin
            with timer.stage("edges" + suffix) as c:
                parts = []
                if use_reranker:
                    parts.append(select_edges(scored, rule))
                elif nbrs is not None:
                    parts.append(select_edges(nbrs, rule))
                edges = cut_lineage(_union_edges(spark, parts + extra_parts))  # components, health, write
                if not use_reranker and rule.veto:  # the identifier veto on the rule's edges (match.veto)
                    edges = cut_lineage(veto_edges(edges, kept, rule.veto_above))
                edge_stats = edge_counts(edges)  # matches a listing too, for the health check
                summary.n_edges = edge_stats["directed"] // 2  # both directions are stored
                c["edges"] = summary.n_edges

            with timer.stage("components" + suffix) as c:
                group_edges = edges  # the edges that group listings: the match edges, or those the margin keeps
                summary.signal_counts.pop("margin_cut", None)
                summary.signal_counts.pop("guard_levels", None)
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
                if decisions is not None:  # a cannot-link cuts its group, a must-link joins two (graph/constraints)
                    groups, group_edges, edges = decisions.apply(
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
                    signals=signal_coverage(kept_counts, cfg, list(layout_weights), reranker=use_reranker),
                    dense_signals=list(layout_weights),
                    counts={"edge_stats": edge_stats, "group_stats": group_stats},
                    guard_cut=summary.signal_counts.get("guard_levels", 0) > 0
                    or summary.signal_counts.get("margin_cut", 0) > 0,
                    reference=reference,
                    reference_note=note,
                )
                c["health_warnings"] = len(health.warnings)
            return edges, groups, health

        edges, groups, summary.health = graph(scored is not None, health_ref, health_note)
        if scored is not None and summary.health.warnings and cfg.rerank.fallback == "rule":
            # the catalog is unlike the re-ranker's training rows: the threshold rule decides
            refused = summary.health
            log.warning(
                "the re-ranker's run is flagged (%s): edges and groups redone with the threshold rule "
                "(rerank.fallback: rule)",
                ",".join(refused.warning_codes),
            )
            rule_ref, rule_note = choose_reference(cfg.without_reranker())
            edges, groups, health = graph(False, rule_ref, rule_note, suffix="_rule")
            summary.health = with_fallback(health, refused)
            summary.signal_counts["rerank_fallback"] = 1
        if rerank_note:
            summary.health = dataclasses.replace(summary.health, notes=[rerank_note, *summary.health.notes])

        with timer.stage("write") as c:
            fail = cfg.testing.fail_once_stage
            run_id = F.lit(summary.run_id).alias(RUN_ID_COLUMN)

            def stage(df: DataFrame, table: str):  # the table's columns in order, the run's id last
                cols = [c for c in OUTPUT_DATA_SCHEMAS[table].names if c != RUN_ID_COLUMN]
                return sink.stage(
                    df.select(*cols, run_id), table, run_date, fail_stage=fail, added_columns=ADDED_COLUMNS[table]
                )

            matches = match_sets(edges, vertices)
            staged = {"matches": stage(matches, "matches"), "clusters": stage(groups, "clusters")}
            staged["rejects"] = stage(rejects, "rejects")
            if cfg.output.candidates and nbrs is not None:
                cand = candidate_scores(
                    nbrs.where(F.col("score") >= F.lit(cfg.output.candidates_min_score)),
                    fused_raw,
                    layout,
                    ph_pairs,
                    rerank_scores=scored,
                )
                staged["candidates"] = stage(cand, "candidates")
            elif sink.table_exists("candidates"):  # an earlier run's candidates of the date go too
                staged["candidates"] = sink.stage_empty(
                    "candidates", run_date, OUTPUT_DATA_SCHEMAS["candidates"], added_columns=ADDED_COLUMNS["candidates"]
                )
            # every table (and the runs row to come) must fit before the first one moves
            sink.check(staged.values())
            if cache is not None:
                cache.check(cache_staged)
            check_runs_table(spark, sink)
            for name in staged:
                try:
                    res = sink.commit(staged[name], crash_before_commit=cfg.testing.crash_before_commit)
                except Exception as e:
                    if not summary.table_versions:
                        raise
                    raise SinkError(
                        f"committing table '{name}' failed after {_versions(summary.table_versions)} were "
                        f"committed: {first_line(e)}; the date's tables are inconsistent until it is rerun"
                    ) from e
                summary.table_versions[name] = res.version
            c["tables"] = len(staged)
            if cache_staged:  # after the data: a cache that failed to land costs the next run time, no data
                try:
                    summary.table_versions.update(cache.commit(cache_staged))
                except Exception as e:  # noqa: BLE001
                    summary.cache_error = first_line(e)
                    log.warning("the embeddings cache was not committed (the next run recomputes): %s", e)

        summary.stage_seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
        try:
            summary.table_versions["runs"] = write_run_row(
                spark, sink, summary, cfg, input_path, started, status="succeeded"
            )
        except Exception as e:
            raise RunRecordError(
                f"the data tables were committed ({_versions(summary.table_versions)}) but the runs row was "
                f"not recorded: {first_line(e)}; rerun {run_date} to record it (the rerun replaces the "
                "date's partitions: idempotent)"
            ) from e
        return summary
    except RunRecordError:
        raise  # the data is committed and good: a "failed" row would say otherwise
    except Exception as e:
        summary.stage_seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
        if not cfg.testing.crash_before_commit:  # a simulated driver crash writes nothing at all
            try:
                write_run_row(spark, sink, summary, cfg, input_path, started, status="failed", error=str(e))
            except Exception:  # noqa: BLE001 - never mask the original failure
                log.warning("could not record the failed run in the runs table", exc_info=True)
        raise
    finally:
        for df in persisted:
            df.unpersist()
