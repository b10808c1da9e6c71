"""Ingest and validate listings.

``read_listings`` reads the input Parquet (file or folder), checks the schema and splits
the rows into *kept* listings and *rejects* (with a reason and the raw row as JSON).
Nothing is dropped silently: ``kept + rejected == input`` always holds (asserted by the
pipeline and the tests).

Reject reasons, checked in this order (the first that applies wins):

``null_posting_id``
    ``posting_id`` is null, empty or only whitespace.
``no_title_no_image``
    the title is empty after clean-up and there is no image (path, bytes or phash).
``malformed_image_phash``
    ``image_phash`` is present but not exactly 16 hex characters.
``missing_image_file`` / ``unreadable_image``
    the title is empty, there is no valid ``image_phash``, and the ``image`` cannot be used:
    its file does not exist, or it does not decode completely (a non-image file, a truncated
    or corrupt JPEG); see :mod:`listing_dedup.ingest.images`.
``duplicate_posting_id``
    another *valid* row with the same ``posting_id`` came first (input order); the first
    valid occurrence is kept, later ones are rejected.

Images are checked only when the input has an ``image`` column: every present image is
loaded and decoded once, in a pandas UDF on the executors; the same decode fills a missing
``image_phash`` (:func:`listing_dedup.ingest.phash.inspect_images`), so the pHash signal needs no
second pass over the images. A row *with* a title whose image
is unusable is kept (its other signals still work) and carries the reason in
``image_error``; the job counts such rows (``images_unreadable`` in the summary and the
``runs`` table). Relative image paths are resolved against ``input.image_root``, or the
input folder when that is empty.

Column types: ``posting_id``, ``title`` and ``image_phash`` must be strings and ``image`` a
string (path) or binary (encoded bytes); any other type is an :class:`InputError` (exit 2)
naming the column. One exception: a column whose values are *all* null is accepted and read
as an all-null string column, because Parquet writers store an all-null column with no
type (pandas/pyarrow write it as ``null``, which Spark reads as ``int``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from listing_dedup.config import InputConf
from listing_dedup.errors import DedupError, InputError, StorageError, first_line
from listing_dedup.ingest.images import image_root_for
from listing_dedup.ingest.phash import inspect_images
from listing_dedup.ingest.titles import clean_titles

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {"posting_id": (T.StringType,), "title": (T.StringType,)}
OPTIONAL_COLUMNS = {"image": (T.StringType, T.BinaryType), "image_phash": (T.StringType,)}
KEPT_COLUMNS = ("posting_id", "title", "image", "image_phash", "image_error")
PHASH_PATTERN = r"^[0-9a-fA-F]{16}$"


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

    def rows_in(self) -> int:
        return self.source.count()


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


# Signs, anywhere in an error's text (a Java error through py4j carries its whole cause chain),
# that storage, the network or credentials failed rather than the input: such a read exits 1
# (a retry may pass), not 2. A missing path or a file that is not Parquet has none of them.
STORAGE_SIGNS = (
    "java.net.",  # ConnectException, SocketTimeoutException, UnknownHostException, ...
    "java.nio.file.AccessDeniedException",
    "org.apache.hadoop.security.AccessControlException",
    "org.apache.hadoop.security.token.",  # expired or invalid delegation tokens
    "java.io.InterruptedIOException",
    "org.apache.hadoop.fs.s3a.",  # S3A errors (auth, throttling, connection) and a missing S3A jar
    "com.amazonaws.",
    "software.amazon.awssdk.",
    "com.google.cloud.hadoop.",
    "com.microsoft.azure.",
    "Permission denied",
    "Access Denied",
    "Connection refused",
    "Connection reset",
    "Filesystem closed",
)


def read_error(path: str, e: BaseException) -> DedupError:
    """The error for a failed read of the input: :class:`StorageError` (exit 1) when storage or
    credentials failed (an ``OSError`` other than a missing file, or a Java error with one of
    :data:`STORAGE_SIGNS`), else :class:`InputError` (exit 2: a missing path, a file that is
    not Parquet). One line either way, naming the cause."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return InputError(f"input path does not exist: {path}")
    if isinstance(e, OSError):
        return StorageError(f"cannot read input at {path}: storage error (not the input's fault): {_os_cause(e)}")
    text = str(e)
    for p in {path, path.removeprefix("file://"), os.path.abspath(path) if _is_local(path) else path}:
        text = text.replace(p, "<input>")  # a sign inside the path itself says nothing
    sign = next((s for s in STORAGE_SIGNS if s in text), None)
    if sign is not None:
        cause = _cause_from(text, sign).replace("<input>", path)
        return StorageError(f"cannot read input at {path}: storage error (not the input's fault): {cause}")
    return InputError(f"cannot read input Parquet at {path}: {first_line(e)}")


def _os_cause(e: OSError) -> str:
    return f"{type(e).__name__}: {e.strerror or first_line(e)}" + (f" ({e.filename})" if e.filename else "")


def _cause_from(text: str, sign: str) -> str:
    """The first line of ``text`` holding ``sign`` (a Java exception: class and message)."""
    line = next(ln for ln in text.splitlines() if sign in ln).strip()
    return " ".join(line.removeprefix("Caused by:").removeprefix(":").split())[:500]


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
            all_null = isinstance(fields[name], T.NullType) or df.where(F.col(name).isNotNull()).limit(1).count() == 0
            if not all_null:
                wanted = " or ".join(t.typeName() for t in types)
                raise InputError(f"input column '{name}' has type {fields[name].simpleString()}, expected {wanted}")
            log.info("input column '%s' is all null (stored as %s); reading it as string", name, fields[name])
            df = df.withColumn(name, F.col(name).cast("string"))
    return df


def validate(df: DataFrame, cfg: InputConf, image_root: str = "") -> Ingested:
    """Split rows into kept listings and rejects (see the module doc for the rules).

    ``image_root`` is the folder relative ``image`` paths are resolved against."""
    source = df
    df = check_schema(df)
    original_columns = df.columns
    has_image = "image" in original_columns
    max_chars = cfg.max_title_chars

    @F.pandas_udf(T.StringType())
    def _clean(titles: pd.Series) -> pd.Series:
        return clean_titles(titles, max_chars)

    image_col = F.col("image") if has_image else F.lit(None).cast("string")
    phash_col = F.col("image_phash") if "image_phash" in original_columns else F.lit(None).cast("string")

    staged = df.select(
        F.monotonically_increasing_id().alias("_row"),
        F.to_json(F.struct(*[F.col(c) for c in original_columns])).alias("raw"),
        F.col("posting_id").alias("_raw_id"),
        F.trim(F.col("posting_id")).alias("posting_id"),
        _clean(F.col("title")).alias("title"),
        image_col.alias("image"),
        F.lower(F.trim(phash_col)).alias("_phash"),
    )
    image_present = F.col("image").isNotNull()
    if has_image and isinstance(df.schema["image"].dataType, T.StringType):
        image_present = image_present & (F.length(F.trim(F.col("image"))) > 0)
    elif has_image:  # binary
        image_present = image_present & (F.length(F.col("image")) > 0)
    phash_present = F.col("_phash").isNotNull() & (F.length(F.col("_phash")) > 0)

    row_reason = (
        F.when(F.col("posting_id").isNull() | (F.length(F.col("posting_id")) == 0), F.lit("null_posting_id"))
        .when((F.length(F.col("title")) == 0) & ~image_present & ~phash_present, F.lit("no_title_no_image"))
        .when(phash_present & ~F.col("_phash").rlike(PHASH_PATTERN), F.lit("malformed_image_phash"))
    )
    if has_image:
        img_schema = T.StructType([T.StructField("phash", T.StringType()), T.StructField("error", T.StringType())])

        @F.pandas_udf(img_schema)
        def _inspect(values: pd.Series, given: pd.Series) -> pd.DataFrame:
            return inspect_images(values, given, image_root)

        staged = staged.withColumn("_img", F.when(image_present, _inspect(F.col("image"), F.col("_phash"))))
        staged = staged.withColumn("image_error", F.col("_img.error")).withColumn("_img_phash", F.col("_img.phash"))
        staged = staged.drop("_img")
        no_title_or_phash = (F.length(F.col("title")) == 0) & ~phash_present
        row_reason = row_reason.when(no_title_or_phash & F.col("image_error").isNotNull(), F.col("image_error"))
    else:
        staged = staged.withColumn("image_error", F.lit(None).cast("string"))
        staged = staged.withColumn("_img_phash", F.lit(None).cast("string"))
    staged = staged.withColumn("reason", row_reason)
    # rank valid rows sharing an id by input order; the first is kept
    w = Window.partitionBy("posting_id", F.col("reason").isNull()).orderBy("_row")
    staged = staged.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (F.row_number().over(w) > 1), F.lit("duplicate_posting_id")).otherwise(
            F.col("reason")
        ),
    )
    # the given hash, else the one computed from the image (same decode as the check above)
    staged = staged.withColumn("image_phash", F.when(phash_present, F.col("_phash")).otherwise(F.col("_img_phash")))
    if has_image and isinstance(df.schema["image"].dataType, T.StringType):
        staged = staged.withColumn(
            "image", F.when(image_present, F.trim(F.col("image"))).otherwise(F.lit(None).cast("string"))
        )

    cached: tuple[DataFrame, ...] = ()
    if has_image:
        staged = staged.persist(StorageLevel.MEMORY_AND_DISK)
        cached = (staged,)
    kept = staged.where(F.col("reason").isNull()).select(*KEPT_COLUMNS)
    if cfg.partitions:
        kept = kept.repartition(cfg.partitions)
    rejects = staged.where(F.col("reason").isNotNull()).select(F.col("_raw_id").alias("posting_id"), "reason", "raw")
    return Ingested(kept=kept, rejects=rejects, has_image_column=has_image, source=source, cached=cached)


def read_listings(spark: SparkSession, path: str, cfg: InputConf) -> Ingested:
    return validate(read_input(spark, path), cfg, image_root=image_root_for(path, cfg.image_root))
