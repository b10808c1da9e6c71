"""Review loop (issue 32): does a reviewer answering the review queue improve the groups faster
than one answering random candidate pairs, and are the verdicts honoured?

    python bench/review.py [--conf conf/local.yaml] [--cache-dir data/cache] [--catalogs singletons,size_27k,sample]

Catalogs: bench/robust.py's half-singletons (fold 1 plus one listing of each group of folds 2-4)
and 27k (folds 1-4) catalogs and the generated sample, each through the job's stages on one
machine as bench/robust.py runs them (the built-in re-ranker, or the threshold rule where its
health check falls back). Each night a simulated reviewer who knows the true groups answers R
pairs (R = 50, 200, 1000; 5 nights): the top R of the night's queue
(lib/listing_dedup/quality/review.review_queue: probability near the threshold, guard-cut edges,
new merges of groups established the night before; decided pairs left out), or R random
candidate pairs not decided yet. Every verdict so far is applied as the job applies the
decisions table (lib/listing_dedup/graph/constraints.constrained_groups: cannot-links cut along
the weakest edges, must-links join), here on the edges inside the defaults' groups (after the
margin and the guard: the job applies them before the guard, which only cuts further and never
a must-link). Between the nights the re-ranker is retrained from all the verdicts so far, as
``jobs/train_reranker.py --decisions`` refits it without a labelled file
(lib/listing_dedup/training/decisions.refit_model: the night-0 model boosted further on the
decided candidate pairs; ``--no-retrain``: the constraints alone), and the next night's
probabilities, edges and groups are its. Reported per catalog, R and night: the clusters'
row-wise F1, and the share of all verdicts so far that the night's groups honour (must be 1.0).
Then the report's review page (quality/review.review_page) of one catalog's night-1 queue is
rendered by headless Chromium when it is installed and its screenshot checked (not blank, both
sides drawn): ``page=ok|skipped``.

Final line: ``review catalogs=<n> beats_random=<true|false> honoured=<share> f1_gain=<g> retrain=<on|off>
page=<ok|skipped>``, where
beats_random says the queue's F1 after the last night is above the random reviewer's for every
catalog and R, honoured is the lowest share over every night, and f1_gain the mean (over the
catalogs) clusters-F1 gain after 1000 verdicts (R = 200, night 5) over the defaults' groups.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robust as B  # noqa: E402  (bench/robust.py: catalogs and the job's stages on one machine)
from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.graph.constraints import DIFFERENT, SAME, constrained_groups  # noqa: E402
from listing_dedup.graph.rerank import pair_features  # noqa: E402
from listing_dedup.quality import robust as R  # noqa: E402
from listing_dedup.quality.review import review_page, review_queue  # noqa: E402
from listing_dedup.training.decisions import decision_labels, probabilities, refit_model, row_labels  # noqa: E402

log = logging.getLogger("review")
ROOT = Path(__file__).resolve().parents[1]
RS = (50, 200, 1000)
NIGHTS = 5
CATALOGS = ("singletons", "size_27k", "sample")


def night_zero(cat: B.Catalog, cfg) -> dict:
    """The defaults' candidate pairs (probability or fused score), edges and groups on ``cat``, as
    bench/robust.run_conf decides them; with the re-ranker also its frame, model, pair features,
    rule and guard (what a retrain between nights needs)."""
    res = B.run_conf(cat, cfg)
    a, b, g = res["_graph"]
    w = cfg.fusion.weights([s for s in ("text", "lexical") if getattr(cfg.embed, s).enabled]).get("text", 0.0)
    k = cfg.index.k
    final = cat.search(w, tuple(cfg.inb.thresholds), k)
    ph = cat.phash(cfg.phash.max_bits) if cfg.phash.enabled else None
    out = {"by": res["by"], "groups": np.asarray(g), "phash": ph, "model": None}
    if res["by"].startswith("re-ranker"):
        share = float(cat.df["image_phash"].notna().mean()) if cat.n else 0.0
        c2 = cfg
        if (B.model_dir_of(B.BUILTIN_TITLES) / "reranker.json").is_file():
            c2, _ = B.for_coverage(cfg, share, B.BUILTIN_TITLES)
        model, _ = B.reranker_for(c2)
        frame = B.candidate_frame(
            cat.search(w, (), k),
            final,
            cat.df["title"].tolist(),
            cat.df["image_phash"].tolist(),
            k,
            c2.rerank.min_score,
        )
        X = pair_features(frame, model.features)
        prob = probabilities(model, frame, X)
        rr, _ = B.prior_shifted(c2.rerank, model, *B.histogram_of(prob))  # as run_conf and the job
        match = rr.match()
        guard = dataclasses.replace(cfg.guard, group_margin=B.group_margin_of(c2, model))
        rows = (frame["src"].to_numpy(), frame["dst"].to_numpy(), prob)
        out.update(model=model, frame=frame, X=X, guard=guard)
    else:
        rows = final
        match = cfg.match
    ea, eb, ew = R.rule_edges_any_order(*rows, match, ph)
    out.update(rows=rows, edges=(ea, eb, ew), threshold=match.threshold, match=match)
    return out


def _pairs(ids, rows, edges) -> pd.DataFrame:
    """The queue's candidate pairs (ids, either order once, the best probability, edge or not)."""
    s, d, p = rows
    keep = s != d
    s, d, p = s[keep], d[keep], np.asarray(p, dtype=np.float64)[keep]
    ea, eb, _ = edges
    edge_set = set(zip(np.minimum(ea, eb).tolist(), np.maximum(ea, eb).tolist()))
    lo, hi = np.minimum(s, d), np.maximum(s, d)
    pairs = pd.DataFrame({"a": ids[lo], "b": ids[hi], "probability": p})
    pairs["edge"] = [(x, y) in edge_set for x, y in zip(lo.tolist(), hi.tolist())]
    return pairs.sort_values("probability", ascending=False).drop_duplicates(["a", "b"]).reset_index(drop=True)


def retrained(cat: B.Catalog, z: dict, ids, decisions: list[tuple[str, str, str]]):
    """The next night's rows, edges and groups (before the constraints) from the night-0 model
    refitted on every verdict so far (``jobs/train_reranker.py --decisions``'s refit)."""
    frame, X = z["frame"], z["X"]
    lab = decision_labels(
        pd.DataFrame(decisions, columns=["posting_id_a", "posting_id_b", "verdict"]).iloc[::-1]  # the latest last
    )
    y = row_labels(ids[frame["src"].to_numpy()], ids[frame["dst"].to_numpy()], lab)
    model = refit_model(z["model"], frame, y, X=X)
    prob = probabilities(model, frame, X)
    rows = (frame["src"].to_numpy(), frame["dst"].to_numpy(), prob)
    edges = R.rule_edges_any_order(*rows, z["match"], z["phash"])
    groups = R.job_groups(cat.n, *edges, z["match"], z["guard"])
    return rows, edges, np.asarray(groups)


def simulate(cat: B.Catalog, z: dict, r: int, policy: str, seed: int = 0, retrain: bool = True) -> list[dict]:
    n = cat.n
    ids = np.array([f"{i:09d}" for i in range(n)], dtype=object)
    labels = cat.labels
    rows, edges, g0 = z["rows"], z["edges"], z["groups"]
    pairs = _pairs(ids, rows, edges)
    rng = np.random.default_rng(seed)
    decisions: list[tuple[str, str, str]] = []  # the latest first
    decided: set[tuple[str, str]] = set()
    groups = pd.Series(g0.astype(str), index=ids)
    prev = None
    out = []
    for night in range(1, NIGHTS + 1):
        if policy == "queue":
            q = review_queue(pairs, groups, threshold=z["threshold"], max_pairs=r, prev_groups=prev, decided=decided)
            todo = list(zip(q["posting_id_a"], q["posting_id_b"]))
        else:
            open_ = pairs[[(x, y) not in decided for x, y in zip(pairs["a"], pairs["b"])]]
            pick = rng.choice(len(open_), size=min(r, len(open_)), replace=False)
            todo = list(zip(open_["a"].to_numpy()[pick], open_["b"].to_numpy()[pick]))
        new = [(a, b, SAME if labels[int(a)] == labels[int(b)] else DIFFERENT) for a, b in todo]
        decided.update(todo)
        decisions = new[::-1] + decisions
        prev = groups
        if retrain and z["model"] is not None:  # the night's model learns from every verdict so far
            rows, edges, g0 = retrained(cat, z, ids, decisions)
            pairs = _pairs(ids, rows, edges)
        ea, eb, ew = edges
        inside = g0[ea] == g0[eb]  # the edges inside the night's groups (after margin and guard)
        g, _ = constrained_groups(ids, ids[ea[inside]], ids[eb[inside]], ew[inside], decisions)
        groups = pd.Series(g, index=ids)
        if policy == "queue" and night == 1:
            z.setdefault("queue_night1", q)
        ga = groups[[a for a, _, _ in decisions]].to_numpy()
        gb = groups[[b for _, b, _ in decisions]].to_numpy()
        want = np.array([v == SAME for _, _, v in decisions])
        honoured = float(((ga == gb) == want).mean()) if decisions else 1.0
        f1 = R.cluster_scores(labels, pd.factorize(g)[0])[0]
        out.append({"night": night, "verdicts": len(decisions), "f1": f1, "honoured": honoured})
    return out


def check_page(cat: B.Catalog, q: pd.DataFrame, out_dir: Path) -> str:
    """The report's review page of ``q`` (titles of ``cat``) rendered by headless Chromium: "ok"
    when the screenshot is not blank and both listing columns are drawn, "skipped" without a
    Chromium; raises when the page renders blank."""
    import shutil
    import subprocess

    exe = next((shutil.which(x) for x in ("chromium", "chromium-browser", "google-chrome") if shutil.which(x)), None)
    if exe is None:
        return "skipped"
    from PIL import Image

    title = dict(zip([f"{i:09d}" for i in range(cat.n)], cat.df["title"].astype(str)))
    q = q.head(10).copy()
    for side in ("a", "b"):
        q[f"title_{side}"] = q[f"posting_id_{side}"].map(title)
        q[f"image_{side}"] = None
    q["signal_scores"] = [{} for _ in range(len(q))]  # the bench keeps no per-signal scores
    out_dir.mkdir(parents=True, exist_ok=True)
    html, png = out_dir / "review.html", out_dir / "review.png"
    html.write_text(review_page(q, title=f"Review queue: {cat.name}"), encoding="utf-8")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}"]
    cmd += ["--window-size=1000,700", html.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {html}")
    img = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    dark = img < 128  # text and table borders on the white page
    cols = dark.mean(axis=0)
    left, right = cols[: img.shape[1] // 2].sum(), cols[img.shape[1] // 2 :].sum()
    if img.std() < 5 or not dark.any() or left == 0 or right == 0:
        raise RuntimeError(f"the review page rendered blank or one-sided ({png})")
    return "ok"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=None)
    ap.add_argument("--csv", default=str(B.DEFAULT_CSV))
    ap.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--catalogs", default=",".join(CATALOGS))
    ap.add_argument("--rs", default=",".join(map(str, RS)), help="verdicts per night, comma-separated")
    ap.add_argument("--no-retrain", action="store_true", help="the constraints alone: no refit between nights")
    ap.add_argument("--out", default=str(ROOT / "data" / "bench_review"), help="the review page and its screenshot")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not Path(args.csv).exists():
        print(f"review: skipped, no labelled data at {args.csv}")
        return 0
    cfg = load_config(args.conf or [str(ROOT / "conf" / "local.yaml")])
    vectors = B.TitleVectors(cfg, args.cache_dir)
    only = tuple(c for c in args.catalogs.split(",") if c)
    rs = tuple(int(x) for x in args.rs.split(","))
    t0 = time.perf_counter()
    beats, honoured, gains, page = True, 1.0, [], "skipped"
    retrain = not args.no_retrain
    cats = B.build(cfg, args.csv, vectors, "report", None, only)
    print("| catalog | listings | by | R | reviewer | F1 night 0 | nights 1-5 |")
    print("|---|---|---|---|---|---|---|")
    for cat in cats:
        z = night_zero(cat, cfg)
        f0 = R.cluster_scores(cat.labels, pd.factorize(z["groups"])[0])[0]
        by = z["by"] + (", retrained" if retrain and z["model"] is not None else "")
        for r in rs:
            res = {pol: simulate(cat, z, r, pol, retrain=retrain) for pol in ("queue", "random")}
            for pol, nights in res.items():
                print(
                    f"| {cat.name} | {cat.n:,} | {by} | {r} | {pol} | {f0:.4f} | "
                    + " ".join(f"{x['f1']:.4f}" for x in nights)
                    + " |",
                    flush=True,
                )
                honoured = min(honoured, *(x["honoured"] for x in nights))
            beats &= res["queue"][-1]["f1"] > res["random"][-1]["f1"]
            if r == 200:
                gains.append(res["queue"][-1]["f1"] - f0)
        if page == "skipped" and "queue_night1" in z:  # the review page of the first catalog's queue
            page = check_page(cat, z["queue_night1"], Path(args.out))
    gain = float(np.mean(gains)) if gains else float("nan")
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(
        f"review catalogs={len(cats)} beats_random={str(beats).lower()} honoured={honoured:.3f} f1_gain={gain:.4f} "
        f"retrain={'on' if retrain else 'off'} page={page}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
