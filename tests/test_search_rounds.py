"""The search rounds of a night (search/rounds.py): an incremental night's rounds (the delta
searched, the other lists updated, only the affected listings blended) against a full night of
the same catalog with the same quantizer. Exact index (one list) and an exhaustive search of the
inserted listings, so the two must agree exactly: the same blended vectors bit for bit and the
same top-k lists; the full night's lists are computed by the full plan, not by the code under
test, and both are checked against a numpy brute force."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from listing_dedup.config import DedupConfig
from listing_dedup.config.job import InbConf, IndexConf
from listing_dedup.search.incremental import night_delta
from listing_dedup.search.rounds import delta_rounds, full_rounds
from listing_dedup.timing import StageTimer

K, DEPTH = 4, 7


def catalogs(seed=7, n=160, d=6, n_centres=40):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    x = centres[rng.integers(0, n_centres, n)] + 0.35 * rng.normal(size=(n, d))  # clusters: INB has work
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"p{i:03d}" for i in range(n)]
    night2 = dict(zip(ids, x))
    for p in rng.choice(ids, 5, replace=False):
        del night2[p]
    for p in rng.choice(sorted(night2), 4, replace=False):
        v = centres[rng.integers(0, n_centres)] + 0.35 * rng.normal(size=d)
        night2[p] = v / np.linalg.norm(v)
    changed = {p for p in night2 if p in ids and not np.array_equal(night2[p], x[ids.index(p)])}
    for i in range(6):
        v = centres[rng.integers(0, n_centres)] + 0.35 * rng.normal(size=d)
        night2[f"n{i:02d}"] = v / np.linalg.norm(v)
    return ids, x.astype(np.float32), night2, changed


def frame(spark, ids, x):
    rows = pd.DataFrame({"posting_id": list(ids), "emb": [np.asarray(v, dtype=np.float32).tolist() for v in x]})
    return spark.createDataFrame(rows, "posting_id string, emb array<float>")


def by_src(df) -> dict[str, list[str]]:
    pdf = df.toPandas().sort_values(["src", "score", "dst"], ascending=[True, False, True])
    return {s: g["dst"].tolist() for s, g in pdf.groupby("src")}


def test_incremental_rounds_equal_a_full_night(spark):
    cfg = replace(
        DedupConfig(),
        index=IndexConf(n_shards=2, exact_below=10**6, nprobe=1, k=K),
        inb=InbConf(thresholds=(0.6,)),
    )
    keep = lambda df: df.persist()  # noqa: E731
    ids, x, night2, changed = catalogs()
    emb1 = frame(spark, ids, x)
    one = full_rounds(emb1, cfg, len(ids), StageTimer(), keep, depth=DEPTH)
    ids2 = sorted(night2)
    x2 = np.stack([night2[p] for p in ids2]).astype(np.float32)
    emb2 = frame(spark, ids2, x2)
    digest = lambda p, night: p + ("*" if night == 2 and p in changed else "")  # noqa: E731
    delta = night_delta(
        pd.DataFrame({"posting_id": ids, "digest": [digest(p, 1) for p in ids]}),
        pd.DataFrame({"posting_id": ids2, "digest": [digest(p, 2) for p in ids2]}),
    )
    inc = delta_rounds(
        emb2, cfg, len(ids2), StageTimer(), keep, depth=DEPTH, quantizer=one.quantizer,
        delta=spark.createDataFrame(delta), prev_lists=one.lists, prev_vectors=one.vectors,
        search_depth=len(ids2),
    )  # fmt: skip
    full = full_rounds(emb2, cfg, len(ids2), StageTimer(), keep, depth=DEPTH, quantizer=one.quantizer)

    assert inc.counts["added"] == 6 and inc.counts["deleted"] == 5 and inc.counts["changed"] == len(changed) == 4
    # only the delta (and the stale lists) searched; only the listings whose neighbourhood moved blended
    assert inc.counts["searched"] < len(ids2) // 4 and 0 < inc.counts["blended1"] < len(ids2) // 2
    blended_inc = {r["posting_id"]: np.array(r["emb"]) for r in inc.vectors[1].collect()}
    blended_full = {r["posting_id"]: np.array(r["emb"]) for r in full.vectors[1].collect()}
    assert sorted(blended_inc) == ids2 == sorted(blended_full)
    for p in ids2:
        np.testing.assert_array_equal(blended_inc[p], blended_full[p], err_msg=p)
    for got, want in ((inc.first_nbrs, full.first_nbrs), (inc.nbrs, full.nbrs)):
        assert by_src(got) == by_src(want)
    # each round's lists carry every row's rank in its list (what the state keeps: the top k is a filter)
    for lists in (*inc.lists, *full.lists):
        pdf = lists.toPandas().sort_values(["src", "score", "dst"], ascending=[True, False, True])
        assert (pdf["rank"].to_numpy() == pdf.groupby("src").cumcount().to_numpy() + 1).all()
    # and the full night is the brute force's (the reference the equality above rests on)
    s = x2 @ x2.T
    want0 = {
        ids2[a]: [
            ids2[b] for b in sorted((b for b in range(len(ids2)) if b != a), key=lambda b: (-s[a, b], ids2[b]))[:K]
        ]
        for a in range(len(ids2))
    }
    assert by_src(full.first_nbrs) == want0
