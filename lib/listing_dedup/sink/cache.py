"""The embeddings cache: a nightly run embeds only the content it has not embedded before.

Two Delta tables under ``cache.path`` (default: the warehouse), written like the job's other
tables (executors write Parquet files, the driver commits them with ``deltalake``):

``embeddings`` (appended, partitioned by the ``run_date`` that computed the vectors)
    ``key, signal, fingerprint, vector, run_id``. ``key`` is the first 128 bits (hex) of
    sha256(fingerprint id, NUL, content digest): the content is what the signal's encoder reads
    (the cleaned title for ``text`` and ``lexical``; sha256 of the image bytes for ``image``) and the
    fingerprint id hashes everything that decides the vectors (encoder kind, model name, the
    digest of the model's files, ``max_seq_length``, the code's vector version, and the
    *runtime*: the precision and device class the vectors were computed with, ``cuda-fp16``,
    ``cuda-fp32`` or ``cpu-fp32``, and the versions of the libraries that compute them, torch,
    tokenizers, transformers and sentence-transformers or timm, torchvision and Pillow:
    ``TextEncoderBuilder.fingerprint``, ``ImageEncoderBuilder.fingerprint``). So a changed
    model, tokenizer length, fine-tuned directory (even one rewritten in place), precision or
    library version gives other keys and never reuses old vectors.

    The runtime is the one really used, decided where the vectors are computed: the executor
    adds the fingerprint id of its own runtime beside each vector it computes
    (:func:`fingerprint_column`) and the vector is stored under that. A lookup asks for the
    runtime the run expects (``device: cpu`` / ``cuda`` and ``fp16`` decide it; ``auto``: the
    runtime one probe task resolves on a cluster, the driver's own under a local master). On a
    mixed cluster (``device: auto``, a CPU executor beside GPU ones) the run reuses only vectors
    of the expected runtime; what the other executors compute is stored under its own runtime's
    keys (a warning counts them) and reused only by a run that expects that runtime: fp16 GPU
    and fp32 CPU vectors never share a key.
``embeddings_used`` (one partition per ``run_date``, replaced by a rerun)
    ``key, signal``: the keys each run used, whether reused or computed. The retention rule
    reads it: :func:`compact` drops vectors that none of the last ``keep_runs`` run dates used.

A run (:meth:`EmbeddingCache.embed_signals`): the distinct contents of the run are joined with
the cached vectors of each signal's fingerprint (one Delta snapshot, pinned for the run); only the
keys without a vector are embedded (when none are missing the model is not even loaded); the
listing frame gets the reused or new vector of its key. Signals that read the same content (text
and lexical read the title) share the lookup and one computing pass, in which each signal
computes only the contents it lacks. The new vectors and the used keys are
staged with the job's other tables and committed after the data tables (``embeddings_used``
first, then ``embeddings``: a vector visible in the cache always has its use recorded). A run
that crashes before its commits leaves both tables as they were; its staged files are orphans
that :func:`listing_dedup.sink.delta.vacuum` removes. A failed cache commit after the data
tables landed does not fail the run (the data is right; the next run recomputes those vectors).
Nor does a cache that cannot be read: a Delta log that does not parse is an empty cache, and a
file the log lists that is gone or does not decode is skipped (the lookup is read again without
it, only after such a failure): its contents are recomputed and stored again, and the run says so
(:attr:`EmbeddingCache.read_error`, a warning, the summary). Such a file stays listed (each run
skips it again, after the failed first read) until :func:`compact` rewrites the table without it.

Lexical vectors are not cached: their idf is fitted on each run's catalog, so yesterday's
vectors are not today's. Their hashed n-gram counts are (signal ``lexical``: the ``vector``
holds the feature indices then the counts, ``lexical.pack_counts``; the fingerprint is the
hashing settings, ``LexicalParams.counts_fingerprint``): each run fits its idf on them and
projects them, bit-identical to hashing the titles, without hashing the titles it has seen
(docs/benchmarks.md, "Incremental runs": hashing is most of the lexical signal's cost).

Concurrent runs (other dates) append to other partitions: their commits do not conflict, and a
key both computed is stored twice (reads keep one; :func:`compact` drops the copy).
:func:`compact` rewrites the table in one Delta commit that removes only the files of the
snapshot it read, so vectors appended meanwhile by a running job stay, and a job reading an
older snapshot keeps its files until ``vacuum`` (a week by default) deletes them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from listing_dedup.embed.model_dir import fingerprint_id
from listing_dedup.errors import InputError, SinkError, first_line
from listing_dedup.sink.delta import DeltaSink, StagedWrite
from listing_dedup.sink.schemas import PARTITION_COLUMN

log = logging.getLogger(__name__)

EMBEDDINGS, USED = "embeddings", "embeddings_used"
VECTORS_SCHEMA = "key string, signal string, fingerprint string, vector array<float>, run_id string"
USED_SCHEMA = "key string, signal string"
DIGEST = "_cache_digest"  # the working columns of a lookup all start with "_cache_"


@dataclass(frozen=True)
class CachedSignal:
    """A signal :meth:`EmbeddingCache.embed_signals` looks up: its name (the ``signal`` column
    of the tables), its encoder's fingerprint and the column its vectors go to."""

    name: str
    fingerprint: Mapping[str, Any]
    out_col: str


def need_column(signal: str) -> str:
    """The boolean column :meth:`EmbeddingCache.embed_signals` hands its ``embed_fn``: true
    where ``signal``'s vector is missing (and must be computed)."""
    return f"_cache_need_{signal}"


def _key_col(signal: str) -> str:
    return f"_cache_key_{signal}"


def _cached_col(signal: str) -> str:
    return f"_cache_vec_{signal}"


def _fp_col(signal: str) -> str:
    return f"_cache_written_fp_{signal}"


def fingerprint_column(signal: str) -> str:
    """The string column an ``embed_fn`` may add beside a signal's vectors: the fingerprint id
    each vector was really computed under (the runtime its executor used: ``embed_texts`` /
    ``embed_images``' ``fingerprint_col``). The new vectors are stored under it (null: under the
    lookup's fingerprint)."""
    return f"_cache_fp_{signal}"


def key_of(fp_id: str, content_digest_hex: str) -> str:
    """The cache key of one piece of content (pure form of :func:`key_column`)."""
    return hashlib.sha256(f"{fp_id}\0{content_digest_hex}".encode()).hexdigest()[:32]


def content_digest_column(col: Any) -> Any:
    """sha256 hex of a string column (Spark's own, no Python UDF)."""
    from pyspark.sql import functions as F

    return F.sha2(col, 256)


def key_column(fp_id: Any, digest_col: Any) -> Any:
    """:func:`key_of` as a Spark column over a column of content digests (``fp_id``: a string
    or a column of fingerprint ids)."""
    from pyspark.sql import functions as F

    fp = F.lit(fp_id) if isinstance(fp_id, str) else fp_id
    return F.substring(F.sha2(F.concat(fp, F.lit("\0"), digest_col), 256), 1, 32)


def image_digests(values: pd.Series, root: Any = "") -> pd.Series:
    """sha256 hex of each image's bytes (raw bytes, or the file a path names below the image
    roots ``root``: an ``ImageRoots`` or one folder); None where they cannot be used (outside the
    roots, missing, too large: those images are embedded, never cached). Reads through
    :func:`listing_dedup.ingest.images.read_image_bytes`, the same confined reader as ingest; a
    storage failure raises ``StorageError`` (the run fails, exit 1)."""
    from listing_dedup.ingest.images import read_image_bytes

    out: list[str | None] = []
    for v in values:
        data, _ = read_image_bytes(v, root)
        out.append(hashlib.sha256(data).hexdigest() if data else None)
    return pd.Series(out, index=values.index, dtype=object)


def image_digest_column(col: Any, root: Any = "") -> Any:
    """:func:`image_digests` as a Spark column (a pandas UDF on the executors)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    @F.pandas_udf(T.StringType())
    def _digest(values: pd.Series) -> pd.Series:
        return image_digests(values, root)

    return _digest(col)


@dataclass
class SignalUse:
    """One signal's vectors in a run: ``reused`` + ``computed`` distinct keys."""

    signal: str
    fingerprint: str
    keys: int = 0
    reused: int = 0
    computed: int = 0
    other_runtime: int = 0  # computed under another fingerprint than the lookup's (stored under it)


@dataclass
class EmbeddingCache:
    """The cache at ``root`` for one run (``run_id``); :meth:`embed` per signal, then
    :meth:`stage` / :meth:`commit` with the job's tables."""

    root: str
    run_id: str = ""
    storage_options: dict[str, str] | None = None
    fingerprints: dict[str, dict] = field(default_factory=dict)  # signal -> its encoder's fingerprint
    uses: dict[str, SignalUse] = field(default_factory=dict)
    _new: list[Any] = field(default_factory=list)
    _used: list[Any] = field(default_factory=list)
    _paths: list[str] | None = None
    _frames: list[Any] = field(default_factory=list)  # persisted by embed(), released after stage()
    # why the cache could not be read ("" when it could): the run recomputed those vectors
    read_error: str = ""
    _tolerant: bool = False  # read the snapshot's files skipping the ones that fail (after a failure)
    _check_error: str = ""  # why check() found the staged writes do not fit (commit() raises it)

    def __post_init__(self) -> None:
        self.sink = DeltaSink(self.root, storage_options=self.storage_options)

    @property
    def reused(self) -> int:
        return sum(u.reused for u in self.uses.values())

    @property
    def computed(self) -> int:
        return sum(u.computed for u in self.uses.values())

    # -- reading --------------------------------------------------------------------

    def _snapshot_paths(self) -> list[str]:
        """The files of the ``embeddings`` table's snapshot, read once per run (every signal of
        the run sees the same version)."""
        if self._paths is None:
            from deltalake import DeltaTable

            from listing_dedup.sink.verify import _spark_path

            uri = self.sink.table_uri(EMBEDDINGS)
            try:
                if not DeltaTable.is_deltatable(uri, self.storage_options):
                    self._paths = []
                else:
                    dt = DeltaTable(uri, storage_options=self.storage_options)
                    self._paths = [_spark_path(u) for u in dt.file_uris()]
                    log.info("embeddings cache %s: version %d, %d files", uri, dt.version(), len(self._paths))
            except Exception as e:  # noqa: BLE001 - a log that does not parse, storage: a cache without vectors
                self._unreadable(first_line(e), "every vector is recomputed")
                self._paths = []
        return self._paths

    def _unreadable(self, detail: str, what: str) -> None:
        """Record (and warn) that the cache could not be read: the run goes on without those
        vectors (the cache costs time, never the run: its data tables do not depend on it)."""
        uri = self.sink.table_uri(EMBEDDINGS)
        self.read_error = f"the embeddings cache at {uri} could not be read ({detail[:300]}): {what}"
        log.warning("%s", self.read_error)

    def _names_a_cache_file(self, error: BaseException) -> str:
        """The line of a Spark error that names a file of this cache's table ("" when none does:
        the error is not the cache's)."""
        return _line_naming(error, [self.sink.table_uri(EMBEDDINGS)])

    def vectors(self, spark: Any, signal: str, fp_id: str) -> Any:
        """``(_key_col(signal), _cached_col(signal))`` of the cached vectors of one fingerprint
        (a key stored twice by concurrent runs appears twice)."""
        from pyspark.sql import functions as F

        schema = spark.createDataFrame([], VECTORS_SCHEMA).schema
        paths = self._snapshot_paths()
        reader = spark.read.schema(schema)
        if self._tolerant:  # files that are gone or do not decode are skipped: their contents recomputed
            reader = reader.option("ignoreCorruptFiles", "true").option("ignoreMissingFiles", "true")
        df = reader.parquet(*paths) if paths else spark.createDataFrame([], schema)
        return df.where(F.col("fingerprint") == F.lit(fp_id)).select(
            F.col("key").alias(_key_col(signal)), F.col("vector").alias(_cached_col(signal))
        )

    # -- looking up and embedding ---------------------------------------------------------

    def embed(
        self,
        spark: Any,
        df: Any,
        *,
        signal: str,
        fingerprint: Mapping[str, Any],
        digest: Any,
        out_col: str,
        embed_fn: Callable[[Any], Any],
        keep: Callable[[Any], Any],
        digest_nullable: bool = False,
        content_cols: list[str] | None = None,
    ) -> Any:
        """:meth:`embed_signals` for one signal: ``embed_fn(frame)`` gets only contents that
        lack its vector."""
        return self.embed_signals(
            spark,
            df,
            signals=[CachedSignal(signal, fingerprint, out_col)],
            digest=digest,
            embed_fn=embed_fn,
            keep=keep,
            digest_nullable=digest_nullable,
            content_cols=content_cols,
        )

    def embed_signals(
        self,
        spark: Any,
        df: Any,
        *,
        signals: list[CachedSignal],
        digest: Any,
        embed_fn: Callable[[Any], Any],
        keep: Callable[[Any], Any],
        digest_nullable: bool = False,
        content_cols: list[str] | None = None,
        few: bool = False,
    ) -> Any:
        """``df`` with each signal's ``out_col``: the cached vector of each row's content where
        there is one, else the one ``embed_fn`` computes. The signals read the same content
        (``digest`` is the Spark column of its digest; with ``digest_nullable``, a null digest
        means not cacheable: embedded every time), so one pass serves them all: the distinct
        contents are joined with every signal's cached vectors, counted in one action, and the
        contents that lack any signal's vector go through ``embed_fn`` once.

        ``embed_fn(frame)`` adds every signal's ``out_col`` to a frame of ``df``'s columns (one
        row per distinct content) that also holds ``need_column(signal)``: true where that
        signal's vector is missing. Where it is false the cached vector is kept whatever
        ``embed_fn`` puts there, so it may leave those null (the pipeline passes a null title to
        an encoder there: a changed lexical setting does not re-run the text encoder). ``keep``
        persists a frame for the rest of the run. Counts go to :attr:`uses`, the new vectors and
        used keys to :meth:`stage`. ``content_cols``: the columns ``embed_fn`` reads (default:
        all of ``df``'s); the distinct contents carry only those. ``few``: ``df`` is a few rows
        against the cache (an incremental night's delta): the cache's rows of its keys are
        found by a broadcast semi join (one scan of the cache, no shuffle of it) and joined
        broadcast, instead of a shuffled join of the whole cache with ``df``."""
        from functools import reduce

        from pyspark.sql import functions as F

        t0 = time.monotonic()
        caller_keep = keep

        def keep(frame: Any) -> Any:
            frame = caller_keep(frame)
            self._frames.append(frame)
            return frame

        fp_ids = {s.name: fingerprint_id(s.fingerprint) for s in signals}
        out_cols = [s.out_col for s in signals]
        keyed = df.withColumn(DIGEST, digest)
        cacheable = keyed.where(F.col(DIGEST).isNotNull())
        lacks = reduce(lambda a, b: a | b, [F.col(_cached_col(s.name)).isNull() for s in signals])

        def look_up() -> tuple[Any, Any]:
            need = cacheable if content_cols is None else cacheable.select(DIGEST, *content_cols)
            need = need.drop(*out_cols).dropDuplicates([DIGEST])  # one row per distinct content
            for s in signals:
                key = _key_col(s.name)
                need = need.withColumn(key, key_column(fp_ids[s.name], F.col(DIGEST)))
                vectors = self.vectors(spark, s.name, fp_ids[s.name])
                if few:  # the delta's keys' rows only: a broadcast semi join, then a broadcast join
                    vectors = F.broadcast(vectors.join(F.broadcast(need.select(key)), key, "left_semi"))
                need = need.join(vectors, key, "left")
            have = keep(need.dropDuplicates([DIGEST]))  # a key stored twice (concurrent runs) joins twice
            counts = have.agg(
                F.count(F.lit(1)).alias("_keys"),
                F.count(F.when(lacks, 1)).alias("_lacking"),
                *[F.count(_cached_col(s.name)).alias(f"_hit_{i}") for i, s in enumerate(signals)],
            ).first()
            return have, counts

        try:
            have, counts = look_up()
        except Exception as e:  # noqa: BLE001 - only a file of the cache that cannot be read is handled
            line = "" if self._tolerant else self._names_a_cache_file(e)
            if not line:
                raise
            # a file the Delta log lists is gone or does not decode: the lookup skips such files,
            # so their contents are recomputed (and stored again); the run does not fail
            self._unreadable(line, "the vectors of its unreadable files are recomputed")
            self._tolerant = True
            self._paths = _existing_files(spark, self._paths or [])  # Spark refuses a listed path that is gone
            have, counts = look_up()
        uses = {
            s.name: SignalUse(s.name, fp_ids[s.name], keys=int(counts["_keys"]), reused=int(counts[f"_hit_{i}"]))
            for i, s in enumerate(signals)
        }
        t_lookup = time.monotonic() - t0
        hits = have.where(~lacks).select(DIGEST, *[F.col(_cached_col(s.name)).alias(s.out_col) for s in signals])
        parts = [hits]
        if counts["_lacking"]:  # else no model is even loaded
            missing = have.where(lacks)
            for s in signals:
                missing = missing.withColumn(need_column(s.name), F.col(_cached_col(s.name)).isNull())
            # a few missing contents go to few tasks (each task's worker loads the model), but to
            # every core when there are enough of them (629 new titles on one core: 4 s more on 2 cores)
            slots = min(have.rdd.getNumPartitions(), spark.sparkContext.defaultParallelism)
            missing = missing.coalesce(_parts(int(counts["_lacking"]), slots, per_part=256))
            carried = [DIGEST]
            for s in signals:
                carried += [need_column(s.name), _key_col(s.name), _cached_col(s.name)]
            computed = embed_fn(missing)
            # the fingerprint each vector was really computed under (the executor's runtime), else
            # the lookup's: a vector is stored under the key of what computed it
            written = {
                s.name: F.coalesce(F.col(fingerprint_column(s.name)), F.lit(fp_ids[s.name]))
                if fingerprint_column(s.name) in computed.columns
                else F.lit(fp_ids[s.name])
                for s in signals
            }
            new = keep(computed.select(*carried, *out_cols, *[written[s.name].alias(_fp_col(s.name)) for s in signals]))
            fresh = {s.name: F.col(need_column(s.name)) & F.col(s.out_col).isNotNull() for s in signals}
            other = {s.name: fresh[s.name] & (F.col(_fp_col(s.name)) != F.lit(fp_ids[s.name])) for s in signals}
            made = new.agg(
                *[F.count(F.when(fresh[s.name], 1)).alias(f"_new_{i}") for i, s in enumerate(signals)],
                *[F.count(F.when(other[s.name], 1)).alias(f"_other_{i}") for i, s in enumerate(signals)],
            ).first()
            for i, s in enumerate(signals):
                uses[s.name].computed = int(made[f"_new_{i}"])
                uses[s.name].other_runtime = int(made[f"_other_{i}"])
                if uses[s.name].other_runtime:
                    log.warning(
                        "embeddings cache %s: %d vectors were computed under another fingerprint than the "
                        "lookup's %s (another device or precision, e.g. a CPU executor beside GPU ones): "
                        "stored under their own keys, reused only by runs that compute the same way",
                        s.name,
                        uses[s.name].other_runtime,
                        fp_ids[s.name],
                    )
                if not uses[s.name].computed:
                    continue
                self._new.append(
                    new.where(fresh[s.name]).select(
                        key_column(F.col(_fp_col(s.name)), F.col(DIGEST)).alias("key"),
                        F.lit(s.name).alias("signal"),
                        F.col(_fp_col(s.name)).alias("fingerprint"),
                        F.col(s.out_col).cast("array<float>").alias("vector"),
                        F.lit(self.run_id).alias("run_id"),
                    )
                )
            parts.append(
                new.select(
                    DIGEST,
                    *[
                        F.when(F.col(need_column(s.name)), F.col(s.out_col))
                        .otherwise(F.col(_cached_col(s.name)))
                        .alias(s.out_col)
                        for s in signals
                    ],
                )
            )
        for s in signals:
            self._used.append(have.select(F.col(_key_col(s.name)).alias("key"), F.lit(s.name).alias("signal")))
        vecs = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
        out = cacheable.drop(*out_cols).join(vecs, DIGEST, "left")
        if digest_nullable:
            uncacheable = keyed.where(F.col(DIGEST).isNull()).drop(*out_cols)
            for s in signals:
                uncacheable = uncacheable.withColumn(need_column(s.name), F.lit(True))
            out = out.unionByName(embed_fn(uncacheable).select(*out.columns))
        self.uses.update(uses)
        for s in signals:
            use = uses[s.name]
            log.info(
                "embeddings cache %s (%s): %d distinct keys, %d reused, %d computed in %.1fs (lookup %.1fs)",
                s.name,
                use.fingerprint,
                use.keys,
                use.reused,
                use.computed,
                time.monotonic() - t0,
                t_lookup,
            )
        return out.drop(DIGEST)

    def mark_used(self, df: Any, *, signals: list[CachedSignal], digest: Any) -> None:
        """Record the keys of ``df``'s contents (``digest``: the Spark column of each row's) as
        used by this run without looking their vectors up: an incremental night embeds only its
        delta (the other listings' vectors are its state's), and the compaction must still keep
        the vectors every listing of the catalog reads (``embeddings_used``). Not counted in
        :attr:`uses`. ``df``'s contents hold every content looked up so far (the delta is part
        of the catalog): its keys replace theirs, one row a row of ``df`` (no shuffle; the
        compaction reads the keys distinct)."""
        from pyspark.sql import functions as F

        keyed = df.select(digest.alias(DIGEST)).where(F.col(DIGEST).isNotNull())
        self._used = [
            keyed.select(
                key_column(fingerprint_id(s.fingerprint), F.col(DIGEST)).alias("key"), F.lit(s.name).alias("signal")
            )
            for s in signals
        ]

    # -- writing --------------------------------------------------------------------

    def stage(self, run_date: str, *, fail_stage: str = "") -> list[StagedWrite]:
        """Write the run's used keys and new vectors as files (executors); nothing is visible yet.
        Tables with nothing to add are left out."""
        staged = []
        keys = sum(u.keys for u in self.uses.values())
        if self._used:
            used = _union(self._used)
            used = used.coalesce(_parts(keys, used.rdd.getNumPartitions(), per_part=1_000_000))
            staged.append(self.sink.stage(used, USED, run_date, fail_stage=fail_stage))
        if self._new:
            new = _union(self._new)
            new = new.coalesce(_parts(self.computed, new.rdd.getNumPartitions(), per_part=100_000))
            s = self.sink.stage(new, EMBEDDINGS, run_date, fail_stage=fail_stage)
            if s.files:
                staged.append(s)
        return staged

    def release(self) -> None:
        """Unpersist the frames :meth:`embed` persisted (call after :meth:`stage`, once the frames
        built from them are materialised)."""
        for f in self._frames:
            f.unpersist()
        self._frames.clear()

    def check(self, staged: list[StagedWrite]) -> None:
        """Whether ``staged`` fits the cache's tables. A table that cannot be opened (a log that
        does not parse) or does not fit fails no run: the failure is kept for :meth:`commit`,
        which then raises it (the job commits the cache after its data, and records that the
        vectors were not cached)."""
        try:
            self.sink.check(staged)
        except SinkError as e:
            self._check_error = first_line(e)
            log.warning("the embeddings cache cannot take this run's vectors: %s", self._check_error)

    def commit(self, staged: list[StagedWrite]) -> dict[str, int]:
        """Commit ``embeddings_used`` (its ``run_date`` partition replaced) then ``embeddings``
        (appended); returns the versions committed. Raises :class:`SinkError` when
        :meth:`check` found they do not fit."""
        if self._check_error:
            raise SinkError(self._check_error)
        out = {}
        for s in staged:
            mode = "overwrite_partition" if s.table == USED else "append"
            out[s.table] = self.sink.commit(s, mode=mode).version
        return out


def _line_naming(error: BaseException, uris: list[str]) -> str:
    """The first line of ``error``'s text that names a file under one of the tables ``uris``
    ("" when none does)."""
    from urllib.parse import unquote, urlparse

    tables = [unquote(urlparse(u).path if "://" in u else u).rstrip("/") + "/" for u in uris]
    for line in str(error).splitlines():
        if any(t in unquote(line) for t in tables):
            return line.strip()
    return ""


def _read_files(spark: Any, schema: Any, paths: list[str], *, tolerant: bool) -> Any:
    """The Parquet files ``paths``; ``tolerant``: skipping those that are gone or do not decode."""
    reader = spark.read.schema(schema)
    if tolerant:
        reader = reader.option("ignoreCorruptFiles", "true").option("ignoreMissingFiles", "true")
        paths = _existing_files(spark, paths)
    return reader.parquet(*paths) if paths else spark.createDataFrame([], schema)


def _existing_files(spark: Any, paths: list[str]) -> list[str]:
    """The files of ``paths`` that exist (Hadoop file systems: any scheme Spark reads)."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    out = []
    for p in paths:
        path = jvm.org.apache.hadoop.fs.Path(p)
        if path.getFileSystem(conf).exists(path):
            out.append(p)
    return out


def _parts(rows: int, have: int, per_part: int = 2048) -> int:
    """Partitions for ``rows`` rows: one per ``per_part`` rows, at least 1, at most ``have``
    (files and tasks of a night's few new rows stay few)."""
    return max(1, min(have, -(-rows // per_part)))


def _union(frames: list[Any]) -> Any:
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


# --------------------------------------------------------------------------------------
# retention


@dataclass(frozen=True)
class CompactResult:
    dates: tuple[str, ...]  # the run dates whose used keys were kept
    rows_before: int
    rows_after: int
    version: int | None  # the embeddings version written; None when nothing changed

    @property
    def dropped(self) -> int:
        return self.rows_before - self.rows_after


def _adds(dt: Any) -> pd.DataFrame:
    """``path, run_date, mtime_ms`` of each file of ``dt``'s snapshot."""
    import pyarrow as pa

    actions = pa.table(dt.get_add_actions(flatten=True)).to_pandas()  # delta-rs gives an arro3 table
    col = f"partition.{PARTITION_COLUMN}" if f"partition.{PARTITION_COLUMN}" in actions else PARTITION_COLUMN
    mtime = actions["modification_time"]
    if not pd.api.types.is_integer_dtype(mtime):  # a timestamp in other delta-rs versions
        mtime = pd.to_datetime(mtime, utc=True).astype("int64") // 1_000_000
    return pd.DataFrame({"path": actions["path"], "run_date": actions[col], "mtime_ms": mtime.astype("int64")})


def compact(
    spark: Any, root: str, keep_runs: int, *, storage_options: dict[str, str] | None = None, max_attempts: int = 5
) -> CompactResult:
    """Drop the cached vectors that none of the last ``keep_runs`` run dates used (by when each
    date's ``embeddings_used`` partition was last written), and the second copies of keys that
    concurrent runs both stored. One Delta commit rewrites ``embeddings``: it removes only the
    files of the snapshot it read, so vectors a running job appends meanwhile stay, and that
    job's reads of the older snapshot find their files until ``vacuum`` deletes them (a week).
    A vector a running job reused but whose use it has not committed yet may be dropped: that
    job's next run computes it again (cost only; vectors never change for a key)."""
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, CommitProperties
    from pyspark.sql import functions as F

    from listing_dedup.sink.verify import _spark_path

    if keep_runs < 1:
        raise InputError("cache.keep_runs must be >= 1")
    sink = DeltaSink(root, storage_options=storage_options)
    used_uri, emb_uri = sink.table_uri(USED), sink.table_uri(EMBEDDINGS)
    for uri in (used_uri, emb_uri):
        if not DeltaTable.is_deltatable(uri, storage_options):
            raise InputError(f"no embeddings cache at {root}: {uri} is not a Delta table")
    tolerant = False  # after a file of the tables failed to read: skip such files (their vectors go)
    for attempt in range(1, max_attempts + 1):
        used = DeltaTable(used_uri, storage_options=storage_options)  # first: every vector's use is in it
        emb = DeltaTable(emb_uri, storage_options=storage_options)
        used_files = _adds(used)
        latest = used_files.groupby("run_date")["mtime_ms"].max().sort_values(ascending=False)
        dates = tuple(sorted(latest.index[:keep_runs]))
        keep_paths = [
            _spark_path(f"{used_uri.rstrip('/')}/{p}")
            for p in used_files.loc[used_files["run_date"].isin(dates), "path"]
        ]
        emb_files = _adds(emb)
        if emb_files.empty:
            return CompactResult(dates, 0, 0, None)
        schema = spark.createDataFrame([], VECTORS_SCHEMA).schema
        by_date = [
            _read_files(
                spark, schema, [_spark_path(f"{emb_uri.rstrip('/')}/{p}") for p in g["path"]], tolerant=tolerant
            ).withColumn("_date", F.lit(d))
            for d, g in emb_files.groupby("run_date")
        ]
        rows = _union(by_date).persist()
        used_schema = spark.createDataFrame([], USED_SCHEMA).schema
        keys = _read_files(spark, used_schema, keep_paths, tolerant=tolerant).select("key")
        kept = rows.join(keys.distinct(), "key", "left_semi").dropDuplicates(["key"]).persist()
        try:
            try:
                before, after = rows.count(), kept.count()
            except Exception as e:  # noqa: BLE001 - only a file of the cache that cannot be read is handled
                line = "" if tolerant else _line_naming(e, [emb_uri, used_uri])
                if not line:
                    raise
                # the rewrite drops it from the table: the runs that need its vectors recompute them
                log.warning("compact: a file of the cache cannot be read, its rows are dropped: %s", line[:300])
                tolerant = True
                continue
            if after == before and not tolerant:
                log.info("compact %s: nothing to drop (%d vectors, dates %s)", emb_uri, before, ", ".join(dates))
                return CompactResult(dates, before, after, None)
            adds = []
            for d in sorted({r["_date"] for r in kept.select("_date").distinct().collect()}):
                s = sink.stage(kept.where(F.col("_date") == d).drop("_date"), EMBEDDINGS, d)
                adds += [
                    AddAction(
                        path=f.path,
                        size=f.size,
                        partition_values={PARTITION_COLUMN: d},
                        modification_time=f.mtime_ms,
                        data_change=True,
                        stats=f.stats,
                    )
                    for f in s.files
                ]
            try:
                emb.create_write_transaction(
                    adds,
                    mode="overwrite",
                    schema=emb.schema(),
                    partition_by=[PARTITION_COLUMN],
                    commit_properties=CommitProperties(custom_metadata={"listing_dedup.operation": "compact"}),
                )
            except Exception as e:  # noqa: BLE001 - a concurrent compaction: read again
                if attempt == max_attempts:
                    raise SinkError(f"compacting {emb_uri} failed after {attempt} attempts: {first_line(e)}") from e
                log.info("compact %s conflicted (attempt %d), again: %s", emb_uri, attempt, first_line(e))
                continue
        finally:
            kept.unpersist()
            rows.unpersist()
        emb.update_incremental()
        log.info("compact %s: %d -> %d vectors (version %d)", emb_uri, before, after, emb.version())
        return CompactResult(dates, before, after, emb.version())
    raise SinkError(f"compacting {emb_uri} failed")  # not reached
