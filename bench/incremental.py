"""Incremental nights: what a night costs when it continues the previous night's match state.

    nice -n 10 python bench/incremental.py [--products 10500] [--change 0.01] [--add 0.01]
        [--delete 0.005] [--nights 2] [--work DIR] [--set key=value ...] [--fresh] [--cache-only]
        [--shopee-fold 1 [--shopee-drop 0.02]] [--rerun [--keep-reference]] [--replay]

A generated catalog (lib/listing_dedup/quality/sample.py, the one ``make run`` uses; 33,000
products are ~100k listings) runs through ``jobs/dedup_listings.py --conf conf/local.yaml`` (the
default local profile; ``--set`` changes it, e.g. the lexical + pHash signal set of
bench/scale.py) in a child process, with ``incremental.enabled=true`` (docs/incremental.md):

1. night 1: the whole catalog into a fresh warehouse (a full night: it starts the epoch);
2. nights 2..N: each night ``--change`` of the listings get a new title (every other one a new
   photo hash too), ``--add`` of the catalog's size is added (products of another seed) and
   ``--delete`` of it deleted; each night continues the previous one (incremental, unless its
   drift starts an epoch: the summary's plan line says which);
3. the reference of night N: a copy of the warehouse as night N-1 left it runs night N with
   ``incremental.search_all=true`` (every listing searched and blended on the same epoch: the
   full run an incremental night is compared with);
4. with ``--fresh`` (and always for a chain, N > 2): night N's catalog in a fresh warehouse with
   the incremental state off (its own idf and quantizer), and the matches' F1 against the
   generated truth for both.

Seconds come from each run's ``runs`` row (``finished_at - started_at``: the job, not the JVM's
start); ``job_ratio`` = night N / its reference, ``embed_ratio`` = night 2's embed stage / night
1's, ``same_groups`` = the share of night N's listings whose group (its set of members) is the
reference's. ``--cache-only`` runs the bench of stop 16 instead (the embeddings cache alone,
``incremental.enabled=false``: night 2 vs night 1 and a cold run). ``--shopee-fold F`` runs
Shopee's fold ``F`` (``../shared/data``) as night 2 of the fold without ``--shopee-drop`` of its
listings: the incremental night, its reference and a fresh full run, matches F1 against the labels
(final line ``shopee fold=F n=.. added=.. f1_incremental=.. f1_full=.. same_groups=.. job_ratio=..``).

``--rerun`` reuses the night 1 an earlier bench of the same arguments left in ``--work``: nights
2..N and the reference run again (a rerun of a date continues the date before it, so it is the
same incremental night; the embeddings cache already holds the delta's vectors, so its embed stage
is not a first night 2's). ``--keep-reference`` (with ``--rerun``) also keeps that bench's reference
run of night N (read from its ``runs`` row and tables, not run again: valid while the reference's code
path, a full search of every listing on the epoch, is unchanged; its seconds are from its own load).

``--replay`` runs no job: night N's driver rounds (search/driver_night.driver_rounds) again in this
process from the states an earlier bench left in ``--work`` (night N-1's arrays, the delta read
off the two nights' ids and round-0 vectors, the inserted listings' vectors from night N's), each
step's CPU seconds (``time.process_time``: comparable on a loaded machine, where wall seconds are
not), and whether the arrays equal night N's saved ones bit for bit (a change to the rounds that
should not change them is checked on the real night this way); final line ``replay n=<listings>
cpu_s=<rounds> equal=<true|false>``.

Final line: ``incremental n=<listings> job_ratio=<night N / reference> same_groups=<share>
embed_ratio=<night 2 / night 1> deleted=<listings deleted on night N>``; a chain prints before it
``chain nights=<N> same_groups_fresh=<share> f1_incremental=<..> f1_fresh=<..>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from listing_dedup.quality.evaluate import evaluate_run  # noqa: E402
from listing_dedup.quality.sample import generate_catalog  # noqa: E402
from listing_dedup.sink.delta import read_table  # noqa: E402

CONF = str(REPO / "conf" / "local.yaml")
FIRST = dt.date(2026, 12, 1)
INCREMENTAL = ["incremental.enabled=true"]


def night_date(i: int) -> str:
    return (FIRST + dt.timedelta(days=i - 1)).isoformat()


def next_night(
    catalog: pd.DataFrame, truth: pd.DataFrame, change: float, add: float, delete: float, seed: int, night: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The next night's catalog and truth: ``change`` of the listings reworded (every other one a
    new photo hash too), ``delete`` of them gone, ``add`` of the catalog's size added as listings
    of new products (ids ``n<night>_...``)."""
    rng = np.random.default_rng(seed + night)
    out = catalog.copy()
    valid = out.index[out["posting_id"].notna() & out["title"].fillna("").str.strip().astype(bool)]
    n_change = int(round(change * len(catalog)))
    n_delete = int(round(delete * len(catalog)))
    picked = rng.choice(valid, size=n_change + n_delete, replace=False)
    for i, idx in enumerate(picked[:n_change]):
        words = str(out.at[idx, "title"]).split()
        out.at[idx, "title"] = " ".join([*words[1:], words[0], f"v{night}x{i}"])  # re-listed with a reworded title
        if i % 2 == 0:
            out.at[idx, "image_phash"] = f"{int(rng.integers(0, 2**63)):016x}"
    gone = set(out.loc[picked[n_change:], "posting_id"])
    out = out.drop(index=picked[n_change:])
    n_add = int(round(add * len(catalog)))
    sample = generate_catalog(max(1, n_add // 3), seed=seed * 1000 + night, with_bad_rows=False)
    extra = sample.listings.head(n_add)
    prefix = f"n{night}_"
    extra = extra.assign(posting_id=prefix + extra["posting_id"])
    extra_truth = sample.truth.assign(
        posting_id=prefix + sample.truth["posting_id"], label_group=prefix + sample.truth["label_group"].astype(str)
    )
    extra_truth = extra_truth[extra_truth["posting_id"].isin(set(extra["posting_id"]))]
    truth = pd.concat([truth[~truth["posting_id"].isin(gone)], extra_truth], ignore_index=True)
    counts = {"changed": n_change, "added": len(extra), "deleted": len(gone)}
    return pd.concat([out, extra], ignore_index=True), truth, counts


def start_job(input_path: str, warehouse: str, run_date: str, sets: list[str]) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "jobs/dedup_listings.py", "--conf", CONF, "--input", input_path]
    cmd += ["--run-date", run_date, "--warehouse", warehouse]
    for s in sets:
        cmd += ["--set", s]
    log = open(f"{warehouse}.{run_date}.log", "w")  # noqa: SIM115 - the child's log, closed with the process
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True), time.monotonic()


def run_job(input_path: str, warehouse: str, run_date: str, sets: list[str]) -> dict:
    p, t0 = start_job(input_path, warehouse, run_date, sets)
    rc = p.wait()
    wall = time.monotonic() - t0
    if rc != 0:
        sys.exit(f"job failed ({rc}): {Path(f'{warehouse}.{run_date}.log').read_text()[-3000:]}")
    return figures(warehouse, run_date, wall)


def figures(warehouse: str, run_date: str, wall: float | None) -> dict:
    """A run's seconds, plan and counts, from its (last succeeded) ``runs`` row."""
    runs = read_table(warehouse, "runs", run_date)
    row = runs[runs["status"] == "succeeded"].sort_values("finished_at").iloc[-1]
    stages = json.loads(row["stage_seconds"])
    counts = json.loads(row["signal_counts"]) if isinstance(row.get("signal_counts"), str) else {}
    job_s = (row["finished_at"] - row["started_at"]).total_seconds()
    plan = plan_of(warehouse, run_date)
    res = {"embed_s": float(stages.get("embed", 0.0)), "job_s": float(job_s), "stages": stages, "counts": counts}
    res["plan"] = plan
    searched = counts.get("incremental_searched")
    print(
        f"{run_date} {Path(warehouse).name}: {plan}; job {job_s:.1f} s (process {wall or 0:.1f} s), "
        f"embed {res['embed_s']:.1f} s" + (f", searched {searched} listings" if searched is not None else "")
        + f"; stages {stages}",
        flush=True,
    )  # fmt: skip
    return res


def print_stages(runs: dict[str, dict]) -> None:
    """The runs' stage seconds side by side (a markdown table), then the incremental counts."""
    names = list(dict.fromkeys(k for r in runs.values() for k in r["stages"]))
    print("| run | job s | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, r in runs.items():
        cells = " | ".join(f"{r['stages'][n]:.1f}" if n in r["stages"] else "" for n in names)
        print(f"| {label} | {r['job_s']:.1f} | {cells} |")
    for label, r in runs.items():
        keys = [k for k in sorted(r["counts"]) if k.startswith(("incremental_", "night_", "phash"))]
        if keys:
            print(f"{label}: " + ", ".join(f"{k}={r['counts'][k]}" for k in keys))
    sys.stdout.flush()


def plan_of(warehouse: str, run_date: str) -> str:
    try:
        log = read_table(warehouse, "state_log", run_date)
    except Exception:  # noqa: BLE001 - no state kept (incremental off)
        return "no state"
    r = log.sort_values("committed_at").iloc[-1]
    return f"{r['plan']} ({r['reason']})"


def group_sets(warehouse: str, run_date: str) -> pd.Series:
    """posting_id -> the frozenset of its group's members."""
    c = read_table(warehouse, "clusters", run_date, columns=["posting_id", "group_id"])
    members = c.groupby("group_id")["posting_id"].agg(frozenset)
    return c.set_index("posting_id")["group_id"].map(members)


def same_groups(a_wh: str, b_wh: str, run_date: str) -> tuple[float, int]:
    """The share of listings whose group has the same members in both runs, and how many differ."""
    a, b = group_sets(a_wh, run_date), group_sets(b_wh, run_date)
    b = b.reindex(a.index)
    same = np.array([x == y for x, y in zip(a, b)])
    return float(same.mean()) if len(same) else 1.0, int((~same).sum())


def cache_only(args, work: Path) -> None:
    """The embeddings cache's bench (stop 16): night 2 with the cache vs night 1 and a cold run."""
    cat = generate_catalog(args.products, seed=args.seed, growth=args.growth)
    day2, truth2, counts = next_night(cat.listings, cat.truth, args.change, args.add, 0.0, args.seed, 2)
    p1, p2 = str(work / "night1.parquet"), str(work / "night2.parquet")
    cat.listings.to_parquet(p1, index=False)
    day2.to_parquet(p2, index=False)
    inc, cold = str(work / "wh_cache"), str(work / "wh_cold")
    r1 = run_job(p1, inc, night_date(1), args.sets)
    r2 = run_job(p2, inc, night_date(2), args.sets)
    rc = run_job(p2, cold, night_date(2), [*args.sets, "cache.enabled=false"])
    share, n_diff = same_groups(inc, cold, night_date(2))
    print(f"cold run: embed {rc['embed_s']:.1f} s, job {rc['job_s']:.1f} s; groups differing {n_diff}")
    print(
        f"incremental embed_ratio={r2['embed_s'] / r1['embed_s']:.3f} job_ratio={r2['job_s'] / r1['job_s']:.3f} "
        f"same_output={'true' if n_diff == 0 else 'false'}"
    )


def shopee_night(args, work: Path) -> None:
    """Shopee fold ``--shopee-fold`` as night 2 of the fold minus ``--shopee-drop`` of its
    listings (night 1, full): the incremental night beside its reference (the same epoch, every
    listing searched) and a fresh full run of the fold, matches F1 against the fold's labels."""
    df = pd.read_csv(args.shopee_csv)
    df = df[df["fold"] == args.shopee_fold].reset_index(drop=True)
    truth = df[["posting_id", "label_group"]]
    fold = df[["posting_id", "title", "image_phash"]]  # the image files are not in the data folder
    rng = np.random.default_rng(args.seed)
    dropped = rng.choice(len(fold), int(round(args.shopee_drop * len(fold))), replace=False)
    p1, p2 = str(work / "night1.parquet"), str(work / "night2.parquet")
    fold.drop(index=dropped).to_parquet(p1, index=False)
    fold.to_parquet(p2, index=False)
    sets = [*args.sets, *INCREMENTAL]
    inc, ref, fresh = str(work / "wh_incremental"), str(work / "wh_reference"), str(work / "wh_fresh")
    print(f"Shopee fold {args.shopee_fold}: {len(fold)} listings, night 1 without {len(dropped)}", flush=True)
    run_job(p1, inc, night_date(1), sets)
    shutil.copytree(inc, ref)
    night = run_job(p2, inc, night_date(2), sets)
    reference = run_job(p2, ref, night_date(2), [*sets, "incremental.search_all=true"])
    full = run_job(p2, fresh, night_date(2), args.sets)
    share, n_diff = same_groups(inc, ref, night_date(2))
    f1 = {n: evaluate_run(w, night_date(2), truth)["matches"]["f1"] for n, w in (("inc", inc), ("full", fresh))}
    print_stages({"night 2 incremental": night, "reference": reference, "fresh full": full})
    print(
        f"shopee fold={args.shopee_fold} n={len(fold)} added={len(dropped)} f1_incremental={f1['inc']:.4f} "
        f"f1_full={f1['full']:.4f} same_groups={share:.4f} job_ratio={night['job_s'] / full['job_s']:.3f}"
    )


def replay(args, work: Path) -> None:
    """``--replay``: night N's driver rounds again from the saved states, timed step by step."""
    import collections

    from listing_dedup.search import driver_night as dn
    from listing_dedup.sink.state import load_epoch

    inc, last = str(work / "wh_incremental"), night_date(args.nights)
    logs = {
        d: read_table(inc, "state_log", d).sort_values("committed_at").iloc[-1]
        for d in (night_date(args.nights - 1), last)
    }
    prev = dn.load_state(inc, night_date(args.nights - 1), logs[night_date(args.nights - 1)]["run_id"])
    cur = dn.load_state(inc, last, logs[last]["run_id"])
    centroids = load_epoch(inc, logs[last]["epoch"]).centroids
    at_prev = pd.Series(np.arange(prev.n), index=prev.ids)
    both = cur.ids[np.isin(cur.ids, prev.ids)]
    c_rows, p_rows = np.searchsorted(cur.ids, both), at_prev[both].to_numpy()
    changed = both[(cur.rounds[0].vectors[c_rows] != prev.rounds[0].vectors[p_rows]).any(1)]
    added, deleted = cur.ids[~np.isin(cur.ids, prev.ids)], prev.ids[~np.isin(prev.ids, cur.ids)]
    new_ids = np.concatenate([added, changed])
    cpu: dict[str, float] = collections.defaultdict(float)
    for name in (
        "search_rows",
        "reverse_rows",
        "update_lists",
        "blend_rows",
        "probes_of",
        "assign_lists",
        "affected_rows",
    ):
        f = getattr(dn, name)

        def timed(*a, _f=f, _name=name, **kw):
            t = time.process_time()
            try:
                return _f(*a, **kw)
            finally:
                cpu[_name] += time.process_time() - t

        setattr(dn, name, timed)
    t0 = time.process_time()
    state = dn.driver_rounds(
        prev,
        removed=[*deleted, *changed],
        new_ids=new_ids,
        new_vectors=cur.rounds[0].vectors[np.searchsorted(cur.ids, new_ids)],
        centroids=centroids,
        nprobe=args.nprobe,
        k=args.k,
        depth=args.k + args.slack,
        thresholds=tuple(args.thresholds),
    )
    total = time.process_time() - t0
    equal = bool(np.array_equal(state.ids, cur.ids)) and all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for a, b in zip(state.rounds, cur.rounds, strict=True)
        for f in ("ids", "scores", "vectors", "assign", "probes")
    )
    print(
        f"night {args.nights}: added {len(added)}, changed {len(changed)}, deleted {len(deleted)}; "
        f"counts {state.counts}"
    )
    print("CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])))
    print(f"replay n={len(cur.ids)} cpu_s={total:.1f} equal={'true' if equal else 'false'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=10500)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--add", type=float, default=0.01)
    ap.add_argument("--delete", type=float, default=0.005)
    ap.add_argument("--nights", type=int, default=2, help="nights in the chain (2: one incremental night)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--growth", default="categories", choices=["categories", "lines"])
    ap.add_argument("--work", default="")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--fresh", action="store_true", help="also a fresh full run of the last night (always for N > 2)")
    ap.add_argument("--cache-only", action="store_true", help="the embeddings cache's bench of stop 16")
    ap.add_argument(
        "--rerun",
        action="store_true",
        help="night 1 from an earlier bench in --work (same arguments); nights 2..N and the reference rerun",
    )
    ap.add_argument(
        "--keep-reference",
        action="store_true",
        help="with --rerun: the earlier bench's reference of night N as it is (not run again)",
    )
    ap.add_argument("--replay", action="store_true", help="night N's driver rounds from the saved states, timed")
    ap.add_argument("--nprobe", type=int, default=64, help="--replay: the conf's index.nprobe")
    ap.add_argument("--k", type=int, default=50, help="--replay: the conf's index.k")
    ap.add_argument("--slack", type=int, default=16, help="--replay: the conf's incremental.slack")
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.6], help="--replay: the conf's inb.thresholds")
    ap.add_argument("--shopee-fold", type=int, default=None, help="Shopee fold as night 2")
    ap.add_argument("--shopee-drop", type=float, default=0.02)
    ap.add_argument("--shopee-csv", default=str(REPO.parent / "shared" / "data" / "shopee" / "listings_dev.csv"))
    args = ap.parse_args()
    if args.nights < 2:
        sys.exit("--nights must be >= 2")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_incremental_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.cache_only:
        cache_only(args, work)
        return
    if args.replay:
        replay(args, work)
        return
    if args.shopee_fold is not None:
        shopee_night(args, work)
        return

    sample = generate_catalog(args.products, seed=args.seed, growth=args.growth)
    cat, truth = sample.listings, sample.truth
    sets = [*args.sets, *INCREMENTAL]
    inc, ref, fresh = str(work / "wh_incremental"), str(work / "wh_reference"), str(work / "wh_fresh")
    path = str(work / "night1.parquet")
    keep_ref = args.rerun and args.keep_reference
    if args.keep_reference and not args.rerun:
        sys.exit("--keep-reference needs --rerun")
    if args.rerun:  # night 1 is the one an earlier bench of the same arguments left in --work
        print(f"night 1: {len(cat)} listings (from {inc})", flush=True)
        first = figures(inc, night_date(1), None)
    else:
        cat.to_parquet(path, index=False)
        print(f"night 1: {len(cat)} listings", flush=True)
        first = run_job(path, inc, night_date(1), sets)
    results, counts = {1: first}, {}
    for night in range(2, args.nights + 1):
        cat, truth, counts = next_night(cat, truth, args.change, args.add, args.delete, args.seed, night)
        path = str(work / f"night{night}.parquet")
        cat.to_parquet(path, index=False)
        print(f"night {night}: {len(cat)} listings ({counts})", flush=True)
        if night == args.nights and not keep_ref:  # the reference continues the same state, every listing searched
            shutil.rmtree(ref, ignore_errors=True)
            shutil.copytree(inc, ref)
        results[night] = run_job(path, inc, night_date(night), sets)
    last, date = args.nights, night_date(args.nights)
    if keep_ref:
        print(f"reference of night {last}: kept from the earlier bench in {ref}", flush=True)
        reference = figures(ref, date, None)
    else:
        reference = run_job(path, ref, date, [*sets, "incremental.search_all=true"])
    share, n_diff = same_groups(inc, ref, date)
    print_stages({"night 1 (full)": first, f"night {last} incremental": results[last], "reference": reference})
    print(
        f"night {last} vs its reference (every listing searched on the same epoch): {n_diff} listings in other "
        f"groups; job {results[last]['job_s']:.1f} s vs {reference['job_s']:.1f} s",
        flush=True,
    )
    if args.fresh or args.nights > 2:
        full = run_job(path, fresh, date, args.sets)
        share_fresh, n_fresh = same_groups(inc, fresh, date)
        f1_inc = evaluate_run(inc, date, truth)["matches"]["f1"]
        f1_fresh = evaluate_run(fresh, date, truth)["matches"]["f1"]
        print(f"fresh full run of night {last}: job {full['job_s']:.1f} s; {n_fresh} listings in other groups")
        print(
            f"chain nights={last} same_groups_fresh={share_fresh:.4f} f1_incremental={f1_inc:.4f} "
            f"f1_fresh={f1_fresh:.4f}"
        )
    n_last = len(group_sets(inc, date))
    print(
        f"incremental n={n_last} job_ratio={results[last]['job_s'] / reference['job_s']:.3f} "
        f"same_groups={share:.4f} embed_ratio={results[2]['embed_s'] / first['embed_s']:.3f} "
        f"deleted={counts['deleted']}"
    )


if __name__ == "__main__":
    main()
