"""Incremental nightly runs with the embeddings cache: what the second night costs.

    nice -n 5 python bench/incremental.py [--products 10500] [--change 0.01] [--add 0.01]
        [--work DIR] [--set key=value ...] [--resume] [--cold-beside]

A generated catalog (lib/listing_dedup/quality/sample.py, the one ``make run`` uses; 10,500
products are ~31,500 listings) runs through ``jobs/dedup_listings.py --conf conf/local.yaml``
(the default local profile: text encoder, lexical, pHash; the cache on) in a child process:

1. night 1: the whole catalog into a fresh warehouse (an empty cache: every vector computed);
2. night 2: 1 % of the listings changed (a new title; every other one also a new photo hash)
   and 1 % added (listings of products from another seed), into the same warehouse;
3. cold: night 2's input into a fresh warehouse with ``cache.enabled=false`` (after night 2, or
   with ``--cold-beside`` at the same time: night 2 then runs on a busier machine, so its
   seconds can only come out higher). ``--resume`` keeps a night 1 that ``--work`` already holds.

Seconds of the embed stage come from each run's ``runs`` row (``stage_seconds``), the job's
from ``finished_at - started_at`` (the job itself, not the JVM's start; the process's wall time
is printed too). Night 2's ``clusters`` must equal the cold run's; a listing whose group differs
is allowed only when a match pair the two runs disagree on has a fused score within 1e-5 of a
threshold the edge rules or the guard use; every such difference is listed. (Since stop 23 the
text encoder batches titles of one token length, unpadded, so a cached title's vector is the cold
run's bits on the same machine, and the index's sample depends on the rows, not the layout.)

Final line: ``incremental embed_ratio=<night 2 / night 1> job_ratio=<night 2 / night 1>
same_output=<true|false>``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.quality.sample import generate_catalog  # noqa: E402
from listing_dedup.sink.delta import read_table  # noqa: E402

CONF = str(REPO / "conf" / "local.yaml")
NIGHT1, NIGHT2 = "2026-12-01", "2026-12-02"
EPS = 1e-5


def night_two(catalog: pd.DataFrame, change: float, add: float, seed: int) -> tuple[pd.DataFrame, int, int]:
    """``catalog`` with ``change`` of its listings given a new title (every other one a new photo
    hash too) and ``add`` of its size added as listings of new products."""
    rng = np.random.default_rng(seed)
    out = catalog.copy()
    valid = out.index[out["posting_id"].notna() & out["title"].str.strip().astype(bool)]
    n_change = int(round(change * len(catalog)))
    picked = rng.choice(valid, size=n_change, replace=False)
    for i, idx in enumerate(picked):
        words = str(out.at[idx, "title"]).split()
        out.at[idx, "title"] = " ".join([*words[1:], words[0], f"v{i}"])  # re-listed with a reworded title
        if i % 2 == 0:
            out.at[idx, "image_phash"] = f"{int(rng.integers(0, 2**63)):016x}"
    n_add = int(round(add * len(catalog)))
    extra = generate_catalog(max(1, n_add // 3), seed=seed + 1000, with_bad_rows=False).listings.head(n_add)
    extra = extra.assign(posting_id="new_" + extra["posting_id"])
    return pd.concat([out, extra], ignore_index=True), n_change, len(extra)


def start_job(input_path: str, warehouse: str, run_date: str, sets: list[str]) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "jobs/dedup_listings.py", "--conf", CONF, "--input", input_path]
    cmd += ["--run-date", run_date, "--warehouse", warehouse]
    for s in sets:
        cmd += ["--set", s]
    log = open(f"{warehouse}.log", "w")  # noqa: SIM115 - the child's log, closed with the process
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True), time.monotonic()


def finish_job(job: tuple[subprocess.Popen, float], warehouse: str, run_date: str) -> dict:
    p, t0 = job
    rc = p.wait()
    wall = time.monotonic() - t0
    if rc != 0:
        sys.exit(f"job failed ({rc}): {Path(f'{warehouse}.log').read_text()[-3000:]}")
    return figures(warehouse, run_date, wall)


def run_job(input_path: str, warehouse: str, run_date: str, sets: list[str]) -> dict:
    return finish_job(start_job(input_path, warehouse, run_date, sets), warehouse, run_date)


def figures(warehouse: str, run_date: str, wall: float | None) -> dict:
    """A run's seconds and cache counts, from its (last succeeded) ``runs`` row."""
    runs = read_table(warehouse, "runs", run_date)
    runs = runs[runs["status"] == "succeeded"]
    row = runs.sort_values("finished_at").iloc[-1]
    stages = json.loads(row["stage_seconds"])
    job_s = (row["finished_at"] - row["started_at"]).total_seconds()
    res = {
        "embed_s": float(stages["embed"]),
        "job_s": float(job_s),
        "wall_s": wall,
        "stages": stages,
        "reused": row.get("vectors_reused"),
        "computed": row.get("vectors_computed"),
    }
    process = f"{wall:.1f} s" if wall is not None else "not timed: an earlier invocation ran it"
    print(
        f"{run_date} {Path(warehouse).name}: embed {res['embed_s']:.1f} s, job {job_s:.1f} s (process {process}), "
        f"vectors reused {res['reused']} computed {res['computed']}; stages {stages}",
        flush=True,
    )
    return res


def _succeeded(warehouse: str, run_date: str) -> bool:
    try:
        return bool((read_table(warehouse, "runs", run_date)["status"] == "succeeded").any())
    except Exception:  # noqa: BLE001 - no runs table yet
        return False


def thresholds(sets: list[str]) -> list[float]:
    """Every score threshold the edge rules and the guard compare a fused score with."""
    cfg = load_config([CONF], sets)
    m, g = cfg.match, cfg.guard
    out = [m.threshold, m.relative_floor, m.mutual_floor, *cfg.inb.thresholds]
    if m.min2:
        out.append(m.min2_threshold)
    base = m.min2_threshold if m.min2 else m.threshold
    out += [base + k * g.step for k in range(1, 40) if base + k * g.step <= 1.0 + 1e-9]
    return out


def pair_scores(warehouse: str, run_date: str) -> dict[tuple[str, str], float]:
    cand = read_table(warehouse, "candidates", run_date, columns=["posting_id", "candidate_id", "score"])
    return {(a, b): float(s) for a, b, s in zip(cand["posting_id"], cand["candidate_id"], cand["score"])}


def match_pairs(warehouse: str, run_date: str) -> set[tuple[str, str]]:
    m = read_table(warehouse, "matches", run_date, columns=["posting_id", "match_ids"])
    return {(a, b) for a, ids in zip(m["posting_id"], m["match_ids"]) for b in ids if a < b}


def compare(inc_wh: str, cold_wh: str, sets: list[str]) -> tuple[bool, list[str]]:
    """Night 2's clusters vs the cold run's: (same, the differences, each with its explanation). With
    ``--compare-only`` the runs of an earlier invocation in ``--work`` are compared again."""
    a = read_table(inc_wh, "clusters", NIGHT2).set_index("posting_id")["group_id"]
    b = read_table(cold_wh, "clusters", NIGHT2).set_index("posting_id")["group_id"]
    if a.index.sort_values().tolist() != b.index.sort_values().tolist():
        return False, ["the two runs kept other listings"]
    b = b.reindex(a.index)
    differ = a.index[a != b].tolist()
    if not differ:
        return True, []
    ts = thresholds(sets)
    pa_, pb_ = match_pairs(inc_wh, NIGHT2), match_pairs(cold_wh, NIGHT2)
    sa, sb = pair_scores(inc_wh, NIGHT2), pair_scores(cold_wh, NIGHT2)
    notes, ok = [], True
    for pair in sorted(pa_ ^ pb_):
        scores = [s.get(pair, s.get(pair[::-1])) for s in (sa, sb)]
        near = [min(abs(x - t) for t in ts) for x in scores if x is not None]
        allowed = bool(near) and min(near) <= EPS
        ok &= allowed
        notes.append(f"pair {pair}: scores {scores}, nearest threshold {min(near) if near else None} -> "
                     f"{'within' if allowed else 'NOT within'} {EPS}")  # fmt: skip
    if not (pa_ ^ pb_):  # the same matches: the guard's levels cut a group differently
        cols = ["posting_id", "match_ids", "scores"]
        both = [read_table(wh, "matches", NIGHT2, columns=cols).set_index("posting_id") for wh in (inc_wh, cold_wh)]
        for pid in differ:
            pairs = []
            for m in both:
                pairs += [(q, float(x)) for q, x in zip(m.loc[pid, "match_ids"], m.loc[pid, "scores"])]
            near = [(min(abs(x - t) for t in ts), q, x) for q, x in pairs]
            best = min(near) if near else None
            allowed = best is not None and best[0] <= EPS
            ok &= allowed
            notes.append(f"{pid}: same match pairs, other group; its pair with {best[1] if best else None} scores "
                         f"{best[2] if best else None}, {best[0] if best else None} from a guard/edge threshold -> "
                         f"{'within' if allowed else 'NOT within'} {EPS}")  # fmt: skip
    notes.append(f"{len(differ)} listings in other groups: {differ[:20]}")
    return ok, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=10500)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--add", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--growth",
        default="categories",
        choices=["categories", "lines"],
        help="the generator's rule past 3,000 products (quality/sample.py); the figures before stop 27 used 'lines'",
    )
    ap.add_argument("--work", default="")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--resume", action="store_true", help="keep night 1 when --work already holds it")
    ap.add_argument("--compare-only", action="store_true", help="compare the runs --work holds again")
    ap.add_argument(
        "--cold-beside", action="store_true", help="run the cold run at the same time as night 2 (a busier night 2)"
    )
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_incremental_"))
    work.mkdir(parents=True, exist_ok=True)
    cat = generate_catalog(args.products, seed=args.seed, growth=args.growth).listings
    day2, n_changed, n_added = night_two(cat, args.change, args.add, args.seed)
    p1, p2 = str(work / "night1.parquet"), str(work / "night2.parquet")
    cat.to_parquet(p1, index=False)
    day2.to_parquet(p2, index=False)
    print(f"catalog {len(cat)} listings; night 2: {n_changed} changed, {n_added} added ({len(day2)} rows)", flush=True)

    inc, cold = str(work / "wh_incremental"), str(work / "wh_cold")
    if args.compare_only:
        same, notes = compare(inc, cold, args.sets)
        for n in notes:
            print("  " + n)
        print(f"same_output={'true' if same else 'false'}")
        return
    if args.resume and _succeeded(inc, NIGHT1):  # night 1 done by an earlier invocation (same catalog)
        r1 = figures(inc, NIGHT1, None)
    else:
        r1 = run_job(p1, inc, NIGHT1, args.sets)
    cold_sets = [*args.sets, "cache.enabled=false"]
    if args.cold_beside:  # the cold run beside night 2: night 2's seconds are those of a busier machine
        cold_job = start_job(p2, cold, NIGHT2, cold_sets)
        r2 = run_job(p2, inc, NIGHT2, args.sets)
        rc = finish_job(cold_job, cold, NIGHT2)
    else:
        r2 = run_job(p2, inc, NIGHT2, args.sets)
        rc = run_job(p2, cold, NIGHT2, cold_sets)
    same, notes = compare(inc, cold, args.sets)
    for n in notes:
        print("  " + n)
    vs_cold = f"embed {r2['embed_s'] / rc['embed_s']:.3f}, job {r2['job_s'] / rc['job_s']:.3f}"
    print(
        f"cold run (cache off) on night 2: embed {rc['embed_s']:.1f} s, job {rc['job_s']:.1f} s; "
        f"night 2 with the cache vs cold: {vs_cold}"
    )
    print(
        f"incremental embed_ratio={r2['embed_s'] / r1['embed_s']:.3f} job_ratio={r2['job_s'] / r1['job_s']:.3f} "
        f"same_output={'true' if same else 'false'}"
    )


if __name__ == "__main__":
    main()
