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
a must-link). Reported per catalog, R and night: the clusters' row-wise F1, and the share of all
verdicts so far that the night's groups honour (must be 1.0). Not simulated: retraining the
re-ranker from the decisions (``jobs/train_reranker.py --decisions`` is not built).

Final line: ``review catalogs=<n> beats_random=<true|false> honoured=<share> f1_gain=<g>``, where
beats_random says the queue's F1 after the last night is above the random reviewer's for every
catalog and R, honoured is the lowest share over every night, and f1_gain the mean (over the
catalogs) clusters-F1 gain after 1000 verdicts (R = 200, night 5) over the defaults' groups.
"""

from __future__ import annotations

import argparse
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
from listing_dedup.quality import robust as R  # noqa: E402
from listing_dedup.quality.review import review_queue  # noqa: E402

log = logging.getLogger("review")
ROOT = Path(__file__).resolve().parents[1]
RS = (50, 200, 1000)
NIGHTS = 5
CATALOGS = ("singletons", "size_27k", "sample")


def night_zero(cat: B.Catalog, cfg) -> dict:
    """The defaults' candidate pairs (probability or fused score), edges and groups on ``cat``."""
    res = B.run_conf(cat, cfg)
    a, b, g = res["_graph"]
    w = cfg.fusion.weights([s for s in ("text", "lexical") if getattr(cfg.embed, s).enabled]).get("text", 0.0)
    k = cfg.index.k
    final = cat.search(w, tuple(cfg.inb.thresholds), k)
    ph = cat.phash(cfg.phash.max_bits) if cfg.phash.enabled else None
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
        rows = (frame["src"].to_numpy(), frame["dst"].to_numpy(), model.round_probabilities(frame)[-1])
        match = c2.rerank.match()
    else:
        rows = final
        match = cfg.match
    ea, eb, ew = R.rule_edges_any_order(*rows, match, ph)
    return {"by": res["by"], "rows": rows, "edges": (ea, eb, ew), "groups": np.asarray(g), "threshold": match.threshold}


def simulate(cat: B.Catalog, z: dict, r: int, policy: str, seed: int = 0) -> list[dict]:
    n = cat.n
    ids = np.array([f"{i:09d}" for i in range(n)], dtype=object)
    labels = cat.labels
    ea, eb, ew = z["edges"]
    g0 = z["groups"]
    inside = g0[ea] == g0[eb]  # the edges inside the defaults' groups (after margin and guard)
    src, dst, score = ids[ea[inside]], ids[eb[inside]], ew[inside]
    s, d, p = z["rows"]
    keep = s != d
    s, d, p = s[keep], d[keep], np.asarray(p, dtype=np.float64)[keep]
    edge_set = set(zip(np.minimum(ea, eb).tolist(), np.maximum(ea, eb).tolist()))
    lo, hi = np.minimum(s, d), np.maximum(s, d)
    pairs = pd.DataFrame({"a": ids[lo], "b": ids[hi], "probability": p})
    pairs["edge"] = [(x, y) in edge_set for x, y in zip(lo.tolist(), hi.tolist())]
    pairs = pairs.sort_values("probability", ascending=False).drop_duplicates(["a", "b"]).reset_index(drop=True)
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
        g, _ = constrained_groups(ids, src, dst, score, decisions)
        groups = pd.Series(g, index=ids)
        ga = groups[[a for a, _, _ in decisions]].to_numpy()
        gb = groups[[b for _, b, _ in decisions]].to_numpy()
        want = np.array([v == SAME for _, _, v in decisions])
        honoured = float(((ga == gb) == want).mean()) if decisions else 1.0
        f1 = R.cluster_scores(labels, pd.factorize(g)[0])[0]
        out.append({"night": night, "verdicts": len(decisions), "f1": f1, "honoured": honoured})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=None)
    ap.add_argument("--csv", default=str(B.DEFAULT_CSV))
    ap.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--catalogs", default=",".join(CATALOGS))
    ap.add_argument("--rs", default=",".join(map(str, RS)), help="verdicts per night, comma-separated")
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
    beats, honoured, gains = True, 1.0, []
    cats = B.build(cfg, args.csv, vectors, "report", None, only)
    print("| catalog | listings | by | R | reviewer | F1 night 0 | nights 1-5 |")
    print("|---|---|---|---|---|---|---|")
    for cat in cats:
        z = night_zero(cat, cfg)
        f0 = R.cluster_scores(cat.labels, pd.factorize(z["groups"])[0])[0]
        for r in rs:
            res = {pol: simulate(cat, z, r, pol) for pol in ("queue", "random")}
            for pol, nights in res.items():
                print(
                    f"| {cat.name} | {cat.n:,} | {z['by']} | {r} | {pol} | {f0:.4f} | "
                    + " ".join(f"{x['f1']:.4f}" for x in nights)
                    + " |",
                    flush=True,
                )
                honoured = min(honoured, *(x["honoured"] for x in nights))
            beats &= res["queue"][-1]["f1"] > res["random"][-1]["f1"]
            if r == 200:
                gains.append(res["queue"][-1]["f1"] - f0)
    gain = float(np.mean(gains)) if gains else float("nan")
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(f"review catalogs={len(cats)} beats_random={str(beats).lower()} honoured={honoured:.3f} f1_gain={gain:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
