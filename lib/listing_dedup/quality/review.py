"""The review queue: the candidate pairs whose verdict a person should give first.

A reviewer's time goes furthest on pairs the job is least sure of, or whose verdict moves the
most listings. :func:`review_queue` ranks candidate pairs (pure pandas) by

* ``near_threshold``: closeness of the pair's probability (the re-ranker's; the fused score
  under the threshold rule) to the edge threshold, 1 at the threshold and 0 at 0 or 1;
* ``guard_cut``: a match edge whose two ends ended in different groups (the group margin or
  the guard cut it): +1;
* ``new_merge``: a pair of one group tonight whose ends were in two different groups of at
  least two listings the night before (a merge of two established groups): +1;

the priority being their sum, ties broken by the listings the verdict would move (the two groups'
sizes), then by the ids. Pairs already decided are left out; at most ``max_pairs`` are kept.
``bench/review.py`` measures the queue against random review with a simulated reviewer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

QUEUE_COLUMNS = (
    "rank",
    "posting_id_a",
    "posting_id_b",
    "probability",
    "priority",
    "reason",
    "group_a",
    "group_b",
    "group_size_a",
    "group_size_b",
)


def review_queue(
    pairs: pd.DataFrame,
    groups: Mapping,
    *,
    threshold: float,
    max_pairs: int,
    prev_groups: Mapping | None = None,
    decided: Iterable[tuple] = (),
) -> pd.DataFrame:
    """The ranked queue (columns :data:`QUEUE_COLUMNS`, then any other column of ``pairs``, e.g.
    titles, image paths and per-signal scores, carried through).

    ``pairs``: candidate pairs ``a``, ``b`` (ids, either order, a pair may repeat: its highest
    ``probability`` is kept), ``probability`` and ``edge`` (bool: the pair is a match edge).
    ``groups`` / ``prev_groups``: id -> group id tonight / the night before. ``decided``: pairs
    ``(a, b)`` (either order) with a verdict already."""
    if max_pairs < 0:
        raise ValueError(f"max_pairs must be >= 0, got {max_pairs}")
    p = pairs.copy()
    lo = np.where(p["a"] < p["b"], p["a"], p["b"])
    hi = np.where(p["a"] < p["b"], p["b"], p["a"])
    p["posting_id_a"], p["posting_id_b"] = lo, hi
    p = p[p["posting_id_a"] != p["posting_id_b"]]
    p = p.sort_values("probability", ascending=False, kind="mergesort")
    p = p.drop_duplicates(["posting_id_a", "posting_id_b"]).drop(columns=["a", "b"])
    done = {(min(a, b), max(a, b)) for a, b in decided}
    if done:
        key = list(zip(p["posting_id_a"], p["posting_id_b"]))
        p = p[[k not in done for k in key]]
    g = pd.Series(groups)
    size = g.map(g.value_counts())
    p["group_a"] = p["posting_id_a"].map(g)
    p["group_b"] = p["posting_id_b"].map(g)
    p["group_size_a"] = p["posting_id_a"].map(size).fillna(1).astype(np.int64)
    p["group_size_b"] = p["posting_id_b"].map(size).fillna(1).astype(np.int64)
    span = max(threshold, 1.0 - threshold, 1e-9)
    near = (1.0 - (p["probability"].astype(np.float64) - threshold).abs() / span).clip(0.0, 1.0)
    cut = p["edge"].astype(bool) & (p["group_a"] != p["group_b"])
    merge = pd.Series(False, index=p.index)
    if prev_groups is not None:
        pg = pd.Series(prev_groups)
        psize = pg.map(pg.value_counts())
        pa, pb = p["posting_id_a"].map(pg), p["posting_id_b"].map(pg)
        established = (p["posting_id_a"].map(psize) >= 2) & (p["posting_id_b"].map(psize) >= 2)
        merge = (p["group_a"] == p["group_b"]) & pa.notna() & pb.notna() & (pa != pb) & established
    p["priority"] = near + cut.astype(float) + merge.astype(float)
    p["reason"] = np.where(merge, "new_merge", np.where(cut, "guard_cut", "near_threshold"))
    moved = np.where(p["group_a"] == p["group_b"], p["group_size_a"], p["group_size_a"] + p["group_size_b"])
    p = p.assign(_moved=moved).sort_values(
        ["priority", "_moved", "posting_id_a", "posting_id_b"], ascending=[False, False, True, True], kind="mergesort"
    )
    p = p.head(max_pairs).drop(columns=["_moved", "edge"]).reset_index(drop=True)
    p["rank"] = np.arange(1, len(p) + 1)
    rest = [c for c in p.columns if c not in QUEUE_COLUMNS]
    return p[list(QUEUE_COLUMNS) + rest]


# --------------------------------------------------------------------------- Spark (the nightly job)


def review_queue_spark(
    pairs,
    groups,
    *,
    threshold: float,
    max_pairs: int,
    prev_groups=None,
    decided: Iterable[tuple] = (),
) -> pd.DataFrame:
    """:func:`review_queue` over Spark frames, the top ``max_pairs`` collected (pandas, the
    columns :data:`QUEUE_COLUMNS`): ``pairs`` (``a``, ``b``, ``probability``, ``edge``),
    ``groups`` / ``prev_groups`` (``posting_id``, ``group_id``). The same ranking: only the
    queue's rows reach the driver, not the night's candidates."""
    from pyspark.sql import functions as F

    if max_pairs < 0:
        raise ValueError(f"max_pairs must be >= 0, got {max_pairs}")
    spark = pairs.sparkSession
    p = pairs.where(F.col("a") != F.col("b")).select(
        F.least("a", "b").alias("posting_id_a"),
        F.greatest("a", "b").alias("posting_id_b"),
        F.struct(F.col("probability").cast("double").alias("p"), F.col("edge").cast("boolean").alias("e")).alias("_s"),
    )
    p = p.groupBy("posting_id_a", "posting_id_b").agg(F.max("_s").alias("_s"))
    p = p.select("posting_id_a", "posting_id_b", F.col("_s.p").alias("probability"), F.col("_s.e").alias("edge"))
    done = sorted({(min(a, b), max(a, b)) for a, b in decided})
    if done:
        d = spark.createDataFrame(
            pd.DataFrame(done, columns=["posting_id_a", "posting_id_b"]), "posting_id_a string, posting_id_b string"
        )
        p = p.join(F.broadcast(d), ["posting_id_a", "posting_id_b"], "left_anti")
    g = groups.select("posting_id", "group_id")
    sized = g.join(g.groupBy("group_id").count(), "group_id").select("posting_id", "group_id", "count")
    for side in ("a", "b"):
        p = p.join(
            sized.select(
                F.col("posting_id").alias(f"posting_id_{side}"),
                F.col("group_id").alias(f"group_{side}"),
                F.col("count").cast("long").alias(f"group_size_{side}"),
            ),
            f"posting_id_{side}",
            "left",
        ).withColumn(f"group_size_{side}", F.coalesce(f"group_size_{side}", F.lit(1).cast("long")))
    span = max(threshold, 1.0 - threshold, 1e-9)
    near = F.greatest(F.lit(0.0), F.least(F.lit(1.0), 1.0 - F.abs(F.col("probability") - F.lit(threshold)) / span))
    same = F.col("group_a") == F.col("group_b")
    cut = F.col("edge") & F.coalesce(~same, F.lit(False))
    merge = F.lit(False)
    if prev_groups is not None:
        pg = prev_groups.select("posting_id", "group_id")
        psized = pg.join(pg.groupBy("group_id").count(), "group_id")
        for side in ("a", "b"):
            p = p.join(
                psized.select(
                    F.col("posting_id").alias(f"posting_id_{side}"),
                    F.col("group_id").alias(f"_pg_{side}"),
                    F.col("count").alias(f"_ps_{side}"),
                ),
                f"posting_id_{side}",
                "left",
            )
        merge = F.coalesce(
            same & (F.col("_pg_a") != F.col("_pg_b")) & (F.col("_ps_a") >= 2) & (F.col("_ps_b") >= 2), F.lit(False)
        )
    p = p.withColumn("_cut", cut).withColumn("_merge", merge)
    p = p.withColumn("priority", near + F.col("_cut").cast("double") + F.col("_merge").cast("double"))
    p = p.withColumn(
        "reason", F.when(F.col("_merge"), "new_merge").when(F.col("_cut"), "guard_cut").otherwise("near_threshold")
    )
    moved = F.when(same, F.col("group_size_a")).otherwise(F.col("group_size_a") + F.col("group_size_b"))
    top = (
        p.withColumn("_moved", moved)
        .orderBy(F.col("priority").desc(), F.col("_moved").desc(), "posting_id_a", "posting_id_b")
        .limit(int(max_pairs))
        .select(*[c for c in QUEUE_COLUMNS if c != "rank"], "_moved")
        .toPandas()
    )
    top = top.sort_values(
        ["priority", "_moved", "posting_id_a", "posting_id_b"], ascending=[False, False, True, True], kind="mergesort"
    ).drop(columns="_moved")
    top["rank"] = np.arange(1, len(top) + 1)
    for c in ("group_size_a", "group_size_b"):
        top[c] = top[c].astype(np.int64)
    return top[list(QUEUE_COLUMNS)].reset_index(drop=True)


def nightly_queue(run, setup, listings, matched) -> int | None:
    """The night's ``review_queue`` written by the job itself (``review.nightly``), right after its
    commit: the rule's scored candidates (the re-ranker's probabilities where its edges were kept,
    else the search's fused scores) against its threshold, tonight's match edges and groups, the
    previous date's groups, the ``decisions`` pairs left out; titles, image paths (string
    ``image`` values) and per-signal scores of the queued pairs; at most ``review.max_pairs``.
    ``run``, ``setup``, ``listings``, ``matched``: the pipeline's stage objects. The data tables
    are committed by then: a failure here is a warning (``review_queue_failed``), never a failed
    run. Returns the table's version (None when off or failed)."""
    import logging

    from pyspark.sql import functions as F

    log = logging.getLogger(__name__)
    cfg, summary = run.cfg, run.summary
    if not cfg.review.nightly or matched.rounds is None:
        return None
    try:
        from listing_dedup.embed.fusion import candidate_scores
        from listing_dedup.sink.state import previous_clusters

        scored = matched.scored if matched.reranked else matched.rounds.nbrs
        threshold = float(matched.rule.threshold)  # as applied: the titles model's is prior-shifted
        edges = matched.edges.select("src", "dst").withColumn("edge", F.lit(True))
        pairs = (
            scored.select("src", "dst", F.col("score").alias("probability"))
            .join(edges, ["src", "dst"], "left")
            .select(
                F.col("src").alias("a"),
                F.col("dst").alias("b"),
                "probability",
                F.coalesce("edge", F.lit(False)).alias("edge"),
            )
        )
        _, prev = previous_clusters(run.spark, run.sink, run.run_date)
        decided = []
        if setup.decisions is not None:
            d = setup.decisions.latest
            decided = list(zip(d["posting_id_a"], d["posting_id_b"]))
        q = review_queue_spark(
            pairs,
            matched.groups,
            threshold=threshold,
            max_pairs=cfg.review.max_pairs,
            prev_groups=prev,
            decided=decided,
        )
        ids = sorted(set(q["posting_id_a"]) | set(q["posting_id_b"]))
        spark = run.spark
        ids_df = spark.createDataFrame(pd.DataFrame({"posting_id": ids}), "posting_id string")
        kept = listings.kept
        has_path = "image" in kept.columns and dict(kept.dtypes).get("image") == "string"
        image = F.col("image") if has_path else F.lit(None).cast("string")
        side = (
            kept.join(F.broadcast(ids_df), "posting_id").select("posting_id", "title", image.alias("image")).toPandas()
        )
        title, img = dict(zip(side["posting_id"], side["title"])), dict(zip(side["posting_id"], side["image"]))
        # both directions: the re-ranker scored a pair in the direction(s) the search proposed it
        fwd = pd.DataFrame({"src": q["posting_id_a"], "dst": q["posting_id_b"]})
        both = pd.concat([fwd, fwd.rename(columns={"src": "dst", "dst": "src"})], ignore_index=True)
        qpairs = spark.createDataFrame(both.assign(score=np.float32(0.0)), "src string, dst string, score float")
        sig = candidate_scores(
            qpairs, matched.embedded.emb, matched.embedded.layout, matched.ph_pairs, rerank_scores=matched.scored
        ).toPandas()
        maps: dict = {}
        for a, b, m in zip(sig["posting_id"], sig["candidate_id"], sig["signal_scores"]):
            key = (min(a, b), max(a, b))
            merged = maps.setdefault(key, {})
            for k, x in _as_dict(m).items():
                merged[k] = max(merged.get(k, x), x)
        for s in ("a", "b"):
            q[f"title_{s}"] = q[f"posting_id_{s}"].map(title)
            q[f"image_{s}"] = q[f"posting_id_{s}"].map(lambda x: img.get(x) if isinstance(img.get(x), str) else None)
        q["signal_scores"] = [maps.get((a, b), {}) for a, b in zip(q["posting_id_a"], q["posting_id_b"])]
        q["run_id"] = summary.run_id
        version = write_queue(run.warehouse, run.run_date, q)
    except Exception as e:  # noqa: BLE001 - the night's data is committed: a queue that failed is a warning
        log.warning("the night's review queue was not written: %s", e)
        summary.signal_counts["review_queue_failed"] = 1
        return None
    summary.signal_counts["review_queue_pairs"] = len(q)
    summary.table_versions["review_queue"] = version
    log.info("review_queue %s: %d pairs (version %d)", run.run_date, len(q), version)
    return version


# --------------------------------------------------------------------------- from a night's tables


def _as_dict(v) -> dict:
    """A Delta map value as delta-rs hands it to pandas (a list of pairs, or a dict)."""
    if isinstance(v, dict):
        return v
    if v is None:
        return {}
    return {k: x for k, x in v}


def _previous_date(warehouse: str, table: str, run_date: str) -> str | None:
    from deltalake import DeltaTable

    from listing_dedup.sink.schemas import PARTITION_COLUMN, table_uri

    dates = {p.get(PARTITION_COLUMN) for p in DeltaTable(table_uri(warehouse, table)).partitions()}
    earlier = sorted(d for d in dates if d and d < run_date)
    return earlier[-1] if earlier else None


def queue_from_tables(
    warehouse: str, run_date: str, *, max_pairs: int, listings: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The review queue of the committed run of ``run_date`` (the ``review_queue`` columns): its
    ``candidates`` (the run must write them: ``output.candidates: true``) with the re-ranker's
    probability where the run kept the re-ranker's edges, else the fused score, against the
    threshold the run used (its ``runs`` row); its ``matches`` (edges), ``clusters`` (groups) and
    the previous date's clusters; the pairs of the ``decisions`` table left out. ``listings``
    (``posting_id``, ``title``, optional ``image`` paths): the titles and images shown."""
    import json

    from listing_dedup.errors import InputError
    from listing_dedup.sink.decisions import read_decisions
    from listing_dedup.sink.delta import DeltaSink, read_table

    sink = DeltaSink(warehouse)
    if not sink.table_exists("candidates"):
        raise InputError("no candidates table: run the job with output.candidates: true for a review queue")
    clusters = read_table(warehouse, "clusters", run_date)
    if clusters.empty:
        raise InputError(f"no clusters for {run_date} in {warehouse}: run the job for that date first")
    run_id = clusters["run_id"].dropna().iloc[0] if clusters["run_id"].notna().any() else None
    cand = read_table(warehouse, "candidates", run_date)
    if cand.empty and len(clusters) > 1:
        raise InputError(f"the candidates of {run_date} are empty: rerun it with output.candidates: true")
    runs = read_table(warehouse, "runs")
    row = runs[(runs["run_id"] == run_id) & (runs["status"] == "succeeded")] if run_id is not None else runs.iloc[:0]
    conf = json.loads(row["config_json"].iloc[-1]) if len(row) else {}
    counts = json.loads(row["signal_counts"].iloc[-1]) if len(row) and row["signal_counts"].iloc[-1] else {}
    maps = cand["signal_scores"].map(_as_dict)
    reranked = bool(conf.get("rerank", {}).get("enabled")) and not counts.get("rerank_fallback")
    reranked = reranked and maps.map(lambda m: "rerank" in m).any()
    if reranked:
        prob = maps.map(lambda m: m.get("rerank", np.nan)).astype(np.float64)
        threshold = float(conf["rerank"]["threshold"])
    else:
        prob = cand["score"].astype(np.float64)
        threshold = float(conf.get("match", {}).get("threshold", 0.5))
    health = json.loads(row["health_json"].iloc[-1]) if len(row) and row["health_json"].iloc[-1] else {}
    if health.get("edge_threshold") is not None:  # as applied (a runs row before it: the conf's)
        threshold = float(health["edge_threshold"])
    m = read_table(warehouse, "matches", run_date, columns=["posting_id", "match_ids"])
    m = m.explode("match_ids").dropna()
    edges = {(min(a, b), max(a, b)) for a, b in zip(m["posting_id"], m["match_ids"])}
    pairs = pd.DataFrame({"a": cand["posting_id"], "b": cand["candidate_id"], "probability": prob})
    pairs["edge"] = [(min(a, b), max(a, b)) in edges for a, b in zip(pairs["a"], pairs["b"])]
    pairs["signal_scores"] = maps
    pairs = pairs[pairs["probability"].notna()]
    groups = dict(zip(clusters["posting_id"], clusters["group_id"]))
    prev_date = _previous_date(warehouse, "clusters", run_date)
    prev = None
    if prev_date is not None:
        pc = read_table(warehouse, "clusters", prev_date, columns=["posting_id", "group_id"])
        prev = dict(zip(pc["posting_id"], pc["group_id"]))
    dec = read_decisions(warehouse)
    decided = [] if dec is None else list(zip(dec["posting_id_a"], dec["posting_id_b"]))
    q = review_queue(pairs, groups, threshold=threshold, max_pairs=max_pairs, prev_groups=prev, decided=decided)
    title = image = {}
    if listings is not None:
        first = listings.drop_duplicates("posting_id")
        title = dict(zip(first["posting_id"], first["title"]))
        if "image" in first.columns:
            image = {k: v for k, v in zip(first["posting_id"], first["image"]) if isinstance(v, str)}
    for side in ("a", "b"):
        q[f"title_{side}"] = q[f"posting_id_{side}"].map(title)
        q[f"image_{side}"] = q[f"posting_id_{side}"].map(image)
    q["run_id"] = run_id
    return q[[*QUEUE_COLUMNS, "title_a", "title_b", "image_a", "image_b", "signal_scores", "run_id"]].reset_index(
        drop=True
    )


def write_queue(warehouse: str, run_date: str, queue: pd.DataFrame) -> int:
    """Replace the ``run_date`` partition of the ``review_queue`` table with ``queue`` (one
    commit; the first creates the table); the new version."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from listing_dedup.errors import SinkError, first_line
    from listing_dedup.sink.delta import DeltaSink
    from listing_dedup.sink.schemas import DECISION_SCHEMAS, PARTITION_COLUMN, table_arrow_schema, table_uri

    DeltaSink(warehouse).check_schema("review_queue", DECISION_SCHEMAS["review_queue"])
    schema = table_arrow_schema(DECISION_SCHEMAS["review_queue"])
    q = queue.assign(**{PARTITION_COLUMN: run_date})
    q["signal_scores"] = q["signal_scores"].map(lambda d: list(_as_dict(d).items()))
    data = pa.Table.from_pandas(q[schema.names], schema=schema, preserve_index=False)
    uri = table_uri(warehouse, "review_queue")
    try:
        write_deltalake(
            uri,
            data,
            mode="overwrite",
            partition_by=[PARTITION_COLUMN],
            predicate=f"{PARTITION_COLUMN} = '{run_date}'",
        )
        return DeltaTable(uri).version()
    except Exception as e:  # noqa: BLE001
        raise SinkError(f"writing the review_queue of {run_date} failed: {first_line(e)}") from e


# --------------------------------------------------------------------------- the report's review page


def _thumbnail(value, roots, px: int = 160) -> str:
    """A data: URI of the image (a JPEG thumbnail), "" when it cannot be read."""
    import base64
    import io

    from listing_dedup.ingest.images import read_image_bytes

    if not isinstance(value, str) or not value:
        return ""
    try:
        data, _ = read_image_bytes(value, roots)
        if not data:
            return ""
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.thumbnail((px, px))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a page without that thumbnail, never a failed page
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def review_page(queue: pd.DataFrame, *, image_roots=None, top: int = 50, title: str = "Review queue") -> str:
    """The report's review page: the queue's top ``top`` pairs side by side (titles, images
    where they can be read below ``image_roots``, groups, why the pair is queued and its
    scores), as one self-contained HTML document (thumbnails inline)."""
    from html import escape

    rows = []
    for r in queue.head(top).itertuples(index=False):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(_as_dict(r.signal_scores).items()))
        cells = []
        for side in ("a", "b"):
            src = _thumbnail(getattr(r, f"image_{side}"), image_roots) if image_roots is not None else ""
            img = f'<img src="{src}" alt="">' if src else '<div class="noimg">no image</div>'
            cells.append(
                f'<td class="side">{img}<div class="t">{escape(str(getattr(r, f"title_{side}") or ""))}</div>'
                f'<div class="id">{escape(str(getattr(r, f"posting_id_{side}")))} · group '
                f"{escape(str(getattr(r, f'group_{side}')))} ({getattr(r, f'group_size_{side}')})</div></td>"
            )
        rows.append(
            f'<tr><td class="rank">{r.rank}</td>{cells[0]}{cells[1]}<td class="why"><b>{escape(r.reason)}</b>'
            f"<br>probability {r.probability:.3f}<br>priority {r.priority:.2f}<br>{escape(scores)}</td></tr>"
        )
    style = (
        "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
        "td{border:1px solid #ccc;padding:6px;vertical-align:top}td.side{width:320px}"
        "img{max-width:160px;max-height:160px;display:block}.noimg{color:#999}.id{color:#555;font-size:12px}"
        ".rank{font-weight:bold}.why{font-size:13px;width:220px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style>"
        f"</head><body><h1>{escape(title)}</h1><p>{len(queue)} pairs queued; the top {min(top, len(queue))} "
        "side by side: the job is least sure of these, or their verdict moves the most listings. Answer them with "
        "<code>listing-dedup decide</code>.</p><table><tr><th>#</th><th>listing a</th><th>listing b</th>"
        f"<th>why</th></tr>{''.join(rows)}</table></body></html>"
    )
