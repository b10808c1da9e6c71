"""One-off probe, not part of the job: would a learned pair re-ranker beat the fused threshold?
Candidates = the fused (fine-tuned e5 0.5 + TF-IDF 0.5) kNN after one INB round (0.6), k 50;
features = blended score, text and TF-IDF cosines, pHash Hamming distance, rank, gap to the
row's best score, title lengths; a gradient-boosted classifier trained on fold 4 (threshold and
min2 chosen out-of-fold there), applied to fold 1 with the job's edge rules + pHash <= 6 bits.
Needs data/models/e5_full and the cached vectors of jobs/tune.py (data/cache); run from the repo root:

    python bench/rerank_probe.py

Measured 2026-11-23: fold 1 0.8509 (P 0.879 R 0.874) vs 0.8455 for the fused threshold.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from listing_dedup.blender import blend_numpy  # noqa: E402
from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.tune import Grid, _fused, fast_edges, load_split, prepare_part, text_vectors, union_pairs  # noqa: E402
from listing_dedup.tuning import knn  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402

ce = load_config(["conf/local.yaml", "data/models/e5_full/overlay.yaml"])
D = {}
for name, path in [("f4", "data/shopee_fold4_labelled.parquet"), ("f1", "data/shopee_fold1/labelled.parquet")]:
    df = load_split(path, None, ce.input.max_title_chars)
    p = prepare_part(name, df, ce, text_vectors(df, ce, "data/cache"), Grid(phash_bits=(6,)))
    x = _fused(p, 0.5)
    base = knn(x, 50)
    k = base[2] >= 0.6
    xb = blend_numpy(x, base[0][k], base[1][k], base[2][k])
    src, dst, sc = knn(xb, 50)
    ph = df["image_phash"].fillna("0" * 16).map(lambda h: int(h, 16) if len(h) == 16 else 0).to_numpy(dtype=np.uint64)
    ham = np.array([bin(int(a) ^ int(b)).count("1") for a, b in zip(ph[src], ph[dst])])
    tc = np.einsum("ij,ij->i", p.text[src], p.text[dst])
    lc = np.einsum("ij,ij->i", p.lexical[src], p.lexical[dst])
    rank = np.concatenate([np.arange(c) for c in np.bincount(src, minlength=len(df))])
    first = np.r_[True, src[1:] != src[:-1]]
    top1 = np.repeat(sc[first], np.bincount(src, minlength=len(df))[np.bincount(src, minlength=len(df)) > 0])
    lens = df["title"].str.len().to_numpy()
    X = np.c_[sc, tc, lc, ham, rank, sc - top1, np.minimum(lens[src], lens[dst]), np.abs(lens[src] - lens[dst])]
    y = (p.scorer.lab[src] == p.scorer.lab[dst]).astype(int)
    D[name] = (p, src, dst, sc, X, y)
    print(name, X.shape, y.mean(), flush=True)
clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
p4, s4, d4, sc4, X4, y4 = D["f4"]
# out-of-fold on f4 for threshold choice: 2-fold by src parity of group
grp = p4.scorer.lab[s4] % 2
oof = np.zeros(len(y4))
for g in (0, 1):
    m = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0).fit(X4[grp != g], y4[grp != g])
    oof[grp == g] = m.predict_proba(X4[grp == g])[:, 1]
clf.fit(X4, y4)


def score(part, src, dst, prob, t, m2):
    e = fast_edges(src, dst, prob.astype(np.float32), t, m2)
    return part.scorer.score(*union_pairs(e, part.phash[6]))


best = max(
    ((score(p4, s4, d4, oof, t, m), t, m) for t in np.arange(0.2, 0.9, 0.05) for m in (None, 0.05, 0.1, 0.2)),
    key=lambda r: r[0][0],
)
print("f4 oof best", best)
p1, s1, d1, sc1, X1, y1 = D["f1"]
pr1 = clf.predict_proba(X1)[:, 1]
print("f1 with f4 threshold", score(p1, s1, d1, pr1, best[1], best[2]))
print(
    "f1 oracle", max(score(p1, s1, d1, pr1, t, m)[0] for t in np.arange(0.2, 0.9, 0.05) for m in (None, 0.05, 0.1, 0.2))
)
print("baseline f1", score(p1, s1, d1, sc1, 0.75, 0.4))
