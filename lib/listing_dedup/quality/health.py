"""Unsupervised health check of a run: what a reviewer without labels looks at first.

:func:`health_check` takes what a run already has -- its final match edges, each listing's
top-1 neighbour score, its groups, and which signals the catalog carries -- and returns a
:class:`Health`: the share of listings matched, matches per listing, the group-size
histogram, the largest groups with sample titles, and warnings when the catalog looks unlike
the one the thresholds (or the re-ranker) were tuned on:

- ``signal_missing``: a signal the model expects (e.g. pHash) is on almost no listing;
- ``top1_shift``: the top-1 score distribution is far from the one recorded at tuning time
  (Kolmogorov-Smirnov distance against the reference's quantiles);
- ``matches_exploding``: far more matches per listing than at tuning time (or than any
  duplicate catalog has);
- ``guard_cut``: the group guard cut most of the match graph (the matches say one thing,
  the groups another).

A :class:`HealthReference` is recorded where the settings are chosen (:func:`reference_from`
on a tuning catalog), and travels as a plain dict (``to_dict`` / ``from_dict``).
Pure functions over pandas/numpy: nothing here reads or writes tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

QUANTILES = tuple(round(q, 2) for q in np.arange(0.05, 0.96, 0.05))
SIZE_BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 50), (51, None))


@dataclass(frozen=True)
class HealthReference:
    """What the settings were tuned on: top-1 score quantiles (at :data:`QUANTILES`), mean
    matches per listing, share of listings matched, and the signals with their coverage."""

    top1_quantiles: tuple[float, ...]
    matches_per_listing: float
    share_matched: float
    signals: Mapping[str, float] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top1_quantiles"] = [float(x) for x in self.top1_quantiles]
        d["signals"] = dict(self.signals)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> HealthReference:
        return cls(
            top1_quantiles=tuple(float(x) for x in d["top1_quantiles"]),
            matches_per_listing=float(d["matches_per_listing"]),
            share_matched=float(d["share_matched"]),
            signals={str(k): float(v) for k, v in dict(d.get("signals", {})).items()},
            source=str(d.get("source", "")),
        )


@dataclass(frozen=True)
class Limits:
    """When a figure becomes a warning."""

    min_signal_coverage: float = 0.05  # an expected signal on fewer listings than this is missing
    max_top1_ks: float = 0.25  # KS distance of the top-1 scores from the reference
    max_matches_ratio: float = 3.0  # mean matches per listing over the reference's ...
    max_matches_per_listing: float = 10.0  # ... or over this, whatever the reference
    max_guard_cut: float = 0.5  # share of match edges whose ends the guard put in different groups


@dataclass(frozen=True)
class Warning_:
    code: str
    message: str


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

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top1_quantiles"] = [float(x) for x in self.top1_quantiles]
        return d


def _bin_name(lo: int, hi: int | None) -> str:
    return f"{lo}" if hi == lo else (f"{lo}-{hi}" if hi is not None else f">{lo - 1}")


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


def ks_to_reference(top1: Sequence[float], ref_quantiles: Sequence[float]) -> float | None:
    """Largest gap between the catalog's CDF at each reference quantile and that quantile's
    level (a Kolmogorov-Smirnov distance read at the reference's quantiles)."""
    t = np.sort(np.asarray(top1, dtype=np.float64))
    t = t[np.isfinite(t)]
    if len(t) == 0 or len(ref_quantiles) != len(QUANTILES):
        return None
    cdf = np.searchsorted(t, np.asarray(ref_quantiles, dtype=np.float64), side="right") / len(t)
    return float(np.max(np.abs(cdf - np.asarray(QUANTILES))))


def _undirected(edges: pd.DataFrame) -> pd.DataFrame:
    e = edges[["src", "dst"]].astype(str)
    e = e[e["src"] != e["dst"]]
    a = np.where(e["src"] < e["dst"], e["src"], e["dst"])
    b = np.where(e["src"] < e["dst"], e["dst"], e["src"])
    return pd.DataFrame({"a": a, "b": b}).drop_duplicates(ignore_index=True)


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
    """The run's health.

    ``ids``: every listing of the run. ``edges``: the final match edges ``src, dst`` (one or
    both directions; pHash and re-ranker edges included). ``groups``: ``posting_id,
    group_id`` after the guard. ``top1``: each listing's best neighbour score in the final
    search (listings without a neighbour may be left out). ``signals``: share of listings
    carrying each signal (``{"phash": 0.0, "text": 1.0}``). ``expected_signals``: the signals
    the settings or the model were tuned with (default: those of ``reference``)."""
    ids = pd.Index(pd.Series(list(ids), dtype=str).unique())
    n = len(ids)
    und = _undirected(edges)
    und = und[und["a"].isin(ids) & und["b"].isin(ids)]
    deg = pd.concat([und["a"], und["b"]]).value_counts().reindex(ids, fill_value=0).to_numpy()
    share_matched = float((deg > 0).mean()) if n else 0.0
    mpl = float(deg.mean()) if n else 0.0

    g = groups[["posting_id", "group_id"]].astype(str).drop_duplicates("posting_id").set_index("posting_id")
    gid = g["group_id"].reindex(ids)
    gid = gid.where(gid.notna(), pd.Series(ids, index=ids))  # a listing without a group is its own
    sizes = gid.map(gid.value_counts()).to_numpy()
    hist = size_histogram(sizes)
    largest = []
    counts = gid.value_counts()
    counts = counts[counts > 1]
    top_groups = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_largest]
    for group_id, size in top_groups:
        members = sorted(gid.index[gid.to_numpy() == group_id])
        sample = [str(titles[m]) for m in members[:n_titles] if m in titles] if titles is not None else []
        largest.append({"group_id": group_id, "size": int(size), "titles": sample})

    if len(und):
        cut = gid.reindex(und["a"]).to_numpy() != gid.reindex(und["b"]).to_numpy()
        guard_cut = float(cut.mean())
    else:
        guard_cut = 0.0

    t1 = pd.Series(top1, dtype=np.float64) if not isinstance(top1, pd.Series) else top1.astype(np.float64)
    t1 = t1[t1.index.astype(str).isin(ids)]
    quant = top1_quantiles(t1.to_numpy())
    ks = ks_to_reference(t1.to_numpy(), reference.top1_quantiles) if reference is not None else None

    warnings: list[Warning_] = []
    expected = list(expected_signals) or ([s for s in reference.signals] if reference is not None else [])
    for s in expected:
        cov = float(signals.get(s, 0.0))
        if cov < limits.min_signal_coverage:
            warnings.append(
                Warning_(
                    "signal_missing",
                    f"signal {s} is on {cov:.1%} of the listings but the settings were tuned with it: "
                    "scores and thresholds do not mean what they meant at tuning time",
                )
            )
    if ks is not None and ks > limits.max_top1_ks:
        warnings.append(
            Warning_(
                "top1_shift",
                f"top-1 neighbour scores are far from the tuning catalog's (KS distance {ks:.2f} > "
                f"{limits.max_top1_ks}; median {quant[len(quant) // 2]:.3f} vs "
                f"{reference.top1_quantiles[len(QUANTILES) // 2]:.3f}): re-tune on labelled listings of this catalog",
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
                f"{mpl:.2f} matches per listing{ref_txt}, max {int(deg.max()) if n else 0}: "
                "the settings over-merge this catalog",
            )
        )
    if len(und) and guard_cut > limits.max_guard_cut:
        warnings.append(
            Warning_(
                "guard_cut",
                f"the group guard cut {guard_cut:.0%} of the match edges: matches and groups disagree, "
                "the match graph chains unrelated listings",
            )
        )
    return Health(
        n_listings=n,
        share_matched=share_matched,
        matches_per_listing=mpl,
        matches_per_listing_p99=float(np.quantile(deg, 0.99)) if n else 0.0,
        max_matches=int(deg.max()) if n else 0,
        n_edges=len(und),
        size_histogram=hist,
        largest_groups=largest,
        top1_quantiles=quant,
        top1_ks=ks,
        guard_cut_share=guard_cut,
        signals={str(k): float(v) for k, v in signals.items()},
        warnings=warnings,
    )


def reference_from(
    ids: Sequence[str],
    edges: pd.DataFrame,
    top1: Mapping[str, float] | pd.Series,
    signals: Mapping[str, float],
    source: str = "",
) -> HealthReference:
    """The reference to record at tuning time, from a run on the tuning catalog."""
    ids = pd.Index(pd.Series(list(ids), dtype=str).unique())
    und = _undirected(edges)
    deg = pd.concat([und["a"], und["b"]]).value_counts().reindex(ids, fill_value=0).to_numpy()
    t1 = pd.Series(top1, dtype=np.float64) if not isinstance(top1, pd.Series) else top1.astype(np.float64)
    return HealthReference(
        top1_quantiles=top1_quantiles(t1[t1.index.astype(str).isin(ids)].to_numpy()),
        matches_per_listing=float(deg.mean()) if len(ids) else 0.0,
        share_matched=float((deg > 0).mean()) if len(ids) else 0.0,
        signals={s: float(v) for s, v in signals.items() if v >= Limits().min_signal_coverage},
        source=source,
    )
