"""An HTML report of one committed run: where matching goes right and wrong.

``jobs/evaluate.py --report DIR`` writes ``DIR/report.html`` with two PNGs beside it:

``curves.png``
    Row-wise mean F1, precision and recall (:mod:`listing_dedup.quality.metrics`) against a score
    threshold, one line per signal. With the run's ``candidates`` table (one row per scored
    pair: ``posting_id, candidate_id, score, signal_scores``) a listing's predicted set at
    threshold ``t`` for signal ``s`` is itself plus every ``candidate_id`` of its own rows with
    ``signal_scores[s] >= t`` (rows without key ``s`` are pairs that signal did not produce);
    the line ``fused`` uses ``score``. Rows are used as written (not symmetrised). Always
    present: ``final matches``, the run's ``matches`` pruned to ``score >= t`` (which can only
    drop pairs, so it is flat below the run's own thresholds).
``cluster_sizes.png``
    How many groups of each size the run predicted (``clusters``) beside the true groups.

and two tables: the false merges (predicted pairs of different true groups, highest score
first) and the missed matches (true pairs the run did not predict, highest candidate score
first when ``candidates`` exists, else a seeded random sample), with titles and thumbnails
read from the run's input (``runs.input_path``; images resolved like ingest does, against
``input.image_root`` of the run's config or the input folder, or a given root).

Public API
----------
``load_report_data(warehouse, run_date, truth, *, image_root=None) -> ReportData``
    Reads the Delta tables (``candidates`` optional) and the run's input listings.
``threshold_curves(candidates, matches, truth, ids, thresholds=DEFAULT_THRESHOLDS) -> DataFrame``
    Columns ``signal, threshold, f1, precision, recall, pairs`` (pure, pandas in and out).
``error_pairs(matches, truth, ids, candidates=None) -> (false_merges, missed)``
    All false merges / missed matches as frames ``posting_id, match_id, score`` (a < b).
``cluster_size_counts(clusters, truth) -> DataFrame``
    ``size, predicted_groups, true_groups``.
``build_report(data, *, thresholds=..., samples=12, seed=0) -> Report``
    Everything above for one run; ``render_report(report, out_dir) -> Path`` writes the files.
``write_report(warehouse, run_date, truth, out_dir, *, image_root=None, samples=12) -> Path``
    All of it in one call.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.errors import InputError, StorageError
from listing_dedup.ingest.images import image_root_for, load_image
from listing_dedup.quality.metrics import Scores, pairs_from_groups, pairs_from_match_lists, row_scores
from listing_dedup.sink.delta import read_table, table_uri

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = tuple(round(x, 3) for x in np.arange(0.0, 1.0 + 1e-9, 0.025))
FUSED = "fused"
FINAL = "final matches"
THUMB_PX = 96


# --------------------------------------------------------------------------------------
# data


@dataclass
class ReportData:
    run_date: str
    warehouse: str
    truth: pd.DataFrame  # posting_id, label_group (strings)
    matches: pd.DataFrame  # posting_id, match_ids, scores
    clusters: pd.DataFrame  # posting_id, group_id, group_size
    candidates: pd.DataFrame | None  # posting_id, candidate_id, score, signal_scores; None = no table/rows
    candidates_note: str  # why candidates is None ("" when present)
    run: dict[str, Any] | None  # the latest succeeded row of ``runs`` for this date
    input_path: str = ""  # the run's input (titles and images of the sampled pairs are read from it)
    listings_note: str = ""  # why titles are unknown ("" when they are known)
    image_root: str = ""  # relative ``image`` paths are resolved against it
    listings: pd.DataFrame | None = None  # posting_id, title[, image]; None = read from input_path


def _table_exists(warehouse: str, table: str) -> bool:
    from deltalake import DeltaTable

    try:
        DeltaTable(table_uri(warehouse, table))
        return True
    except Exception:  # noqa: BLE001 - TableNotFoundError and friends: the table is not there
        return False


def latest_succeeded_run(runs: pd.DataFrame) -> dict[str, Any] | None:
    """The most recently finished ``succeeded`` row of a ``runs`` partition, as a dict."""
    ok = runs[runs["status"] == "succeeded"]
    if ok.empty:
        return None
    row = ok.sort_values("finished_at").iloc[-1]
    return {k: (None if (not isinstance(v, (list, dict)) and pd.isna(v)) else v) for k, v in row.items()}


def read_listings(input_path: str, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """``posting_id, title[, image]`` of the run's input Parquet (only ``ids`` when given)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(input_path, format="parquet")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read the run's input {input_path}: {e}") from None
    cols = [c for c in ("posting_id", "title", "image") if c in dataset.schema.names]
    if "posting_id" not in cols:
        raise InputError(f"the run's input {input_path} has no posting_id column")
    flt = pc.field("posting_id").isin(list(ids)) if ids is not None else None
    df = dataset.to_table(columns=cols, filter=flt).to_pandas()
    return df.drop_duplicates("posting_id").reset_index(drop=True)


def load_report_data(
    warehouse: str, run_date: str, truth: pd.DataFrame, *, image_root: str | None = None
) -> ReportData:
    """Read what the report needs for ``run_date``; missing optional parts come with a note."""
    matches = read_table(warehouse, "matches", run_date, columns=["posting_id", "match_ids", "scores"])
    if matches.empty:
        raise InputError(f"no matches for run date {run_date} under {warehouse}")
    clusters = read_table(warehouse, "clusters", run_date, columns=["posting_id", "group_id", "group_size"])

    candidates, cand_note = None, ""
    if not _table_exists(warehouse, "candidates"):
        cand_note = "this warehouse has no candidates table"
    else:
        candidates = read_table(
            warehouse, "candidates", run_date, columns=["posting_id", "candidate_id", "score", "signal_scores"]
        )
        if candidates.empty:
            candidates, cand_note = None, f"the candidates table has no rows for {run_date}"

    run = None
    if _table_exists(warehouse, "runs"):
        run = latest_succeeded_run(read_table(warehouse, "runs", run_date))

    input_path, list_note, root = "", "", ""
    if run is None:
        list_note = f"no succeeded run of {run_date} in the runs table: titles and images unknown"
    else:
        input_path = run.get("input_path") or ""
        try:
            conf_root = (json.loads(run.get("config_json") or "{}").get("input") or {}).get("image_root", "")
        except ValueError:
            conf_root = ""
        root = image_root or image_root_for(input_path, conf_root or "")
    return ReportData(
        run_date=run_date,
        warehouse=warehouse,
        truth=truth[["posting_id", "label_group"]].astype(str),
        matches=matches,
        clusters=clusters,
        candidates=candidates,
        candidates_note=cand_note,
        run=run,
        input_path=input_path,
        listings_note=list_note,
        image_root=root,
    )


# --------------------------------------------------------------------------------------
# pure computations


def _match_pairs_with_scores(matches: pd.DataFrame) -> pd.DataFrame:
    """(posting_id, match_id, score) from the matches table's parallel arrays."""
    m = matches[["posting_id", "match_ids", "scores"]].copy()
    m["match_ids"] = m["match_ids"].map(lambda v: list(v) if v is not None else [])
    m["scores"] = m.apply(
        lambda r: list(r["scores"]) if r["scores"] is not None else [math.nan] * len(r["match_ids"]), axis=1
    )
    ex = m.explode(["match_ids", "scores"]).dropna(subset=["match_ids"])
    return pd.DataFrame(
        {
            "posting_id": ex["posting_id"].astype(str).to_numpy(),
            "match_id": ex["match_ids"].astype(str).to_numpy(),
            "score": pd.to_numeric(ex["scores"], errors="coerce").astype(float).to_numpy(),
        }
    )


def _signal_pairs(candidates: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per signal: (posting_id, match_id, score); ``fused`` from ``score``."""
    base = pd.DataFrame(
        {
            "posting_id": candidates["posting_id"].astype(str).to_numpy(),
            "match_id": candidates["candidate_id"].astype(str).to_numpy(),
        }
    )
    out = {FUSED: base.assign(score=pd.to_numeric(candidates["score"], errors="coerce").to_numpy(dtype=float))}
    per_signal: dict[str, list[tuple[int, float]]] = {}
    for i, sig in enumerate(candidates["signal_scores"].to_numpy()):
        if sig is None:
            continue
        items = sig.items() if isinstance(sig, dict) else sig  # deltalake gives maps as (key, value) lists
        for k, v in items:
            if v is not None:
                per_signal.setdefault(str(k), []).append((i, float(v)))
    for name in sorted(per_signal):
        rows = np.array([r for r, _ in per_signal[name]], dtype=np.int64)
        vals = np.array([v for _, v in per_signal[name]], dtype=float)
        out[name] = base.iloc[rows].reset_index(drop=True).assign(score=vals)
    return out


def threshold_curves(
    candidates: pd.DataFrame | None,
    matches: pd.DataFrame,
    truth: pd.DataFrame,
    ids: Sequence[str] | pd.Series,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Row-wise F1 / precision / recall at each threshold, per signal (see the module doc).

    ``ids``: every listing of the run (listings with no pair count too)."""
    sources = {FINAL: _match_pairs_with_scores(matches)}
    if candidates is not None and not candidates.empty:
        sources.update(_signal_pairs(candidates))
    rows = []
    for name, pairs in sources.items():
        pairs = pairs[pairs["posting_id"] != pairs["match_id"]]
        for t in thresholds:
            kept = pairs[pairs["score"] >= t]
            s = row_scores(kept, ids, truth)
            rows.append((name, float(t), s.f1, s.precision, s.recall, len(kept)))
    return pd.DataFrame(rows, columns=["signal", "threshold", "f1", "precision", "recall", "pairs"])


def _undirected(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per unordered pair (a < b), keeping the highest score."""
    a, b = pairs["posting_id"].astype(str), pairs["match_id"].astype(str)
    lo, hi = np.where(a < b, a, b), np.where(a < b, b, a)
    out = pd.DataFrame({"posting_id": lo, "match_id": hi, "score": pairs["score"].to_numpy(dtype=float)})
    out = out[out["posting_id"] != out["match_id"]]
    return (
        out.sort_values("score", ascending=False, na_position="last")
        .drop_duplicates(["posting_id", "match_id"])
        .reset_index(drop=True)
    )


def error_pairs(
    matches: pd.DataFrame,
    truth: pd.DataFrame,
    ids: Sequence[str] | pd.Series,
    candidates: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All false merges and missed matches among the evaluated ``ids`` (listings of the run
    that have a true group), each a frame ``posting_id, match_id, score`` with
    ``posting_id < match_id``. False merges carry the match score, highest first; missed
    matches the best ``candidates`` score of the pair (NaN when never a candidate)."""
    group_of = truth.drop_duplicates("posting_id").set_index("posting_id")["label_group"].astype(str)
    ids = pd.Index(pd.Series(list(ids), dtype=str).unique())
    ids = ids[ids.isin(group_of.index)]

    pred = _undirected(_match_pairs_with_scores(matches))
    pred = pred[pred["posting_id"].isin(ids) & pred["match_id"].isin(ids)]
    same = group_of.reindex(pred["posting_id"]).to_numpy() == group_of.reindex(pred["match_id"]).to_numpy()
    false_merges = pred[~same].reset_index(drop=True)

    members = pd.DataFrame({"posting_id": ids, "g": group_of.reindex(ids).to_numpy()})
    true_pairs = pairs_from_groups(members, group_col="g")
    true_pairs = true_pairs[true_pairs["posting_id"] < true_pairs["match_id"]]
    key_pred = set(zip(pred["posting_id"], pred["match_id"], strict=True))
    is_pred = [k in key_pred for k in zip(true_pairs["posting_id"], true_pairs["match_id"], strict=True)]
    missed = true_pairs[~np.asarray(is_pred, dtype=bool)].reset_index(drop=True)
    missed = missed.assign(score=math.nan)
    if candidates is not None and not candidates.empty and not missed.empty:
        cand = _undirected(_signal_pairs(candidates)[FUSED])
        missed = missed[["posting_id", "match_id"]].merge(cand, on=["posting_id", "match_id"], how="left")
        missed = missed.sort_values(["score", "posting_id", "match_id"], ascending=[False, True, True])
        missed = missed.reset_index(drop=True)
    return false_merges, missed


def cluster_size_counts(clusters: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Groups per size: predicted (``clusters``) and true (truth restricted to the run's listings)."""
    pred = clusters.drop_duplicates("group_id")["group_size"].astype(int).value_counts()
    t = truth[truth["posting_id"].isin(clusters["posting_id"].astype(str))]
    true = t.groupby("label_group").size().value_counts()
    sizes = sorted(set(pred.index) | set(true.index))
    return pd.DataFrame(
        {
            "size": sizes,
            "predicted_groups": [int(pred.get(s, 0)) for s in sizes],
            "true_groups": [int(true.get(s, 0)) for s in sizes],
        }
    )


# --------------------------------------------------------------------------------------
# the report


@dataclass
class Report:
    data: ReportData
    curves: pd.DataFrame
    sizes: pd.DataFrame
    matches_scores: Scores
    clusters_scores: Scores
    false_merges: pd.DataFrame  # all of them
    missed: pd.DataFrame  # all of them
    false_sample: pd.DataFrame  # the rows shown, with titles
    missed_sample: pd.DataFrame
    missed_order: str
    threshold: float | None  # the run's match.threshold, when its config is known
    seconds: dict[str, float] = field(default_factory=dict)


def _run_threshold(run: dict[str, Any] | None) -> float | None:
    if not run:
        return None
    try:
        return float(json.loads(run.get("config_json") or "{}")["match"]["threshold"])
    except (ValueError, KeyError, TypeError):
        return None


def _with_titles(pairs: pd.DataFrame, listings: pd.DataFrame | None, truth: pd.DataFrame) -> pd.DataFrame:
    out = pairs.copy()
    group_of = truth.drop_duplicates("posting_id").set_index("posting_id")["label_group"]
    for side, col in (("a", "posting_id"), ("b", "match_id")):
        out[f"group_{side}"] = group_of.reindex(out[col]).to_numpy()
        if listings is not None:
            li = listings.set_index("posting_id")
            out[f"title_{side}"] = li["title"].reindex(out[col]).to_numpy() if "title" in li else None
            out[f"image_{side}"] = li["image"].reindex(out[col]).to_numpy() if "image" in li else None
        else:
            out[f"title_{side}"] = None
            out[f"image_{side}"] = None
    return out


def build_report(
    data: ReportData, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, samples: int = 12, seed: int = 0
) -> Report:
    t0 = time.perf_counter()
    ids = data.clusters["posting_id"].astype(str)
    curves = threshold_curves(data.candidates, data.matches, data.truth, ids, thresholds)
    t1 = time.perf_counter()
    m = row_scores(pairs_from_match_lists(data.matches), data.matches["posting_id"], data.truth)
    c = row_scores(pairs_from_groups(data.clusters), ids, data.truth)
    false_merges, missed = error_pairs(data.matches, data.truth, ids, data.candidates)
    fs = false_merges.head(samples)
    if data.candidates is not None:
        ms, order = missed.head(samples), "highest fused candidate score first (near misses)"
    else:
        ms = missed.sample(n=min(samples, len(missed)), random_state=seed) if len(missed) else missed
        order = f"a random sample (seed {seed}); no candidates table, so no scores for unpredicted pairs"
    if data.listings is None and data.input_path:
        shown = pd.concat([fs["posting_id"], fs["match_id"], ms["posting_id"], ms["match_id"]]).unique()
        try:
            data.listings = read_listings(data.input_path, [str(i) for i in shown])
        except InputError as e:
            data.listings_note = f"{e}: titles and images unknown"
    t2 = time.perf_counter()
    return Report(
        data=data,
        curves=curves,
        sizes=cluster_size_counts(data.clusters, data.truth),
        matches_scores=m,
        clusters_scores=c,
        false_merges=false_merges,
        missed=missed,
        false_sample=_with_titles(fs, data.listings, data.truth),
        missed_sample=_with_titles(ms, data.listings, data.truth),
        missed_order=order,
        threshold=_run_threshold(data.run),
        seconds={"curves": round(t1 - t0, 3), "errors": round(t2 - t1, 3)},
    )


# --------------------------------------------------------------------------------------
# rendering


def plot_curves(curves: pd.DataFrame, path: Path, *, threshold: float | None = None, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("f1", "mean F1"), ("precision", "mean precision"), ("recall", "mean recall"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    signals = list(dict.fromkeys(curves["signal"]))
    for ax, (col, label) in zip(axes, metrics, strict=True):
        for i, sig in enumerate(signals):
            c = curves[curves["signal"] == sig]
            style = "-" if sig != FINAL else "--"
            ax.plot(c["threshold"], c[col], style, color=f"C{i}", lw=2 if sig in (FUSED, FINAL) else 1.4, label=sig)
        if threshold is not None:
            ax.axvline(threshold, color="grey", ls=":", lw=1.2, label=f"run threshold {threshold:g}")
        ax.set_title(label)
        ax.set_xlabel("score threshold t (pair kept when score >= t)")
        ax.set_xlim(float(curves["threshold"].min()), float(curves["threshold"].max()))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("row-wise mean over listings")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sizes(sizes: pd.DataFrame, path: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.6))
    x = np.arange(len(sizes))
    w = 0.4
    ax.bar(x - w / 2, sizes["predicted_groups"], w, label="predicted (clusters)", color="C0")
    ax.bar(x + w / 2, sizes["true_groups"], w, label="true groups", color="C1")
    ax.set_xticks(x)
    ax.set_xticklabels([str(s) for s in sizes["size"]], rotation=90 if len(sizes) > 30 else 0)
    ax.set_xlabel("group size (listings; sizes with no group are left out)")
    ax.set_ylabel("number of groups (log scale)")
    if (sizes[["predicted_groups", "true_groups"]].to_numpy() > 0).any():
        ax.set_yscale("log")
    ax.set_title(title or "cluster sizes")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def thumbnail_data_uri(value: Any, root: str, px: int = THUMB_PX) -> str | None:
    """A small base64 JPEG ``data:`` URI of the image, or None when it cannot be loaded."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        result = load_image(value, root)
    except StorageError:  # a thumbnail folder that is not there (or not readable): no thumbnail
        return None
    if not result.ok:
        return None
    im = result.image
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return html.escape(str(v))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _pair_table(rows: pd.DataFrame, root: str, with_images: bool, score_label: str) -> str:
    if rows.empty:
        return "<p><em>none</em></p>"
    head = (
        f"<tr><th>{_e(score_label)}</th><th>listing A</th><th>title A</th><th>true group A</th>"
        "<th>listing B</th><th>title B</th><th>true group B</th>"
        + ("<th>image A</th><th>image B</th>" if with_images else "")
        + "</tr>"
    )
    body = []
    for r in rows.itertuples(index=False):
        cells = [
            f"<td class=num>{_fmt(r.score)}</td>",
            f"<td><code>{_e(r.posting_id)}</code></td>",
            f"<td class=title>{_e(r.title_a)}</td>",
            f"<td><code>{_e(r.group_a)}</code></td>",
            f"<td><code>{_e(r.match_id)}</code></td>",
            f"<td class=title>{_e(r.title_b)}</td>",
            f"<td><code>{_e(r.group_b)}</code></td>",
        ]
        if with_images:
            for v in (r.image_a, r.image_b):
                uri = thumbnail_data_uri(v, root)
                cells.append(f'<td><img src="{uri}" alt="thumbnail"></td>' if uri else "<td><em>no image</em></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left;font-size:13px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.title{max-width:320px}.note{background:#fff6d6;border:1px solid #e8d48a;padding:8px 12px}
img{max-width:96px;max-height:96px}
"""


def render_report(report: Report, out_dir: str | os.PathLike, *, review_pairs: int | None = None) -> Path:
    """Write ``report.html``, ``curves.png`` and ``cluster_sizes.png`` into ``out_dir``;
    ``review_pairs``: the date's review queue holds that many pairs and ``review.html`` (the
    review page, :func:`write_review_page`) is linked."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = report.data
    plot_curves(
        report.curves,
        out / "curves.png",
        threshold=report.threshold,
        title=f"run {d.run_date}: row-wise mean F1 / precision / recall vs score threshold",
    )
    plot_sizes(report.sizes, out / "cluster_sizes.png", title=f"run {d.run_date}: groups per size")

    run = d.run or {}
    signals = [s for s in dict.fromkeys(report.curves["signal"]) if s != FINAL]
    if d.candidates is not None:
        cand_html = (
            f"<p>Per-signal curves from the <code>candidates</code> table ({len(d.candidates)} rows; "
            f"signals: {_e(', '.join(signals))}). A listing's predicted set at t is itself plus its own "
            "candidate rows whose signal score is &ge; t; <code>fused</code> uses the final score.</p>"
        )
    else:
        cand_html = (
            f"<p class=note><strong>No candidates for this run</strong> ({_e(d.candidates_note)}): "
            "per-signal threshold curves are not available. Only <code>final matches</code> is drawn: "
            "the run's matches pruned to score &ge; t (it cannot add pairs, so it is flat below the "
            "run's thresholds).</p>"
        )
    best = []
    for sig in dict.fromkeys(report.curves["signal"]):
        c = report.curves[report.curves["signal"] == sig]
        if c["f1"].notna().any():
            b = c.loc[c["f1"].idxmax()]
            best.append(
                f"<tr><td>{_e(sig)}</td><td class=num>{_fmt(b['threshold'], 3)}</td>"
                f"<td class=num>{_fmt(b['f1'])}</td><td class=num>{_fmt(b['precision'])}</td>"
                f"<td class=num>{_fmt(b['recall'])}</td></tr>"
            )
    with_images = d.listings is not None and "image" in d.listings.columns
    list_note = f"<p class=note>{_e(d.listings_note)}</p>" if d.listings_note else ""
    img_note = (
        f"<p>Thumbnails from <code>{_e(d.image_root)}</code>.</p>"
        if with_images
        else "<p>The run's input has no <code>image</code> column: no thumbnails.</p>"
        if d.listings is not None
        else ""
    )
    ms, cs = report.matches_scores, report.clusters_scores
    stage_seconds = run.get("stage_seconds") or ""
    review_html = (
        f'<p><a href="review.html">Review page</a>: the {review_pairs} pairs of this night\'s review queue the job is '
        "least sure of, side by side (answer them with <code>listing-dedup decide</code>).</p>"
        if review_pairs
        else ""
    )
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>listing-dedup report {_e(d.run_date)}</title>
<style>{_CSS}</style></head><body>
<h1>listing-dedup report: run date {_e(d.run_date)}</h1>
<table>
<tr><th>warehouse</th><td><code>{_e(d.warehouse)}</code></td></tr>
<tr><th>run id</th><td><code>{_e(run.get("run_id"))}</code> ({_e(run.get("status") or "no succeeded run")},
 finished {_e(run.get("finished_at"))})</td></tr>
<tr><th>input</th><td><code>{_e(run.get("input_path"))}</code></td></tr>
<tr><th>rows in / kept / rejected</th><td>{_e(run.get("rows_in"))} / {_e(run.get("rows_kept"))} /
 {_e(run.get("rows_rejected"))}</td></tr>
<tr><th>match threshold</th><td>{_e(report.threshold)}</td></tr>
<tr><th>stage seconds</th><td><code>{_e(stage_seconds)}</code></td></tr>
</table>
{review_html}
<h2>Scores (row-wise mean over {ms.n} listings with a known group)</h2>
<table><tr><th></th><th>F1</th><th>precision</th><th>recall</th></tr>
<tr><td>matches</td><td class=num>{_fmt(ms.f1)}</td><td class=num>{_fmt(ms.precision)}</td>
<td class=num>{_fmt(ms.recall)}</td></tr>
<tr><td>clusters (connected components)</td><td class=num>{_fmt(cs.f1)}</td><td class=num>{_fmt(cs.precision)}</td>
<td class=num>{_fmt(cs.recall)}</td></tr></table>
<h2>F1 / precision / recall vs threshold</h2>
{cand_html}
<img src="curves.png" alt="F1, precision and recall against the score threshold" style="max-width:100%;max-height:none">
<h3>Best threshold per signal (by mean F1 on this run)</h3>
<table><tr><th>signal</th><th>threshold</th><th>F1</th><th>precision</th><th>recall</th></tr>{"".join(best)}</table>
<h2>Group sizes</h2>
<img src="cluster_sizes.png" alt="histogram of group sizes" style="max-width:100%;max-height:none">
<h2>False merges: {len(report.false_merges)} predicted pairs from different true groups</h2>
<p>Highest match score first; showing {len(report.false_sample)}.</p>
{list_note}{img_note}
{_pair_table(report.false_sample, d.image_root, with_images, "match score")}
<h2>Missed matches: {len(report.missed)} true pairs the run did not predict</h2>
<p>Order: {_e(report.missed_order)}; showing {len(report.missed_sample)}.</p>
{_pair_table(report.missed_sample, d.image_root, with_images, "candidate score")}
</body></html>
"""
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    report.seconds["render"] = round(time.perf_counter() - t0, 3)
    return path


def write_report(
    warehouse: str,
    run_date: str,
    truth: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    image_root: str | None = None,
    samples: int = 12,
) -> Path:
    """Load, compute and render the report of ``run_date``; returns the path of report.html."""
    t0 = time.perf_counter()
    data = load_report_data(warehouse, run_date, truth, image_root=image_root)
    t1 = time.perf_counter()
    report = build_report(data, samples=samples)
    review = write_review_page(warehouse, run_date, out_dir, image_root=data.image_root)
    path = render_report(report, out_dir, review_pairs=review)
    log.info("report %s: load %.2fs, %s, total %.2fs", path, t1 - t0, report.seconds, time.perf_counter() - t0)
    return path


def write_review_page(
    warehouse: str, run_date: str, out_dir: str | os.PathLike, *, image_root: str = "", top: int = 50
) -> int | None:
    """The report's review page: ``out_dir/review.html`` with the top ``top`` pairs of the date's
    ``review_queue`` side by side (quality/review.review_page; thumbnails of image paths below
    ``image_root``). Returns the queue's pair count, None when the date has no queue (the
    nightly job's ``review.nightly`` or ``listing-dedup review-queue`` writes it)."""
    from listing_dedup.quality.review import review_page

    if not _table_exists(warehouse, "review_queue"):
        return None
    q = read_table(warehouse, "review_queue", run_date)
    if q.empty:
        return None
    q = q.sort_values("rank", ignore_index=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = review_page(q, image_roots=image_root or None, top=top, title=f"Review queue {run_date}")
    (out / "review.html").write_text(page, encoding="utf-8")
    return len(q)
