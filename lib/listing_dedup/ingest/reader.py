"""Ingest and validate listings.

``read_listings`` reads the input Parquet (file or folder), checks the schema and splits
the rows into *kept* listings and *rejects* (with a reason and the raw row as JSON).
Nothing is dropped silently: ``kept + rejected == input`` always holds (asserted by the
pipeline and the tests).

Reject reasons, checked in this order (the first that applies wins):

``null_posting_id``
    ``posting_id`` is null, or nothing is left of it once whitespace, control and format
    characters are stripped from both ends (``"\\t"``, ``"\\n"``, ``"\\u00a0"``, ``"\\u200b"``).
``no_title_no_image``
    the title is empty after clean-up and there is no image (path, bytes or phash).
``malformed_image_phash``
    ``image_phash`` is present but not exactly 16 hex characters.
``image_outside_roots`` / ``missing_image_file`` / ``image_too_large`` / ``unreadable_image``
    the title is empty, there is no valid ``image_phash``, and the ``image`` cannot be used:
    its path does not lie below the image roots (``..``, an absolute path or URI elsewhere, a
    URI with options: never opened), its file does not exist, it is over
    ``input.max_image_bytes``, or it does not decode completely (a non-image file, a truncated
    or corrupt JPEG); see :mod:`listing_dedup.ingest.images`.
``duplicate_posting_id``
    another *valid* row with the same ``posting_id`` came first (input order); the first
    valid occurrence is kept, later ones are rejected.

The per-row rules are :func:`listing_dedup.ingest.rows.validate_rows` (pure pandas), run in one
pandas UDF on the executors; only the duplicate-id rule is Spark's (a window over all rows).
Images are checked only when the input has an ``image`` column: every present image is
loaded and decoded once, in that UDF; the same decode fills a missing
``image_phash`` (:func:`listing_dedup.ingest.phash.inspect_images`), so the pHash signal needs no
second pass over the images. A row *with* a title whose image
is unusable is kept (its other signals still work) and carries the reason in
``image_error``; the job counts such rows (``images_unreadable`` in the summary and the
``runs`` table). Image paths are read only below the image roots: ``input.image_root`` (or the
input folder when that is empty) and ``input.image_roots``. A storage failure reading an image
(permission denied, connection refused, a root that is not there) fails the run (exit 1).

Hostile files: only the known columns are read (another column, whatever its name, e.g.
``price.usd``, only travels into ``raw``; the optional attributes below are known ones); a
string field that is not valid UTF-8, a file of the folder whose column types differ from the
first file's, or a corrupt file is an
:class:`InputError` (exit 2) naming the file (and the column and row): the query's failure is
classified by :func:`listing_dedup.ingest.failures.job_failure`.

Optional attributes (issue 30; never required): ``brand``, ``model`` (or ``modelno``),
``category``, ``price`` and ``description``, when the input has them, are validated
(:func:`listing_dedup.ingest.rows.validate_attributes`) and kept as columns of ``kept`` (``price``
a double, the others cleaned text, ``model`` under that name whichever column it came from). A bad
value never rejects its row: the listing's title and image still work, and an optional field must
not cost a listing; it is nulled and counted instead (:func:`nulled_attributes`: a price that is not
one number >= 0, e.g. ``"call us"``, ``"-5"``; the job adds ``price_nulled`` to the run's signal
counts and logs a warning). Text attributes are cleaned like titles and cut at
``rows.ATTRIBUTE_MAX_CHARS``; invalid UTF-8 in them fails the read like a title's (exit 2). Any
scalar type is read (a model number stored as a number is text); a struct, array, map, binary,
boolean or date attribute column is an :class:`InputError` (exit 2) naming it. The re-ranker's
candidate frame carries ``model`` / ``brand`` / ``price`` of both ends (graph/rerank.ATTR_FEATURES).

Column types: ``posting_id``, ``title`` and ``image_phash`` must be strings and ``image`` a
string (path) or binary (encoded bytes); any other type is an :class:`InputError` (exit 2)
naming the column. One exception: a column whose values are *all* null is accepted and read
as an all-null string column, because Parquet writers store an all-null column with no
type (pandas/pyarrow write it as ``null``, which Spark reads as ``int``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from listing_dedup.config import InputConf
from listing_dedup.errors import InputError
from listing_dedup.ingest.failures import BAD_INPUT, STORAGE_SIGNS, read_error
from listing_dedup.ingest.images import ImageRoots, image_roots_for
from listing_dedup.ingest.rows import (
    DUPLICATE_POSTING_ID,
    OUTPUT_COLUMNS,
    RowRules,
    attribute_columns,
    validate_attributes,
    validate_rows,
)

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {"posting_id": (T.StringType,), "title": (T.StringType,)}
OPTIONAL_COLUMNS = {"image": (T.StringType, T.BinaryType), "image_phash": (T.StringType,)}
KEPT_COLUMNS = ("posting_id", "title", "image", "image_phash", "image_error")
# the optional attributes' accepted types: text ones any scalar (read as text), the price a number or text
_SCALAR = (T.StringType, T.NumericType, T.NullType)
__all__ = ["STORAGE_SIGNS", "nulled_attributes", "read_error", "read_input", "read_listings", "validate"]


@dataclass(frozen=True)
class Ingested:
    # posting_id, title (cleaned), image (null when absent), image_phash (lower-case hex or null),
    # image_error (why a present image is unusable: missing_image_file / unreadable_image; else null)
    kept: DataFrame
    rejects: DataFrame  # posting_id, reason, raw (JSON of all input columns)
    has_image_column: bool
    source: DataFrame  # the input as read, for the accounting check
    # DataFrames the reader persisted (the validated rows when images are decoded, so that
    # ``kept`` and ``rejects`` do not decode every image twice); the caller unpersists them
    cached: tuple[DataFrame, ...] = ()
    # the optional attributes read (ingest/rows.ATTRIBUTES the input has; kept carries them) and,
    # when any, the validated rows with ``reason`` and ``attributes_nulled`` (for nulled_attributes)
    attributes: tuple[str, ...] = ()
    checked: DataFrame | None = None

    def rows_in(self) -> int:
        return self.source.count()


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _read_parquet(spark: SparkSession, path: str) -> DataFrame:
    """The one call that reads the input (Spark infers the schema from the footers here)."""
    return spark.read.parquet(path)


def read_input(spark: SparkSession, path: str) -> DataFrame:
    """Read listing Parquet. A missing path or a file that is not Parquet is an
    :class:`InputError` (exit 2); a storage or credentials failure a :class:`StorageError` (exit 1)."""
    if _is_local(path):
        local = path[len("file://") :] if path.startswith("file://") else path
        try:
            os.stat(local)
            if Path(local).is_dir() and not any(Path(local).rglob("*.parquet")):
                raise InputError(f"input folder holds no .parquet files: {path}")
        except OSError as e:
            raise read_error(path, e) from e
    try:
        return _read_parquet(spark, path)
    except Exception as e:  # AnalysisException, Py4JJavaError, ...: classified, one line
        raise read_error(path, e) from e


def check_row_count(
    rows_in: int, cfg: InputConf, *, previous_rows: int | None = None, previous_run: str = "", path: str = ""
) -> None:
    """The input-size guard (see :class:`listing_dedup.config.InputConf`): raise
    :class:`InputError` (exit 2) when the input holds 0 rows and ``cfg.allow_empty`` is off, or
    fewer than ``(1 - cfg.max_shrink) * previous_rows`` rows. ``previous_rows`` is the row count
    of the previous succeeded run (``previous_run`` describes it), None when there is none."""
    what = f"input {path}" if path else "input"
    before = ""
    if previous_rows is not None:
        before = f"the previous succeeded run ({previous_run}) read {previous_rows} rows"
    if rows_in == 0:
        if cfg.allow_empty:
            return
        raise InputError(
            f"{what} holds 0 rows; {before or 'no succeeded run is recorded before it'}: refusing to replace "
            "the date's partitions with nothing (an empty extract is usually an upstream bug); "
            "rerun with --allow-empty (or input.allow_empty: true) if the catalog really is empty"
        )
    if previous_rows is None or previous_rows <= 0 or cfg.max_shrink >= 1.0:
        return
    floor = (1.0 - cfg.max_shrink) * previous_rows
    if rows_in < floor:
        drop = 100.0 * (previous_rows - rows_in) / previous_rows
        raise InputError(
            f"{what} holds {rows_in} rows, {drop:.0f}% fewer than the {previous_rows} rows the previous succeeded "
            f"run read ({previous_run}); input.max_shrink={cfg.max_shrink:g} allows at most {cfg.max_shrink:.0%} "
            "fewer: refusing it as a probable upstream bug; rerun with --allow-empty (or a higher "
            "input.max_shrink) if the catalog really shrank"
        )


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "-"


def check_kept_rows(
    rows_in: int,
    rows_kept: int,
    cfg: InputConf,
    *,
    previous_in: int | None = None,
    previous_kept: int | None = None,
    previous_run: str = "",
    rejects_by_reason: dict[str, int] | None = None,
    path: str = "",
) -> None:
    """The input-size guard on the rows *kept* by validation, after :func:`check_row_count`
    (which judged ``rows_in``): raise :class:`InputError` (exit 2) when more than
    ``cfg.max_rejected_share`` of the ``rows_in`` rows were rejected (with or without a previous
    run), or when ``rows_kept`` is below ``(1 - cfg.max_shrink) * previous_kept``, the kept rows
    of the previous succeeded run (``previous_run`` describes it; ``previous_in``: its rows in;
    None when there is none or it did not record them). The one line names the kept share and
    the previous run's. An input of 0 rows is :func:`check_row_count`'s to judge."""
    if rows_in <= 0:
        return
    what = f"input {path}" if path else "input"
    rejected = rows_in - rows_kept
    by_reason = sorted((rejects_by_reason or {}).items(), key=lambda x: (-x[1], x[0]))
    reasons = ": " + ", ".join(f"{r} {n}" for r, n in by_reason) if by_reason else ""
    now = f"{what} keeps {rows_kept} of its {rows_in} rows ({_share(rows_kept, rows_in)}, {rejected} rejected{reasons})"
    if previous_kept is not None:
        share = f" of {previous_in} ({_share(previous_kept, previous_in)})" if previous_in else ""
        before = f"the previous succeeded run ({previous_run}) kept {previous_kept}{share}"
    else:
        before = "no succeeded run with a kept count is recorded before it"
    if rejected > cfg.max_rejected_share * rows_in:
        raise InputError(
            f"{now}; {before}: input.max_rejected_share={cfg.max_rejected_share:g} allows at most "
            f"{cfg.max_rejected_share:.0%} rejected: refusing it as a probable upstream bug (the date's tables are "
            "unchanged); rerun with --allow-empty (or a higher input.max_rejected_share) if the rows really are bad"
        )
    if previous_kept is None or previous_kept <= 0 or cfg.max_shrink >= 1.0:
        return
    if rows_kept < (1.0 - cfg.max_shrink) * previous_kept:
        drop = 100.0 * (previous_kept - rows_kept) / previous_kept
        raise InputError(
            f"{now}, {drop:.0f}% fewer kept rows than {before}; input.max_shrink={cfg.max_shrink:g} allows at most "
            f"{cfg.max_shrink:.0%} fewer: refusing it as a probable upstream bug (the date's tables are unchanged); "
            "rerun with --allow-empty (or a higher input.max_shrink) if the catalog really shrank"
        )


def check_schema(df: DataFrame) -> DataFrame:
    """Check the known columns' types; returns ``df`` with all-null mistyped columns cast to
    string (see the module doc). Raises :class:`InputError` naming the first bad column."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    for name in REQUIRED_COLUMNS:
        if name not in fields:
            raise InputError(f"input is missing required column '{name}' (has: {', '.join(sorted(fields)) or 'none'})")
    for name, types in {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}.items():
        if name in fields and not isinstance(fields[name], types):
            first = []  # the file of a row holding a value of the wrong type (none: all null)
            if not isinstance(fields[name], T.NullType):
                first = df.where(F.col(name).isNotNull()).select(F.input_file_name().alias("f")).limit(1).collect()
            if first:
                wanted = " or ".join(t.typeName() for t in types)
                where = f" (in {re.sub(r'^file:(//)?', '', first[0]['f'])})" if first[0]["f"] else ""
                raise InputError(
                    f"input column '{name}' has type {fields[name].simpleString()}, expected {wanted}{where}"
                )
            log.info("input column '%s' is all null (stored as %s); reading it as string", name, fields[name])
            df = df.withColumn(name, F.col(name).cast("string"))
    return df


def attribute_sources(df: DataFrame) -> dict[str, str]:
    """The optional attributes the input has: attribute -> its column (``model`` is read from
    ``model``, else ``modelno``). A column of a non-scalar type (struct, array, map, binary,
    boolean, date) is an :class:`InputError` naming it: it cannot hold a brand or a price."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    out = attribute_columns(fields)
    for a, col in out.items():
        if not isinstance(fields[col], _SCALAR):
            raise InputError(
                f"input column '{col}' (the optional {a} attribute) has type {fields[col].simpleString()}, "
                "expected a string or a number"
            )
    return out


def nulled_attributes(ing: Ingested) -> dict[str, int]:
    """Kept listings whose optional attribute held a bad value (a price that is not one number
    >= 0) and was nulled, by attribute (``<attribute>_nulled``; one aggregate; {} when the input has
    no attribute or none was nulled). Logged as a warning; the job adds it to the run's signal counts."""
    if ing.checked is None:
        return {}
    kept = ing.checked.where(F.col("reason").isNull() & F.col("attributes_nulled").isNotNull())
    names = [a for a in ing.attributes if a == "price"]  # the only attribute a value can be bad in
    if not names:
        return {}
    row = kept.agg(
        *[F.sum(F.when(F.col("attributes_nulled").contains(a), 1).otherwise(0)).alias(a) for a in names]
    ).first()
    out = {f"{a}_nulled": int(row[a] or 0) for a in names if row[a]}
    for k, n in out.items():
        log.warning("%d kept listings had a bad %s (not one number >= 0): nulled, the listing kept", n, k[:-7])
    return out


def _quoted(name: str):
    """A column by its exact name (``price.usd`` is a name, not a struct field)."""
    return F.col("`" + name.replace("`", "``") + "`")


def _file_and_row(df: DataFrame):
    """Columns naming a row's input file and its row number in it (Parquet's ``_metadata``;
    the file alone, or nothing, for a frame that was not read from files)."""
    try:
        df.select("_metadata.file_path", "_metadata.row_index").schema  # noqa: B018 - analysis only
        return F.col("_metadata.file_path"), (F.col("_metadata.row_index") + 1).cast("string")  # 1 = the first
    except Exception:  # noqa: BLE001 - AnalysisException: no file metadata (a frame built in memory)
        return F.input_file_name(), F.lit("?")


def _utf8_checked(df: DataFrame, columns: list[str], value: str):
    """The string column ``value``, guarded: when any of ``columns`` holds bytes that are not
    valid UTF-8 (Parquet does not check), the query fails with one line naming the file, the
    row and the column (:func:`listing_dedup.ingest.failures.job_failure` makes it an
    :class:`InputError`): Python could not even receive such a row."""
    file_col, row_col = _file_and_row(df)
    pid = F.col("posting_id")
    safe_id = F.when(F.is_valid_utf8(pid), F.substring(F.regexp_replace(pid, r"\p{Cntrl}", "?"), 1, 100))
    where = F.concat(
        F.lit("input file "),
        F.coalesce(F.regexp_replace(file_col, "^file:(//)?", ""), F.lit("?")),  # a local file as its path
        F.lit(", row "),
        F.coalesce(row_col, F.lit("?")),
        F.coalesce(F.concat(F.lit(" (posting_id '"), safe_id, F.lit("')")), F.lit("")),
    )
    out = None
    for c in columns:
        fire = F.raise_error(F.concat(F.lit(BAD_INPUT), where, F.lit(f": column '{c}' is not valid UTF-8")))
        cond = ~F.is_valid_utf8(F.col(c))
        out = F.when(cond, fire) if out is None else out.when(cond, fire)
    return out.otherwise(F.col(value)) if out is not None else F.col(value)


def validate(df: DataFrame, cfg: InputConf, image_root: str | ImageRoots = "") -> Ingested:
    """Split rows into kept listings and rejects (see the module doc for the rules).

    ``image_root``: the :class:`ImageRoots` image paths are read below, or the one folder
    relative ``image`` paths are resolved against (with ``cfg``'s extra roots and byte limit)."""
    source = df
    df = check_schema(df)
    original_columns = df.columns
    has_image = "image" in original_columns
    binary_image = has_image and isinstance(df.schema["image"].dataType, T.BinaryType)
    roots = (
        image_root
        if isinstance(image_root, ImageRoots)
        else ImageRoots.build(image_root, tuple(cfg.image_roots), max_bytes=cfg.max_image_bytes)
    )
    rules = RowRules(max_title_chars=cfg.max_title_chars, images=roots)
    attrs = attribute_sources(df)
    checked = [c for c in ("posting_id", "title", "image", "image_phash", *attrs.values()) if c in original_columns]
    checked = [c for c in checked if isinstance(df.schema[c].dataType, T.StringType)]
    none = F.lit(None).cast("string")

    out_schema = T.StructType([T.StructField(c, T.StringType()) for c in OUTPUT_COLUMNS])

    @F.pandas_udf(out_schema)
    def _validate(ids: pd.Series, titles: pd.Series, images: pd.Series, phashes: pd.Series) -> pd.DataFrame:
        return validate_rows(ids, titles, images, phashes, rules)

    attr_fields = [T.StructField(a, T.DoubleType() if a == "price" else T.StringType()) for a in attrs]
    attr_schema = T.StructType([*attr_fields, T.StructField("attributes_nulled", T.StringType())])
    attr_names = list(attrs)

    @F.pandas_udf(attr_schema)
    def _attributes(*cols: pd.Series) -> pd.DataFrame:
        cleaned, nulled = validate_attributes(dict(zip(attr_names, cols, strict=True)))
        return cleaned.assign(attributes_nulled=nulled)

    image_col = F.col("image") if has_image else none
    phash_col = F.col("image_phash") if "image_phash" in original_columns else none
    staged = df.select(
        F.monotonically_increasing_id().alias("_row"),
        # the whole input row (every column, whatever its name), so a reject can be fixed and resubmitted
        F.to_json(F.struct(*[_quoted(c) for c in original_columns])).alias("raw"),
        F.col("posting_id").alias("_raw_id"),
        image_col.alias("_image_in"),
        # the title carries the UTF-8 guard of every string column into the UDF: it always runs first
        _validate(F.col("posting_id"), _utf8_checked(df, checked, "title"), image_col, phash_col).alias("_v"),
        # the optional attributes (ingest/rows.validate_attributes): a bad value is nulled, never a reject
        *([_attributes(*[_quoted(c).cast("string") for c in attrs.values()]).alias("_a")] if attrs else []),
    )
    staged = staged.select(
        "_row",
        "raw",
        "_raw_id",
        *[F.col(f"_v.{c}").alias(c) for c in OUTPUT_COLUMNS if c != "image"],
        # bytes values stay as read (the UDF returns stripped paths only)
        (F.when(F.length("_image_in") > 0, F.col("_image_in")) if binary_image else F.col("_v.image")).alias("image"),
        *[F.col(f"_a.{a}").alias(a) for a in [*attrs, "attributes_nulled"] if attrs],
    )
    # rank valid rows sharing an id by input order; the first is kept
    w = Window.partitionBy("posting_id", F.col("reason").isNull()).orderBy("_row")
    staged = staged.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (F.row_number().over(w) > 1), F.lit(DUPLICATE_POSTING_ID)).otherwise(
            F.col("reason")
        ),
    )
    # kept and rejects (and the attributes' count) read it: each row validated once (the rejects'
    # count read it again: the validation and the duplicate ids' window twice, ~5 s at 100k)
    staged = staged.persist(StorageLevel.MEMORY_AND_DISK)
    cached: tuple[DataFrame, ...] = (staged,)
    kept = staged.where(F.col("reason").isNull()).select(*KEPT_COLUMNS, *attrs)
    if cfg.partitions:
        kept = kept.repartition(cfg.partitions)
    rejects = staged.where(F.col("reason").isNotNull()).select(F.col("_raw_id").alias("posting_id"), "reason", "raw")
    return Ingested(
        kept=kept,
        rejects=rejects,
        has_image_column=has_image,
        source=source,
        cached=cached,
        attributes=tuple(attrs),
        checked=staged if attrs else None,
    )


def read_listings(spark: SparkSession, path: str, cfg: InputConf) -> Ingested:
    return validate(read_input(spark, path), cfg, image_root=image_roots_for(path, cfg))
