"""Reviewers' decisions: the ``decisions`` table, its validation, and what a run applies.

``listing-dedup decide --warehouse WH --input VERDICTS.csv|parquet [--catalog LISTINGS.parquet]``
appends verdicts (``posting_id_a``, ``posting_id_b``, ``verdict`` = ``same`` | ``different``;
optional ``source``, ``note``, ``decided_at``) to the ``decisions`` Delta table beside the job's
outputs. Pairs are stored in canonical order (``posting_id_a < posting_id_b``); for each pair the
latest decision wins (``decided_at``, then ``recorded_at``, the command's time). Every input row is
either accepted or rejected with a reason into ``decision_rejects`` (in = accepted + rejected),
checked in this order, the first that applies wins:

``null_posting_id``     an id is missing or blank (cleaned as the listings' ids are)
``self_pair``           both ids are the same listing
``bad_verdict``         the verdict is missing or not ``same`` / ``different`` (case and blanks ignored)
``bad_decided_at``      ``decided_at`` is given but is not a date-time
``unknown_posting_id``  with ``--catalog``: an id that is not a kept listing of the catalog
``contradicts_file``    the file gives the pair both verdicts (every row of the pair is refused)
``duplicate_in_file``   the pair's verdict repeats in the file (the first row is kept)
``contradicts_table``   the table's latest verdict of the pair differs (``--override``: accepted,
                        and, being the latest, it wins)
``contradicts_decisions`` the verdict contradicts the decisions through a chain (``a=b``, ``b=c``,
                        ``a!=c``): without ``--override`` the table's decisions win, and within the
                        file the later row wins

With ``--catalog``, each accepted row carries both listings' content digests at decision time
(:func:`listing_digest`: the cleaned title, the pHash and the image reference, as the job's
ingest keeps them); a run applies a decision only while both digests still match (a listing that
was deleted or changed since is *stale*: kept in the table, counted, not applied). Without a
catalog the digests are null and only a deleted listing makes a decision stale.

:class:`Decisions` is what a run reads (once, at its start) and applies after the connected
components (:mod:`listing_dedup.graph.constraints`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from listing_dedup.errors import InputError, SinkError, first_line
from listing_dedup.graph.constraints import DIFFERENT, SAME, VERDICTS, latest_first, resolve_links
from listing_dedup.ingest.rows import clean_posting_id
from listing_dedup.sink.schemas import DECISION_SCHEMAS, PARTITION_COLUMN, table_arrow_schema, table_uri

log = logging.getLogger(__name__)

DECISIONS, DECISION_REJECTS = "decisions", "decision_rejects"
REQUIRED = ("posting_id_a", "posting_id_b", "verdict")
OPTIONAL = ("source", "note", "decided_at")
REASONS = (
    "null_posting_id",
    "self_pair",
    "bad_verdict",
    "bad_decided_at",
    "unknown_posting_id",
    "contradicts_file",
    "duplicate_in_file",
    "contradicts_table",
    "contradicts_decisions",
)
_SEP = "\x1f"


# --------------------------------------------------------------------------- content digest


def listing_digest(title: Any, image_phash: Any, image: Any) -> str:
    """sha256 hex of a kept listing's content: its cleaned title, pHash and image (a path as
    given, or the sha256 of the bytes). :func:`listing_digest_column` is the same in Spark."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        ref = "sha256:" + hashlib.sha256(bytes(image)).hexdigest() if len(image) else ""
    else:
        ref = image if isinstance(image, str) else ""
    parts = [title if isinstance(title, str) else "", image_phash if isinstance(image_phash, str) else "", ref]
    return hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()


def listing_digest_column(kept: Any) -> Any:
    """:func:`listing_digest` of each row of the job's kept listings (a Spark column)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if "image" not in kept.columns:
        ref = F.lit("")
    elif isinstance(kept.schema["image"].dataType, T.BinaryType):
        ref = F.when(F.length("image") > 0, F.concat(F.lit("sha256:"), F.sha2(F.col("image"), 256))).otherwise("")
    else:
        ref = F.coalesce(F.col("image").cast("string"), F.lit(""))
    phash = F.coalesce(F.col("image_phash"), F.lit("")) if "image_phash" in kept.columns else F.lit("")
    return F.sha2(F.concat_ws(_SEP, F.coalesce(F.col("title"), F.lit("")), phash, ref), 256)


def catalog_digests(path: str, ids: set[str], input_conf: Any) -> dict[str, str]:
    """The content digest of each of ``ids`` that is a kept listing of the catalog at ``path``
    (validated by the job's row rules, the first valid occurrence of an id kept; only the rows
    of ``ids`` are validated, so only their images are read)."""
    from listing_dedup.ingest.images import image_roots_for
    from listing_dedup.ingest.rows import RowRules, validate_rows

    try:
        cat = pd.read_parquet(path, columns=None)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable catalog is bad input
        raise InputError(f"cannot read the catalog {path}: {first_line(e)}") from e
    if "posting_id" not in cat.columns or "title" not in cat.columns:
        raise InputError(f"the catalog {path} needs posting_id and title columns (has {list(cat.columns)})")
    clean = cat["posting_id"].map(clean_posting_id)
    cat = cat[clean.isin(ids)]
    if cat.empty:
        return {}
    # plain objects with None for a missing value, as the job's pandas UDF receives them (a
    # pandas "string" column's NA would otherwise reach the title clean-up as "<NA>")
    cat = cat.astype(object).where(cat.notna(), None)
    rules = RowRules(max_title_chars=input_conf.max_title_chars, images=image_roots_for(path, input_conf))
    v = validate_rows(
        cat["posting_id"],
        cat["title"],
        cat["image"] if "image" in cat.columns else None,
        cat["image_phash"] if "image_phash" in cat.columns else None,
        rules,
    )
    v = v[v["reason"].isna()]
    out: dict[str, str] = {}
    for idx, row in v.iterrows():
        if row["posting_id"] in out:
            continue  # duplicate_posting_id: the first valid occurrence is the listing
        raw = cat.at[idx, "image"] if "image" in cat.columns else None
        # bytes as read (the job keeps them so); a path as the row rules strip it
        image = raw if isinstance(raw, (bytes, bytearray, memoryview)) else row["image"]
        out[row["posting_id"]] = listing_digest(row["title"], row["image_phash"], image)
    return out


# --------------------------------------------------------------------------- reading verdicts


def read_verdicts(path: str) -> pd.DataFrame:
    """The verdict rows of a CSV or Parquet file (every column read as text; ``decided_at`` is
    parsed by :func:`validate_verdicts`). :class:`InputError` for an unreadable file or a
    missing required column."""
    try:
        if str(path).lower().endswith((".csv", ".csv.gz", ".tsv")):
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read the verdicts {path}: {first_line(e)}") from e
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"the verdicts {path} lack the column(s) {missing} (need {list(REQUIRED)})")
    return df.reset_index(drop=True)


def _text(v: Any) -> str | None:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return str(v)


def _raw(row: pd.Series) -> str:
    return json.dumps({k: _text(v) if not isinstance(v, pd.Timestamp) else v.isoformat() for k, v in row.items()})


@dataclass
class Validated:
    """:func:`validate_verdicts`' result: ``accepted`` rows (the ``decisions`` columns, without
    ``batch_id``/``recorded_at``) and ``rejected`` rows (the ``decision_rejects`` columns, without
    ``batch_id``); ``rows_in == len(accepted) + len(rejected)``."""

    rows_in: int
    accepted: pd.DataFrame
    rejected: pd.DataFrame

    def reasons(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.rejected["reason"].value_counts().sort_index().items()}


def validate_verdicts(
    rows: pd.DataFrame,
    *,
    existing: pd.DataFrame | None = None,
    digests: dict[str, str] | None = None,
    default_source: str = "cli",
    now: dt.datetime | None = None,
    override: bool = False,
) -> Validated:
    """Split verdict ``rows`` into accepted and rejected (the reasons in the module doc).

    ``existing``: the ``decisions`` table's rows (None: no table). ``digests``: the catalog's
    kept listings (id -> content digest; None: no catalog given, ids are not checked and the
    digests are null). ``now``: the command's time (``decided_at`` when a row has none)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    n = len(rows)
    a = rows["posting_id_a"].map(clean_posting_id)
    b = rows["posting_id_b"].map(clean_posting_id)
    verdict = rows["verdict"].map(lambda v: _text(v).strip().lower() if _text(v) is not None else None)
    given = rows["decided_at"] if "decided_at" in rows.columns else pd.Series([None] * n, index=rows.index)
    decided = pd.to_datetime(given, utc=True, errors="coerce", format="mixed")
    reason = pd.Series([None] * n, index=rows.index, dtype=object)

    def mark(mask, why: str) -> None:
        reason[(reason.isna()) & mask] = why

    mark(a.isna() | b.isna(), "null_posting_id")
    mark(a == b, "self_pair")
    mark(~verdict.isin(VERDICTS), "bad_verdict")
    mark(given.map(_text).notna() & decided.isna(), "bad_decided_at")
    if digests is not None:
        mark(~a.isin(list(digests)) | ~b.isin(list(digests)), "unknown_posting_id")
    lo = pd.Series(np.where(a.fillna("") < b.fillna(""), a, b), index=rows.index)
    hi = pd.Series(np.where(a.fillna("") < b.fillna(""), b, a), index=rows.index)
    ok = reason.isna()
    pair = lo.astype(str) + _SEP + hi.astype(str)
    n_verdicts = verdict[ok].groupby(pair[ok]).nunique()
    mark(ok & pair.map(n_verdicts).gt(1), "contradicts_file")
    ok = reason.isna()
    mark(ok & pair.where(ok).duplicated(keep="first") & ok, "duplicate_in_file")

    latest = latest_first(existing) if existing is not None and len(existing) else None
    if latest is not None and not override:
        table_verdict = dict(zip(latest["posting_id_a"] + _SEP + latest["posting_id_b"], latest["verdict"]))
        ok = reason.isna()
        mark(ok & pair.map(table_verdict).notna() & (pair.map(table_verdict) != verdict), "contradicts_table")
    # chains: the table's decisions first unless overridden, the file's later rows before its earlier ones
    ok_idx = list(reason[reason.isna()].index[::-1])
    file_links = [(lo[i], hi[i], verdict[i]) for i in ok_idx]
    table_links = [] if latest is None else list(zip(latest["posting_id_a"], latest["posting_id_b"], latest["verdict"]))
    links = file_links + table_links if override else table_links + file_links
    honoured = resolve_links(links)
    file_ok = honoured[: len(file_links)] if override else honoured[len(table_links) :]
    for i, good in zip(ok_idx, file_ok):
        if not good:
            reason[i] = "contradicts_decisions"

    acc = reason.isna()
    source = rows["source"].map(_text) if "source" in rows.columns else pd.Series([None] * n, index=rows.index)
    note = rows["note"].map(_text) if "note" in rows.columns else pd.Series([None] * n, index=rows.index)
    digest = (digests or {}).get
    accepted = pd.DataFrame(
        {
            "posting_id_a": lo[acc],
            "posting_id_b": hi[acc],
            "verdict": verdict[acc],
            "source": source[acc].fillna(default_source),
            "decided_at": decided[acc].fillna(pd.Timestamp(now)).astype("datetime64[us, UTC]"),
            "note": note[acc],
            "digest_a": lo[acc].map(digest) if digests is not None else None,
            "digest_b": hi[acc].map(digest) if digests is not None else None,
        }
    ).reset_index(drop=True)
    rej = ~acc
    rejected = pd.DataFrame(
        {
            "posting_id_a": rows["posting_id_a"][rej].map(_text),
            "posting_id_b": rows["posting_id_b"][rej].map(_text),
            "verdict": rows["verdict"][rej].map(_text),
            "reason": reason[rej],
            "raw": [_raw(rows.loc[i]) for i in rows.index[rej]],
        }
    ).reset_index(drop=True)
    return Validated(n, accepted, rejected)


# --------------------------------------------------------------------------- the tables


def _arrow(df: pd.DataFrame, table: str, run_date: str) -> pa.Table:
    schema = table_arrow_schema(DECISION_SCHEMAS[table])
    df = df.assign(**{PARTITION_COLUMN: run_date})
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def append(warehouse: str, table: str, df: pd.DataFrame, run_date: str, storage_options=None) -> int:
    """Append ``df`` (the table's columns) to ``table`` under ``warehouse`` in one Delta commit
    (the first creates it, partitioned by ``run_date``); the new version."""
    from deltalake import DeltaTable, write_deltalake

    from listing_dedup.sink.delta import DeltaSink

    DeltaSink(warehouse, storage_options=storage_options).check_schema(table, DECISION_SCHEMAS[table])
    uri = table_uri(warehouse, table)
    try:
        write_deltalake(
            uri,
            _arrow(df, table, run_date),
            mode="append",
            partition_by=[PARTITION_COLUMN],
            storage_options=storage_options,
        )
        return DeltaTable(uri, storage_options=storage_options).version()
    except Exception as e:  # noqa: BLE001
        raise SinkError(f"appending to table '{table}' failed: {first_line(e)}") from e


def read_decisions(warehouse: str, storage_options=None) -> pd.DataFrame | None:
    """Every row of the ``decisions`` table (None when there is no such table)."""
    from listing_dedup.sink.delta import DeltaSink, read_table

    if not DeltaSink(warehouse, storage_options=storage_options).table_exists(DECISIONS):
        return None
    return read_table(warehouse, DECISIONS, storage_options=storage_options)


@dataclass
class DecideResult:
    batch_id: str
    validated: Validated
    versions: dict[str, int] = field(default_factory=dict)


def decide(
    warehouse: str,
    rows: pd.DataFrame,
    *,
    digests: dict[str, str] | None = None,
    default_source: str = "cli",
    override: bool = False,
    now: dt.datetime | None = None,
) -> DecideResult:
    """Validate ``rows`` against the table and append them: the rejects first, then the accepted
    decisions (a failure between the two leaves the rejects recorded and no decision: rerunning
    the same file is safe, its rejects are recorded twice under two ``batch_id``)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    v = validate_verdicts(
        rows,
        existing=read_decisions(warehouse),
        digests=digests,
        default_source=default_source,
        now=now,
        override=override,
    )
    if v.rows_in != len(v.accepted) + len(v.rejected):  # pragma: no cover - the split is total by construction
        raise InputError(f"verdict accounting broke: {v.rows_in} in != {len(v.accepted)} + {len(v.rejected)}")
    batch = uuid.uuid4().hex
    day = now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")
    res = DecideResult(batch, v)
    if len(v.rejected):
        res.versions[DECISION_REJECTS] = append(warehouse, DECISION_REJECTS, v.rejected.assign(batch_id=batch), day)
    if len(v.accepted):
        acc = v.accepted.assign(batch_id=batch, recorded_at=pd.Timestamp(now).tz_convert("UTC"))
        acc["recorded_at"] = acc["recorded_at"].astype("datetime64[us, UTC]")
        res.versions[DECISIONS] = append(warehouse, DECISIONS, acc, day)
    return res


# --------------------------------------------------------------------------- what a run applies


@dataclass
class Decisions:
    """The decisions a run reads once, at its start: the latest per pair, the latest first."""

    latest: pd.DataFrame
    _resolved: tuple | None = None

    @classmethod
    def read(cls, warehouse: str, storage_options=None) -> Decisions | None:
        rows = read_decisions(warehouse, storage_options)
        if rows is None or rows.empty:
            return None
        return cls(latest_first(rows))

    def resolve(self, kept: Any) -> tuple[list[tuple[str, str, str]], pd.DataFrame]:
        """The decisions that apply to the run's kept listings (``(a, b, verdict)``, the latest
        first) and the stale ones (with ``stale``: ``deleted`` or ``changed``): an end that is
        not a kept listing, or a digest recorded at decision time that differs from the
        listing's content now. Computed once (one small join of ``kept``)."""
        if self._resolved is None:
            from pyspark.sql import functions as F

            d = self.latest
            ends = sorted(set(d["posting_id_a"]) | set(d["posting_id_b"]))
            spark = kept.sparkSession
            ends_df = spark.createDataFrame(pd.DataFrame({"posting_id": ends}), "posting_id string")
            now = (
                kept.join(F.broadcast(ends_df), "posting_id")
                .select("posting_id", listing_digest_column(kept).alias("digest"))
                .toPandas()
            )
            current = dict(zip(now["posting_id"], now["digest"]))
            state = []
            for a, b, da, db in zip(d["posting_id_a"], d["posting_id_b"], d["digest_a"], d["digest_b"]):
                if a not in current or b not in current:
                    state.append("deleted")
                elif (isinstance(da, str) and da != current[a]) or (isinstance(db, str) and db != current[b]):
                    state.append("changed")
                else:
                    state.append("")
            d = d.assign(stale=state)
            live = d[d["stale"] == ""]
            links = list(zip(live["posting_id_a"], live["posting_id_b"], live["verdict"]))
            self._resolved = (links, d[d["stale"] != ""].reset_index(drop=True))
        return self._resolved

    def apply(self, spark: Any, *, kept: Any, groups: Any, group_edges: Any, edges: Any, counts: dict) -> tuple:
        """The run's groups, grouping edges and match edges under the decisions
        (:func:`listing_dedup.graph.constraints.apply_constraints_spark`); ``counts`` (the
        summary's signal counts) gains ``decisions_*``: applied must/cannot-links, stale and
        overridden decisions, groups cut and joined."""
        from listing_dedup.graph.constraints import apply_constraints_spark

        links, stale = self.resolve(kept)
        groups, group_edges, edges, stats = apply_constraints_spark(spark, groups, group_edges, edges, links)
        counts.update(stats.counts())
        counts["decisions_stale"] = len(stale)
        if len(stale):
            shown = ", ".join(
                f"{a}-{b} ({s})" for a, b, s in stale[["posting_id_a", "posting_id_b", "stale"]].head(5).values
            )
            log.warning(
                "%d decision(s) not applied: a listing was deleted or changed since the decision: %s%s",
                len(stale),
                shown,
                " ..." if len(stale) > 5 else "",
            )
        return groups, group_edges, edges


__all__ = [
    "DECISIONS",
    "DECISION_REJECTS",
    "DIFFERENT",
    "SAME",
    "Decisions",
    "catalog_digests",
    "decide",
    "listing_digest",
    "listing_digest_column",
    "read_verdicts",
    "validate_verdicts",
]
