"""Catalogs shaped unlike Shopee's training file, and their scoring (issue 15's robustness suite).

The Shopee dev file has a duplicate for every listing (groups of 2-51); a live catalog has
mostly singletons, other shops have other densities. These pure functions cut catalogs of
other shapes out of labelled listings (columns ``posting_id, title, image_phash,
label_group``, plus ``fold`` for the Shopee file) and score a run on them:

- :func:`singletons_catalog`: a base catalog plus as many listings again drawn one per group
  from a pool of other groups (their group-mates left out), so about half the catalog has
  no duplicate;
- :func:`pairs_catalog`: every group cut to 2 listings;
- :func:`size_catalog`: whole groups drawn until the catalog holds ``n`` listings;
- :func:`sample_catalog`: the generated sample (:mod:`listing_dedup.quality.sample`) with the
  rows the job's reader keeps.

:func:`cluster_scores` is the row-wise F1 of a grouping (each listing's predicted set = its
group), :func:`guarded_groups` the job's components plus its ``split`` guard on row indices.
``bench/robust.py`` runs the suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from listing_dedup.graph.guard import margin_keep, split_large_numpy
from listing_dedup.ingest.rows import ATTRIBUTES, listing_attributes
from listing_dedup.ingest.titles import clean_title

COLUMNS = ["posting_id", "title", "image_phash", "label_group"]
# optional listing attributes a catalog may carry (other shops' files; never required): ATTRIBUTES,
# ingest/rows.py's
OTHER_SHOPS = ("amazon_google", "walmart_amazon", "wdc_products")  # ../shared/data/other_shops/<name>.csv
_HEX16 = r"[0-9a-fA-F]{16}"


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df[[c for c in [*COLUMNS, *ATTRIBUTES, "fold"] if c in df.columns]].reset_index(drop=True)
    out["posting_id"] = out["posting_id"].astype(str)
    out["label_group"] = out["label_group"].astype(str)
    return out


def labelled_listings(df: pd.DataFrame, max_title_chars: int = 1000) -> pd.DataFrame:
    """Labelled listings as the job sees them: titles cleaned like the reader cleans them,
    malformed pHashes set to None, duplicate ids dropped (first kept)."""
    out = df.dropna(subset=["posting_id"]).copy()
    out["posting_id"] = out["posting_id"].astype(str)
    out = out[out["posting_id"].str.strip() != ""].drop_duplicates("posting_id")
    out["title"] = out["title"].map(lambda t: clean_title(t, max_title_chars))
    ph = out["image_phash"] if "image_phash" in out.columns else pd.Series(None, index=out.index, dtype=object)
    ok = ph.notna() & ph.astype(str).str.fullmatch(_HEX16)
    out["image_phash"] = np.where(ok, ph.astype(str).str.lower(), None)
    has_title = out["title"].str.len() > 0
    attrs = listing_attributes(out)  # cleaned as the reader cleans them (a bad value nulled)
    out = out.assign(**{a: attrs[a] for a in attrs.columns})
    return _frame(out[has_title | ok])


def groups_disjoint(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return not set(a["label_group"]) & set(b["label_group"])


def singletons_catalog(base: pd.DataFrame, pool: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``base`` plus one listing from each of ``len(base)`` groups of ``pool`` (fewer when the
    pool has fewer groups), each alone in the catalog: its group-mates are not added."""
    rng = np.random.default_rng(seed)
    pool = pool[~pool["label_group"].isin(set(base["label_group"]))]
    shuffled = pool.iloc[rng.permutation(len(pool))]
    one = shuffled.drop_duplicates("label_group")
    one = one.iloc[: len(base)]
    return _frame(pd.concat([base, one], ignore_index=True))


def pairs_catalog(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every group cut to 2 of its listings (drawn at random; groups of one are dropped)."""
    rng = np.random.default_rng(seed)
    shuffled = df.iloc[rng.permutation(len(df))]
    rank = shuffled.groupby("label_group").cumcount()
    size = shuffled.groupby("label_group")["posting_id"].transform("size")
    out = shuffled[(rank < 2) & (size >= 2)]
    return _frame(out.sort_index())


def size_catalog(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Whole groups of ``df`` in random order until the catalog holds at least ``n`` listings
    (all of ``df`` when it holds fewer)."""
    rng = np.random.default_rng(seed)
    sizes = df.groupby("label_group").size()
    order = sizes.index[rng.permutation(len(sizes))]
    total = np.cumsum(sizes.loc[order].to_numpy())
    cut = int(np.searchsorted(total, n)) + 1
    chosen = set(order[:cut])
    return _frame(df[df["label_group"].isin(chosen)])


def sample_catalog(n_products: int = 400, seed: int = 7, max_title_chars: int = 1000) -> pd.DataFrame:
    """The generated sample (``jobs/make_sample.py --products n --seed s``): the listings the
    job keeps that have a known group (the ones ``jobs/evaluate.py`` scores)."""
    from listing_dedup.quality.sample import generate_catalog

    s = generate_catalog(n_products, seed=seed)
    truth = s.truth[["posting_id", "label_group"]].astype(str).drop_duplicates("posting_id")
    listings = s.listings.assign(_row=np.arange(len(s.listings))).dropna(subset=["posting_id"])
    labelled = listings.merge(truth, on="posting_id", how="inner").sort_values("_row")
    return labelled_listings(labelled.drop(columns="_row"), max_title_chars)


# the two-source catalogs: the posting_id prefix of each source's listings (the data README: two
# shops' files, Amazon + GoogleProducts and Walmart + Amazon; walmart_amazon's "each source is
# duplicate-free; matches are across sources"). wdc_products' offers come from many shops, unnamed.
SOURCE_PREFIXES = {"amazon_google": ("ag_a_", "ag_g_"), "walmart_amazon": ("wa_w_", "wa_a_")}


def source_of(posting_ids: pd.Series, prefixes: Sequence[str]) -> pd.Series:
    """Each listing's source: the one of ``prefixes`` its id starts with (None when none)."""
    out = pd.Series([None] * len(posting_ids), index=posting_ids.index, dtype=object)
    for pre in prefixes:
        out[posting_ids.astype(str).str.startswith(pre) & out.isna()] = pre.rstrip("_")
    return out


def other_shop_catalog(path: str | Path, max_title_chars: int = 1000, sources: bool = True) -> pd.DataFrame:
    """One of ../shared/data/other_shops' catalogs (``posting_id, title, label_group`` and the
    attributes its source has; no pHash) as the job sees it; its ``modelno`` column is read as the
    optional ``model`` attribute. With ``sources``, a two-source catalog (:data:`SOURCE_PREFIXES`)
    gets the optional ``source`` attribute from its ids, as a shop matching two catalogs would give it."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    prefixes = SOURCE_PREFIXES.get(Path(path).stem)
    if sources and prefixes and "source" not in df.columns:
        df["source"] = source_of(df["posting_id"], prefixes)
    return labelled_listings(df.rename(columns={"modelno": "model"}), max_title_chars)


def other_shops_suite(
    root: str | Path, names: Sequence[str] = OTHER_SHOPS, max_title_chars: int = 1000, sources: bool = True
) -> dict:
    """The other shops' catalogs found under ``root`` (each searched among itself)."""
    root = Path(root)
    return {
        n: other_shop_catalog(root / f"{n}.csv", max_title_chars, sources)
        for n in names
        if (root / f"{n}.csv").exists()
    }


def shopee_suite(dev: pd.DataFrame, report_fold: int = 1, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The suite's Shopee catalogs, built around the reporting fold (settings are never chosen
    on these): the fold itself (the 7k size), singletons (pool: the other folds), pairs, 2k
    and all folds together (27k)."""
    base = dev[dev["fold"].astype(int) == report_fold]
    rest = dev[dev["fold"].astype(int) != report_fold]
    return {
        f"shopee_f{report_fold}_7k": _frame(base),
        "singletons": singletons_catalog(base, rest, seed),
        "pairs": pairs_catalog(base, seed),
        "size_2k": size_catalog(base, 2000, seed),
        "size_27k": _frame(dev),
    }


def tuning_suite(dev: pd.DataFrame, tune_folds: Sequence[int] = (2, 3, 4), seed: int = 1) -> dict[str, pd.DataFrame]:
    """Catalogs of the same shapes cut from the tuning folds only (where settings are chosen):
    each fold, singletons (first fold plus one listing per group of the others), pairs
    (second fold), 2k (third fold), all tuning folds together."""
    folds = [dev[dev["fold"].astype(int) == f] for f in tune_folds]
    out = {f"fold{f}": _frame(d) for f, d in zip(tune_folds, folds, strict=True)}
    out["singletons"] = singletons_catalog(folds[0], pd.concat(folds[1:]), seed)
    out["pairs"] = pairs_catalog(folds[1 % len(folds)], seed)
    out["size_2k"] = size_catalog(folds[2 % len(folds)], 2000, seed)
    out["size_all"] = _frame(pd.concat(folds))
    return out


# --------------------------------------------------------------------------------------
# scoring on row indices


def label_codes(labels: Sequence) -> np.ndarray:
    return pd.factorize(np.asarray(labels))[0]


def cluster_scores(labels: Sequence, groups: Sequence) -> tuple[float, float, float]:
    """Row-wise mean F1, precision, recall when each listing's predicted set is its group
    (itself included) and its true set its label group (metric of ../shared/data/README.md)."""
    lab, grp = label_codes(labels), label_codes(groups)
    true_size = np.bincount(lab)[lab].astype(np.float64)
    pred_size = np.bincount(grp)[grp].astype(np.float64)
    pair = grp.astype(np.int64) * (lab.max() + 1) + lab
    _, inv, cnt = np.unique(pair, return_inverse=True, return_counts=True)
    inter = cnt[inv].astype(np.float64)
    f1 = 2 * inter / (true_size + pred_size)
    return float(f1.mean()), float((inter / pred_size).mean()), float((inter / true_size).mean())


def cluster_pair_scores(labels: Sequence, groups: Sequence) -> tuple[float, float, float]:
    """Pairwise F1, precision, recall of a grouping: the predicted pairs are the unordered pairs
    of each group, the true ones those of each label group (no pair enumerated: counts only)."""
    from listing_dedup.quality.metrics import pair_counts_scores

    lab, grp = label_codes(labels), label_codes(groups)
    pair = grp.astype(np.int64) * (lab.max() + 1) + lab
    _, both = np.unique(pair, return_counts=True)

    def c2(x: np.ndarray) -> int:
        x = x.astype(np.int64)
        return int((x * (x - 1) // 2).sum())

    s = pair_counts_scores(c2(np.bincount(lab)), c2(np.bincount(grp)), c2(both))
    return s.f1, s.precision, s.recall


def veto_keep(
    df: pd.DataFrame, a: np.ndarray, b: np.ndarray, w: np.ndarray, *, above: float, kinds: Sequence[str] | None = None
) -> np.ndarray:
    """Mask of the edges ``a - b`` (row indices of ``df``, score ``w``) the job's identifier veto
    keeps (:func:`listing_dedup.graph.edges.veto_mask` on the rows' ``title`` and their optional
    ``model`` / ``brand``): an edge whose titles conflict (``kinds``: code, quantity, brand; and
    share no code) is dropped unless its score is at least ``above``."""
    from listing_dedup.graph.edges import VETO_KINDS, veto_mask

    def col(c: str, rows: np.ndarray):
        return df[c].to_numpy(dtype=object)[rows].tolist() if c in df.columns else None

    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return veto_mask(
        col("title", a),
        col("title", b),
        np.asarray(w, dtype=np.float64),
        above,
        models_a=col("model", a),
        models_b=col("model", b),
        brands_a=col("brand", a),
        brands_b=col("brand", b),
        kinds=tuple(kinds) if kinds is not None else VETO_KINDS,
    )


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member row) of each row 0..n-1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(a), dtype=np.int8), (np.asarray(a), np.asarray(b))), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    smallest = pd.Series(np.arange(n)).groupby(comp).transform("min").to_numpy()
    return smallest


def guarded_groups(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    *,
    base_threshold: float,
    max_group: int,
    step: float,
    margin: float = 0.0,
    split: bool = True,
) -> np.ndarray:
    """The job's groups: the group margin (:func:`listing_dedup.graph.guard.margin_keep`,
    ``margin`` > 0) on the undirected edges ``a - b``, connected components of the edges it
    keeps, then (``split``) the guard (:func:`listing_dedup.graph.guard.split_large_numpy`)
    on the components larger than ``max_group`` only."""
    kept = margin_keep(a, b, score, margin, n)
    a, b, score = np.asarray(a)[kept], np.asarray(b)[kept], np.asarray(score)[kept]
    comp = components(n, a, b)
    if not split:
        return comp
    sizes = np.bincount(comp, minlength=n)[comp]
    big = np.flatnonzero(sizes > max_group)
    if len(big) == 0:
        return comp
    inside = np.zeros(n, dtype=bool)
    inside[big] = True
    e = inside[a] & inside[b]
    src = np.r_[a[e], b[e]]
    dst = np.r_[b[e], a[e]]
    sc = np.r_[score[e], score[e]].astype(np.float64)
    ids = [f"{i:09d}" for i in big]  # zero-padded: string order equals row order
    gid = split_large_numpy(
        ids,
        [f"{i:09d}" for i in src],
        [f"{i:09d}" for i in dst],
        sc,
        base_threshold=base_threshold,
        max_group=max_group,
        step=step,
    )
    out = comp.copy()
    out[big] = n + np.array([int(g) for g in gid])  # a new label space for the re-cut groups
    return out


def job_groups(n: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, match, guard) -> np.ndarray:
    """:func:`guarded_groups` as the job's components stage runs it under ``match`` (a
    ``MatchConf``) and ``guard`` (a ``GuardConf``): the split guard's levels start at the rule's
    loosest threshold (min2's when on), the group margin from ``guard``."""
    return guarded_groups(
        n,
        a,
        b,
        score,
        base_threshold=match.min2_threshold if match.min2 else match.threshold,
        max_group=guard.max_group,
        step=guard.step,
        margin=guard.group_margin,
        split=guard.mode == "split",
    )


# --------------------------------------------------------------------------------------
# the job's edge rules on index arrays (fast path; tested equal to select_edges_pandas)

_CODE = np.int64(1) << np.int64(31)


def rule_edges_any_order(
    src: np.ndarray, dst: np.ndarray, score: np.ndarray, match, phash: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rule_edges` on candidate rows in any order (a re-ranker's probabilities): sorted
    first as it expects (src asc, score desc, dst asc)."""
    o = np.lexsort((dst, -np.asarray(score, dtype=np.float64), src))
    return rule_edges(src[o], dst[o], score[o], match, phash)


def rule_edges(
    src: np.ndarray, dst: np.ndarray, score: np.ndarray, match, phash: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges of :func:`listing_dedup.graph.edges.select_edges_pandas` under ``match`` (a
    ``MatchConf``) on directed rows sorted like :func:`listing_dedup.quality.tuning.knn`
    (src asc, score desc, dst asc), unioned with ``phash`` pairs ``(a, b, score)`` as the job
    unions them (a pair found by both keeps its best score). Returns undirected ``a < b`` and
    the edge score."""
    s = score.astype(np.float64)
    n_rows = len(src)
    first = np.r_[True, src[1:] != src[:-1]] if n_rows else np.zeros(0, dtype=bool)
    start = np.maximum.accumulate(np.where(first, np.arange(n_rows), 0)) if n_rows else np.zeros(0, dtype=np.int64)
    keep = s >= match.threshold
    if match.relative and n_rows:
        cnt = np.diff(np.r_[np.flatnonzero(first), n_rows])[np.cumsum(first) - 1]
        bg = s[start + np.minimum(match.relative_rank, cnt) - 1]
        keep |= (s >= match.relative_floor) & (s - bg >= match.relative_margin)
    if match.mutual_rank > 0 and n_rows:
        rank = np.arange(n_rows) - start
        fwd = src.astype(np.int64) * _CODE + dst
        order = np.argsort(fwd, kind="stable")
        rev = dst.astype(np.int64) * _CODE + src
        at = np.minimum(np.searchsorted(fwd[order], rev), n_rows - 1)
        rev_rank = np.where(fwd[order][at] == rev, rank[order][at], np.iinfo(np.int64).max)
        keep |= (rank < match.mutual_rank) & (rev_rank < match.mutual_rank) & (s >= match.mutual_floor)
    if match.min2:
        keep |= first & (s < match.threshold) & (s >= match.min2_threshold)
    a = np.minimum(src[keep], dst[keep]).astype(np.int64)
    b = np.maximum(src[keep], dst[keep]).astype(np.int64)
    w = score[keep].astype(np.float32)
    if phash is not None:
        a, b = np.r_[a, np.asarray(phash[0], dtype=np.int64)], np.r_[b, np.asarray(phash[1], dtype=np.int64)]
        w = np.r_[w, np.asarray(phash[2], dtype=np.float32)]
    code = a * _CODE + b
    o = np.lexsort((-w.astype(np.float64), code))
    code, w = code[o], w[o]
    head = np.r_[True, code[1:] != code[:-1]] if len(code) else np.zeros(0, dtype=bool)
    code, w = code[head], w[head]
    return code // _CODE, code % _CODE, w


# --------------------------------------------------------------------------------------
# where a catalog loses (issue 30, sixth stop): the candidates' ceiling and a threshold derived
# from the model's own probabilities


def candidate_recall(
    labels: Sequence, src: np.ndarray, dst: np.ndarray, score: np.ndarray, ks: Sequence[int] = (1, 5, 10, 50)
) -> dict[str, float]:
    """How many true pairs the candidate rows ``src -> dst`` (a search's or a re-ranker's frame,
    any order) can reach, whatever the rule on them: ``ceiling``, the share of the unordered true
    pairs (two listings of one label) found in either direction; ``at_<k>``, the share of the
    true pairs' two directions found at rank < k of their source's list by ``score`` (ties: the
    smaller ``dst``). A catalog without a true pair gives NaN."""
    lab = label_codes(labels)
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    sizes = np.bincount(lab).astype(np.int64)
    true_pairs = int((sizes * (sizes - 1) // 2).sum())
    if true_pairs == 0:
        return {"ceiling": float("nan"), **{f"at_{k}": float("nan") for k in ks}}
    same = lab[src] == lab[dst]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    n = max(len(lab), 1)
    found = np.unique((lo * n + hi)[same & (lo != hi)]).size
    o = np.lexsort((dst, -np.asarray(score, dtype=np.float64), src))
    s = src[o]
    first = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, dtype=bool)
    rank = np.arange(len(s)) - np.maximum.accumulate(np.where(first, np.arange(len(s)), 0)) if len(s) else s
    hit = same[o]
    out = {"ceiling": found / true_pairs}
    for k in ks:
        out[f"at_{k}"] = float(hit[rank < k].sum()) / (2 * true_pairs)
    return out


def expected_f1_threshold(q: np.ndarray) -> tuple[float, float]:
    """``(threshold, expected pairwise F1)``: the probability threshold on the unordered candidate
    pairs' match probabilities ``q`` (taken as calibrated) that maximises the plug-in expected
    pairwise F1 of keeping the pairs at or above it, 2 * sum(kept q) / (kept + sum(all q)) (the
    expected true pairs among the kept over the kept plus the expected true pairs; Jansche 2007,
    Lipton, Elkan and Naryanaswamy 2014: at the optimum the threshold is half the F1). No labels:
    derived from the probabilities alone. An empty ``q`` gives (1.0, 0.0)."""
    q = np.sort(np.asarray(q, dtype=np.float64))[::-1]
    if q.size == 0 or q.sum() <= 0:
        return 1.0, 0.0
    e = 2.0 * np.cumsum(q) / (np.arange(1, q.size + 1) + q.sum())
    i = int(np.argmax(e))
    return float(q[i]), float(e[i])
