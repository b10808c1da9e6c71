"""Unsupervised health check of a run: what a reviewer without labels looks at first.

The check is one pure decision, :func:`decide`, over a run's *aggregates*
(:class:`HealthInputs`: counts, a group-size histogram, top-1 score quantiles and the share of
top-1 scores under each reference quantile, signal coverage, the few largest groups with
sample titles). None of them grows with the catalog, so the job computes them in Spark
(:mod:`listing_dedup.quality.run_health`) and only they reach the driver;
:func:`inputs_from_frames` computes the same aggregates from pandas frames (tests, the
re-ranker's training, the reference script), and :func:`health_check` is the two together.

:func:`decide` returns a :class:`Health`: the share of listings matched, matches per listing,
the group-size histogram, the largest groups, and warnings when the catalog looks unlike the
one the thresholds (or the re-ranker) were tuned on:

- ``signal_missing``: a signal the settings were tuned with (e.g. pHash) is on almost no listing;
- ``top1_shift``: the distribution of each listing's top-1 neighbour score (the fused score
  of the final search) is far from the one recorded at tuning time (Kolmogorov-Smirnov
  distance read at the reference's quantiles, with a slack of 0.01 on the score axis);
- ``matches_exploding``: far more matches per listing than at tuning time (or than any
  duplicate catalog has: the absolute limit applies with or without a reference);
- ``guard_cut``: the group guard cut most of the match graph (the matches say one thing,
  the groups another);
- ``codes_differ``: most listings match several others while the titles of most matched pairs
  that both carry product codes share none (:mod:`listing_dedup.embed.identifiers`): one
  product range merged across its models (a TV range's "XX40A550" with its "XX52A650"). Read
  on a sample of the match edges (:data:`CODE_SAMPLE`).

A :class:`HealthReference` is recorded where the settings are chosen (the re-ranker's model
directory, ``health_reference.json``; the conf defaults' in
:mod:`listing_dedup.quality.health_defaults`) and travels as a plain dict (``to_dict`` /
``from_dict``). Without one, ``top1_shift`` is not checked and ``matches_exploding`` uses its
absolute limit only; the Health says so in ``notes``.
Pure functions over pandas/numpy: nothing here reads or writes tables.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

QUANTILES = tuple(round(q, 2) for q in np.arange(0.05, 0.96, 0.05))
SIZE_BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 50), (51, None))
REFERENCE_FILE = "health_reference.json"  # in a re-ranker's model directory
WARNING_CODES = ("signal_missing", "top1_shift", "matches_exploding", "guard_cut", "codes_differ", "rerank_fallback")
CODE_SAMPLE = 20_000  # match edges whose titles the codes_differ check compares (a sample: bounded cost)


@dataclass(frozen=True)
class HealthReference:
    """What the settings were tuned on: quantiles (at :data:`QUANTILES`) of each listing's
    top-1 neighbour score (``score``: ``fused``, the final search's fused score, for the
    threshold rule and the re-ranker alike: the catalog's shape as the pipeline sees it, before
    any model), mean matches per listing, share of listings matched, the signals with their
    coverage, and the ``settings`` it was recorded under."""

    top1_quantiles: tuple[float, ...]
    matches_per_listing: float
    share_matched: float
    signals: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    score: str = "fused"
    settings: Mapping = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top1_quantiles"] = [float(x) for x in self.top1_quantiles]
        d["signals"] = dict(self.signals)
        d["settings"] = json.loads(json.dumps(self.settings))
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> HealthReference:
        return cls(
            top1_quantiles=tuple(float(x) for x in d["top1_quantiles"]),
            matches_per_listing=float(d["matches_per_listing"]),
            share_matched=float(d["share_matched"]),
            signals={str(k): float(v) for k, v in dict(d.get("signals", {})).items()},
            source=str(d.get("source", "")),
            score=str(d.get("score", "fused")),
            settings=dict(d.get("settings", {})),
        )

    @classmethod
    def from_inputs(
        cls, x: HealthInputs, *, source: str = "", score: str = "fused", settings: Mapping | None = None
    ) -> HealthReference:
        """The reference a run on a tuning catalog records (signals on fewer listings than
        :attr:`Limits.min_signal_coverage` are not expected of later catalogs)."""
        return cls(
            top1_quantiles=tuple(x.top1_quantiles),
            matches_per_listing=x.matches_per_listing,
            share_matched=x.share_matched,
            signals={s: float(v) for s, v in x.signals.items() if v >= Limits().min_signal_coverage},
            source=source,
            score=score,
            settings=dict(settings or {}),
        )


def write_reference_file(path: str | Path, ref: HealthReference) -> Path:
    """``ref`` as JSON at ``path`` (a model directory's :data:`REFERENCE_FILE`, or the file
    jobs/tune.py writes beside its overlay)."""
    path = Path(path)
    path.write_text(json.dumps(ref.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_reference_file(path) -> HealthReference:
    """``path``: a file path, or a resource (``importlib.resources``: the shipped re-ranker's)."""
    path = Path(path) if isinstance(path, str) else path
    return HealthReference.from_dict(json.loads(path.read_text()))


def write_reference(directory: str | Path, ref: HealthReference) -> Path:
    return write_reference_file(Path(directory) / REFERENCE_FILE, ref)


def read_reference(directory: str | Path) -> HealthReference | None:
    """The reference in ``directory`` (None when it has none: a model directory written
    before references were recorded)."""
    from listing_dedup.graph.rerank import model_dir_of

    path = model_dir_of(directory) / REFERENCE_FILE  # a path, or the shipped re-ranker's resource
    if not path.is_file():
        return None
    return read_reference_file(path)


@dataclass(frozen=True)
class Limits:
    """When a figure becomes a warning."""

    min_signal_coverage: float = 0.05  # an expected signal on fewer listings than this is missing
    max_top1_ks: float = 0.25  # KS distance of the top-1 scores from the reference ...
    top1_slack: float = 0.01  # ... once each catalog quantile may sit this far from the reference's
    max_matches_ratio: float = 3.0  # mean matches per listing over the reference's ...
    max_matches_per_listing: float = 10.0  # ... or over this, whatever the reference
    max_guard_cut: float = 0.5  # share of match edges whose ends the guard put in different groups
    # codes_differ: over this share of the sampled matched pairs whose titles both carry codes
    # share none, while over codes_min_matched of the listings are matched with at least
    # codes_min_matches matches a listing, and at least codes_min_pairs such pairs were compared
    max_code_conflicts: float = 0.5
    codes_min_matched: float = 0.5
    codes_min_matches: float = 2.0
    codes_min_pairs: int = 50


@dataclass(frozen=True)
class Warning_:
    code: str
    message: str


@dataclass(frozen=True)
class HealthInputs:
    """A run's aggregates: all the decision reads. ``top1_cdf`` / ``top1_cdf_high``: the share
    of the top-1 scores at or below each quantile of the reference minus / plus the slack
    (None without a reference; ``top1_cdf_high`` None: no slack, the same as ``top1_cdf``).
    ``matches_p99``: 99th percentile of the match counts of the listings that have one."""

    n_listings: int
    n_matched: int  # listings with at least one match
    n_edges: int  # undirected match edges
    max_matches: int
    matches_p99: float
    size_histogram: dict[str, int]  # listings per group-size bin
    largest_groups: list[dict]  # group_id, size, titles (a sample), largest first
    n_top1: int  # listings with a top-1 score
    top1_quantiles: tuple[float, ...]  # at QUANTILES (empty when no listing has a neighbour)
    top1_cdf: tuple[float, ...] | None
    n_guard_cut: int  # match edges whose ends are in different groups
    signals: dict[str, float]  # share of listings carrying each signal
    top1_cdf_high: tuple[float, ...] | None = None
    n_code_pairs: int = 0  # sampled match edges whose two titles both carry product codes ...
    n_code_conflicts: int = 0  # ... and of those, the ones sharing no code

    @property
    def share_matched(self) -> float:
        return self.n_matched / self.n_listings if self.n_listings else 0.0

    @property
    def matches_per_listing(self) -> float:
        return 2 * self.n_edges / self.n_listings if self.n_listings else 0.0


@dataclass(frozen=True)
class Health:
    n_listings: int
    share_matched: float
    matches_per_listing: float
    matches_per_listing_p99: float
    max_matches: int
    n_edges: int
    size_histogram: dict[str, int]  # listings per group-size bin
    largest_groups: list[dict]  # group_id, size, titles (a sample)
    top1_quantiles: tuple[float, ...]
    top1_ks: float | None
    guard_cut_share: float
    signals: dict[str, float]
    warnings: list[Warning_]
    reference: str = ""  # the reference's source; "" = none (absolute rules)
    score: str = "fused"  # the score the top-1 figures are of
    notes: list[str] = field(default_factory=list)
    code_conflict_share: float | None = None  # of the sampled matched pairs with codes on both titles, none shared
    # the threshold the run's edges were kept at, on its ``score`` as applied (the titles model's is
    # prior-shifted to the catalog, so not the conf's): what the review-queue command ranks against
    edge_threshold: float | None = None

    @property
    def ok(self) -> bool:
        return not self.warnings

    @property
    def warning_codes(self) -> list[str]:
        return [w.code for w in self.warnings]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top1_quantiles"] = [float(x) for x in self.top1_quantiles]
        return d

    def as_lines(self) -> list[str]:
        """The summary's health section (without indentation)."""
        q = dict(zip(QUANTILES, self.top1_quantiles, strict=False))
        hist = ", ".join(f"{k}: {v}" for k, v in self.size_histogram.items())
        lines = [
            f"matched {self.share_matched:.1%} of {self.n_listings} listings, {self.matches_per_listing:.2f} "
            f"matches a listing (p99 {self.matches_per_listing_p99:g}, max {self.max_matches})",
            f"listings per group size  {hist}",
        ]
        if q:
            ks = f", KS {self.top1_ks:.2f} from the reference" if self.top1_ks is not None else ""
            lines.append(
                f"top-1 {self.score} score  p5 {q[0.05]:.3f}, p50 {q[0.5]:.3f}, p95 {q[0.95]:.3f}{ks}; "
                f"guard cut {self.guard_cut_share:.0%} of the match edges"
            )
        if self.code_conflict_share is not None:
            share = self.code_conflict_share
            lines.append(f"matched pairs with product codes on both titles sharing none  {share:.0%}")
        if self.signals:
            lines.append("signals  " + ", ".join(f"{s} {v:.0%}" for s, v in sorted(self.signals.items())))
        for g in self.largest_groups:
            titles = " | ".join(t[:60] for t in g["titles"])
            lines.append(f"largest group {g['group_id']} ({g['size']}): {titles}")
        lines.append(f"reference  {self.reference or 'none (absolute rules)'}")
        lines.extend(f"note  {n}" for n in self.notes)
        if self.ok:
            lines.append("warnings  none")
        lines.extend(f"WARNING {w.code}: {w.message}" for w in self.warnings)
        return lines


def _bin_name(lo: int, hi: int | None) -> str:
    return f"{lo}" if hi == lo else (f"{lo}-{hi}" if hi is not None else f">{lo - 1}")


BIN_NAMES = tuple(_bin_name(lo, hi) for lo, hi in SIZE_BINS)


def size_histogram(group_sizes_per_listing: np.ndarray) -> dict[str, int]:
    """Listings per group-size bin (1 = unmatched singletons)."""
    s = np.asarray(group_sizes_per_listing)
    out = {}
    for lo, hi in SIZE_BINS:
        m = (s >= lo) & (s <= (hi if hi is not None else np.inf))
        out[_bin_name(lo, hi)] = int(m.sum())
    return out


def top1_quantiles(top1: Sequence[float]) -> tuple[float, ...]:
    t = np.asarray(top1, dtype=np.float64)
    t = t[np.isfinite(t)]
    if len(t) == 0:
        return ()
    return tuple(float(x) for x in np.quantile(t, QUANTILES))


def cdf_at(top1: Sequence[float], points: Sequence[float]) -> tuple[float, ...] | None:
    """Share of the (finite) ``top1`` scores at or below each of ``points`` (None when there is none)."""
    t = np.sort(np.asarray(top1, dtype=np.float64))
    t = t[np.isfinite(t)]
    if len(t) == 0:
        return None
    return tuple(float(x) for x in np.searchsorted(t, np.asarray(points, dtype=np.float64), side="right") / len(t))


def ks_from_cdf(cdf: Sequence[float] | None, cdf_high: Sequence[float] | None = None) -> float | None:
    """Largest gap between the catalog's CDF at each reference quantile and that quantile's
    level (a Kolmogorov-Smirnov distance read at the reference's quantiles). With
    ``cdf_high`` (the CDF at each quantile plus a slack, ``cdf`` then at the quantile minus
    it) a level between the two is no gap: a catalog quantile within the slack of the
    reference's counts as equal (a Levy-style tolerance; without it a plateau of equal scores,
    common in a model's probabilities, turns a shift of 0.001 into a large distance)."""
    if cdf is None or len(cdf) != len(QUANTILES):
        return None
    lo = np.asarray(cdf, dtype=np.float64)
    hi = lo if cdf_high is None else np.asarray(cdf_high, dtype=np.float64)
    lv = np.asarray(QUANTILES)
    return float(np.max(np.maximum.reduce([lo - lv, lv - hi, np.zeros_like(lv)])))


def ks_to_reference(top1: Sequence[float], ref_quantiles: Sequence[float]) -> float | None:
    if len(ref_quantiles) != len(QUANTILES):
        return None
    return ks_from_cdf(cdf_at(top1, ref_quantiles))


def code_conflict_counts(title_pairs) -> tuple[int, int]:
    """(pairs whose two titles both carry product codes, those of them sharing no code) over
    ``(title_a, title_b)`` pairs (:mod:`listing_dedup.embed.identifiers`)."""
    from listing_dedup.embed.identifiers import title_codes

    cache: dict[str, frozenset] = {}

    def codes(t) -> frozenset:
        key = "" if t is None or (isinstance(t, float) and t != t) else str(t)
        got = cache.get(key)
        if got is None:
            got = cache[key] = frozenset(title_codes(key))
        return got

    both = conflicts = 0
    for ta, tb in title_pairs:
        a, b = codes(ta), codes(tb)
        if a and b:
            both += 1
            conflicts += not (a & b)
    return both, conflicts


def _undirected(edges: pd.DataFrame) -> pd.DataFrame:
    e = edges[["src", "dst"]].astype(str)
    e = e[e["src"] != e["dst"]]
    a = np.where(e["src"] < e["dst"], e["src"], e["dst"])
    b = np.where(e["src"] < e["dst"], e["dst"], e["src"])
    return pd.DataFrame({"a": a, "b": b}).drop_duplicates(ignore_index=True)


def inputs_from_frames(
    ids: Sequence[str],
    edges: pd.DataFrame,
    groups: pd.DataFrame,
    top1: Mapping[str, float] | pd.Series,
    signals: Mapping[str, float],
    *,
    ref_quantiles: Sequence[float] | None = None,
    slack: float = 0.0,
    titles: Mapping[str, str] | pd.Series | None = None,
    n_largest: int = 5,
    n_titles: int = 5,
) -> HealthInputs:
    """The aggregates of a run held in pandas frames.

    ``ids``: every listing of the run. ``edges``: the final match edges ``src, dst`` (one or
    both directions; pHash and re-ranker edges included). ``groups``: ``posting_id,
    group_id`` after the guard. ``top1``: each listing's best neighbour score (listings
    without a neighbour may be left out). ``signals``: share of listings carrying each signal
    (``{"phash": 0.0, "text": 1.0}``). ``ref_quantiles``: the reference's top-1 quantiles
    (for ``top1_cdf``, read ``slack`` below and above them)."""
    ids = pd.Index(pd.Series(list(ids), dtype=str).unique())
    n = len(ids)
    und = _undirected(edges)
    und = und[und["a"].isin(ids) & und["b"].isin(ids)]
    deg = pd.concat([und["a"], und["b"]]).value_counts().reindex(ids, fill_value=0).to_numpy()

    g = groups[["posting_id", "group_id"]].astype(str).drop_duplicates("posting_id").set_index("posting_id")
    gid = g["group_id"].reindex(ids)
    gid = gid.where(gid.notna(), pd.Series(ids, index=ids))  # a listing without a group is its own
    counts = gid.value_counts()
    hist = size_histogram(gid.map(counts).to_numpy())
    largest = []
    top_groups = sorted(counts[counts > 1].items(), key=lambda kv: (-kv[1], kv[0]))[:n_largest]
    for group_id, size in top_groups:
        members = sorted(gid.index[gid.to_numpy() == group_id])
        sample = [str(titles[m]) for m in members[:n_titles] if m in titles] if titles is not None else []
        largest.append({"group_id": group_id, "size": int(size), "titles": sample})
    cut = int((gid.reindex(und["a"]).to_numpy() != gid.reindex(und["b"]).to_numpy()).sum()) if len(und) else 0

    n_code_pairs = n_code_conflicts = 0
    if titles is not None and len(und):
        tl = pd.Series(titles) if not isinstance(titles, pd.Series) else titles
        tl.index = tl.index.astype(str)
        sample = und.sample(n=min(len(und), CODE_SAMPLE), random_state=0) if len(und) > CODE_SAMPLE else und
        n_code_pairs, n_code_conflicts = code_conflict_counts(
            zip(tl.reindex(sample["a"]).tolist(), tl.reindex(sample["b"]).tolist(), strict=True)
        )

    t1 = pd.Series(top1, dtype=np.float64) if not isinstance(top1, pd.Series) else top1.astype(np.float64)
    t1 = t1[t1.index.astype(str).isin(ids)]
    t1 = t1[np.isfinite(t1.to_numpy())].to_numpy()
    rq = np.asarray(ref_quantiles, dtype=np.float64) if ref_quantiles is not None else None
    matched = deg[deg > 0]
    return HealthInputs(
        n_listings=n,
        n_matched=int((deg > 0).sum()),
        n_edges=len(und),
        max_matches=int(deg.max()) if n else 0,
        matches_p99=float(np.quantile(matched, 0.99)) if len(matched) else 0.0,
        size_histogram=hist,
        largest_groups=largest,
        n_top1=len(t1),
        top1_quantiles=top1_quantiles(t1),
        top1_cdf=cdf_at(t1, rq - slack) if rq is not None else None,
        n_guard_cut=cut,
        signals={str(k): float(v) for k, v in signals.items()},
        top1_cdf_high=cdf_at(t1, rq + slack) if rq is not None and slack else None,
        n_code_pairs=n_code_pairs,
        n_code_conflicts=n_code_conflicts,
    )


def decide(
    x: HealthInputs,
    *,
    reference: HealthReference | None = None,
    expected_signals: Sequence[str] = (),
    limits: Limits = Limits(),
    reference_note: str = "",
) -> Health:
    """The run's health from its aggregates. ``expected_signals``: the signals the settings
    or the model were tuned with (default: those of ``reference``). ``reference_note``: why
    there is no reference (shown in ``notes``)."""
    n = x.n_listings
    mpl = x.matches_per_listing
    guard_cut = x.n_guard_cut / x.n_edges if x.n_edges else 0.0
    quant = tuple(x.top1_quantiles)
    ks = None
    if reference is not None and x.top1_cdf is not None:
        ks = ks_from_cdf(x.top1_cdf, x.top1_cdf_high)
    notes: list[str] = []
    if reference is None:
        why = f" ({reference_note})" if reference_note else ""
        notes.append(
            f"no health reference for these settings{why}: top1_shift is not checked and matches_exploding "
            f"uses the absolute limit only (> {limits.max_matches_per_listing:g} matches a listing)"
        )
    elif ks is None:
        notes.append("no listing has a neighbour score: top1_shift is not checked")

    warnings: list[Warning_] = []
    expected = list(expected_signals) or ([s for s in reference.signals] if reference is not None else [])
    for s in expected:
        cov = float(x.signals.get(s, 0.0))
        if cov < limits.min_signal_coverage:
            warnings.append(
                Warning_(
                    "signal_missing",
                    f"signal {s} is on {cov:.1%} of the listings but the settings were tuned with it: "
                    "scores and thresholds do not mean what they meant at tuning time",
                )
            )
    if ks is not None and ks > limits.max_top1_ks:
        mid = len(QUANTILES) // 2
        warnings.append(
            Warning_(
                "top1_shift",
                f"top-1 neighbour scores are far from the tuning catalog's (KS distance {ks:.2f} > "
                f"{limits.max_top1_ks}; median {quant[mid]:.3f} vs {reference.top1_quantiles[mid]:.3f}): "
                "re-tune on labelled listings of this catalog",
            )
        )
    ref_mpl = reference.matches_per_listing if reference is not None else None
    too_many = mpl > limits.max_matches_per_listing or (
        ref_mpl is not None and ref_mpl > 0 and mpl > limits.max_matches_ratio * ref_mpl
    )
    if too_many:
        ref_txt = f" (tuning catalog: {ref_mpl:.2f})" if ref_mpl is not None else ""
        warnings.append(
            Warning_(
                "matches_exploding",
                f"{mpl:.2f} matches per listing{ref_txt}, max {x.max_matches}: the settings over-merge this catalog",
            )
        )
    code_share = x.n_code_conflicts / x.n_code_pairs if x.n_code_pairs else 0.0
    if (
        x.n_code_pairs >= limits.codes_min_pairs
        and code_share > limits.max_code_conflicts
        and x.share_matched > limits.codes_min_matched
        and mpl >= limits.codes_min_matches
    ):
        warnings.append(
            Warning_(
                "codes_differ",
                f"{x.share_matched:.0%} of the listings are matched, {mpl:.2f} matches a listing, and "
                f"{code_share:.0%} of the matched pairs whose titles both carry product codes share none "
                f"({x.n_code_conflicts} of {x.n_code_pairs} compared): the matches merge a product range across "
                "its models; where codes decide identity, train a re-ranker on labelled listings of this catalog",
            )
        )
    if x.n_edges and guard_cut > limits.max_guard_cut:
        warnings.append(
            Warning_(
                "guard_cut",
                f"the group guard cut {guard_cut:.0%} of the match edges: matches and groups disagree, "
                "the match graph chains unrelated listings",
            )
        )
    return Health(
        n_listings=n,
        share_matched=x.share_matched,
        matches_per_listing=mpl,
        matches_per_listing_p99=float(x.matches_p99),
        max_matches=int(x.max_matches),
        n_edges=int(x.n_edges),
        size_histogram=dict(x.size_histogram),
        largest_groups=list(x.largest_groups),
        top1_quantiles=quant,
        top1_ks=ks,
        guard_cut_share=guard_cut,
        signals=dict(x.signals),
        warnings=warnings,
        reference=reference.source if reference is not None else "",
        score=reference.score if reference is not None else "fused",
        notes=notes,
        code_conflict_share=code_share if x.n_code_pairs else None,
    )


def with_fallback(health: Health, refused: Health) -> Health:
    """``health`` (the threshold rule's run) with a ``rerank_fallback`` warning first: the
    re-ranker's run of the same catalog raised ``refused``'s warnings, so the rule's edges and
    groups were written instead (``rerank.fallback: rule``)."""
    why = "; ".join(f"{w.code}: {w.message}" for w in refused.warnings)
    w = Warning_(
        "rerank_fallback",
        f"the re-ranker's run was flagged ({why}); the tables hold the threshold rule's matches and groups",
    )
    return dataclasses.replace(health, warnings=[w, *health.warnings])


def health_check(
    ids: Sequence[str],
    edges: pd.DataFrame,
    groups: pd.DataFrame,
    top1: Mapping[str, float] | pd.Series,
    signals: Mapping[str, float],
    *,
    expected_signals: Sequence[str] = (),
    reference: HealthReference | None = None,
    titles: Mapping[str, str] | pd.Series | None = None,
    limits: Limits = Limits(),
    n_largest: int = 5,
    n_titles: int = 5,
) -> Health:
    """The health of a run held in pandas frames: :func:`inputs_from_frames` then :func:`decide`."""
    x = inputs_from_frames(
        ids,
        edges,
        groups,
        top1,
        signals,
        ref_quantiles=reference.top1_quantiles if reference is not None else None,
        slack=limits.top1_slack,
        titles=titles,
        n_largest=n_largest,
        n_titles=n_titles,
    )
    return decide(x, reference=reference, expected_signals=expected_signals, limits=limits)


def reference_from(
    ids: Sequence[str],
    edges: pd.DataFrame,
    top1: Mapping[str, float] | pd.Series,
    signals: Mapping[str, float],
    source: str = "",
    *,
    score: str = "fused",
    settings: Mapping | None = None,
) -> HealthReference:
    """The reference to record at tuning time, from a run on the tuning catalog (several
    catalogs: give their listings distinct ids and pass them together)."""
    x = inputs_from_frames(ids, edges, pd.DataFrame(columns=["posting_id", "group_id"]), top1, signals)
    return HealthReference.from_inputs(x, source=source, score=score, settings=settings)
