"""The re-ranker learns from the reviewers' decisions (lib/listing_dedup/training/decisions.py,
``jobs/train_reranker.py --decisions``): verdicts as row labels, a labelled file with the
decisions, and a refit of a model on the decisions alone whose health reference follows."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from listing_dedup.cli import decide as decide_cli
from listing_dedup.cli import train_reranker as rr_cli
from listing_dedup.config import load_config
from listing_dedup.graph.rerank import load_reranker
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.training.decisions import UNDECIDED, decision_labels, labels_with_decisions, row_labels
from listing_dedup.training.rerank_train import part_candidates

LEX = ["embed.text.enabled=false"]  # lexical + pHash only: no text model
FAST = ["rerank.train.rounds=40", "rerank.train.threads=1", "rerank.train.cv_folds=3", "rerank.train.graph_rounds=1"]


def test_the_latest_verdict_labels_both_directions_of_a_candidate_pair():
    d = pd.DataFrame(
        {
            "posting_id_a": ["a", "b", "c"],
            "posting_id_b": ["b", "a", "d"],
            "verdict": ["same", "different", "same"],
            "decided_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-01"], utc=True),
        }
    )
    lab = decision_labels(d)
    assert sorted(zip(lab["a"], lab["b"], lab["y"].tolist())) == [("a", "b", 0), ("c", "d", 1)]
    y = row_labels(np.array(["a", "b", "d", "a"]), np.array(["b", "a", "c", "c"]), lab)
    assert y.tolist() == [0, 0, 1, UNDECIDED]


def _groups(df):
    return sorted(sorted(g) for g in df.groupby("label_group")["posting_id"].apply(list))


def test_the_tuning_split_labelled_with_decisions_together_and_instead():
    d = pd.DataFrame(
        [("p4", "p1", "same"), ("p2", "p3", "different"), ("p5", "p6", "same"), ("p1", "zz", "same")],
        columns=["posting_id_a", "posting_id_b", "verdict"],
    )
    ids = ["p1", "p2", "p3", "p4", "p5", "p6"]
    labelled = pd.DataFrame({"posting_id": ids, "title": "t", "label_group": ["g1", "g1", "g1", "g2", "g3", "g4"]})
    out, counts = labels_with_decisions(labelled, d)
    assert _groups(out) == [["p1", "p2", "p4"], ["p3"], ["p5", "p6"]]
    assert counts == {"joined": 2, "taken_out": 1, "conflicts": 0, "listings": 6}
    alone, counts = labels_with_decisions(labelled.drop(columns="label_group").assign(extra=1), d)
    assert _groups(alone) == [["p1", "p4"], ["p2"], ["p3"], ["p5", "p6"]] and counts["listings"] == 6
    # x != y inside one group, then y = z where z is x's group-mate: a partition cannot honour both
    g = pd.DataFrame({"posting_id": ["x", "y", "z"], "title": "t", "label_group": "g"})
    d2 = pd.DataFrame(
        [("x", "y", "different"), ("y", "z", "same")], columns=["posting_id_a", "posting_id_b", "verdict"]
    )
    assert labels_with_decisions(g, d2)[1]["conflicts"] == 1


def test_tune_with_decisions_needs_some(tmp_path):
    from listing_dedup.cli import tune as tune_cli

    path = tmp_path / "c.parquet"
    pd.DataFrame({"posting_id": ["a", "b"], "title": ["x", "y"]}).to_parquet(path, index=False)
    argv = ["--conf", "conf/local.yaml", "--input", str(path), "--out", str(tmp_path / "t.yaml")]
    rc, _, err = _run(tune_cli.main, [*argv, "--decisions", str(tmp_path / "wh")])
    assert rc == 2 and "no decisions" in err and err.count("\n") == 1
    v = tmp_path / "v.csv"
    v.write_text("posting_id_a,posting_id_b,verdict\na,b,same\n")
    assert _run(decide_cli.main, ["--warehouse", str(tmp_path / "wh"), "--input", str(v)])[0] == 0
    rc, out, err = _run(tune_cli.main, [*argv, "--decisions", str(tmp_path / "wh")])
    assert rc == 2 and "only 2 labelled listings with the decisions" in err, err
    assert "decisions: joined 1, taken_out 0, conflicts 0, listings 2" in out


def _run(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_train_reranker_with_decisions_together_and_instead_of_a_labelled_file(tmp_path):
    """A labelled catalog and a reviewer who overrides 20 of its labels: --decisions with the file
    trains on the verdicts (the labels it changed are counted). Then on a new, unlabelled catalog
    a reviewer answers the 60 candidate pairs that model gets most wrong: --decisions without
    labels refits it, and the refitted model is nearer the verdicts on those pairs; its health
    reference is recomputed on that catalog."""
    sets = [x for s in LEX + FAST for x in ("--set", s)]
    lab = generate_catalog(80, seed=3, with_bad_rows=False)
    labelled = lab.listings.merge(lab.truth, on="posting_id").reset_index(drop=True)
    labelled_path = tmp_path / "labelled.parquet"
    labelled.to_parquet(labelled_path, index=False)
    wh = str(tmp_path / "wh")
    # the reviewer overrides the file: ten pairs of one label group are different
    first = labelled.groupby("label_group")["posting_id"].apply(list)
    pairs = [(g[0], g[1]) for g in first if len(g) >= 2][:10]
    v = tmp_path / "v1.csv"
    pd.DataFrame(pairs, columns=["posting_id_a", "posting_id_b"]).assign(verdict="different").to_csv(v, index=False)
    assert _run(decide_cli.main, ["--warehouse", wh, "--input", str(v)])[0] == 0
    base_dir = tmp_path / "base"
    rc, out, err = _run(
        rr_cli.main,
        ["--conf", "conf/local.yaml", "--input", str(labelled_path), "--out", str(base_dir), "--decisions", wh, *sets],
    )
    assert rc == 0, err[-3000:]
    assert "decisions: 10 decided pairs" in out and "labels of the file changed by a verdict" in out, out
    assert (base_dir / "reranker.txt").is_file() and (base_dir / "health_reference.json").is_file()

    # a new catalog, no labels: the reviewer answers the pairs the model gets most wrong
    new = generate_catalog(60, seed=11, with_bad_rows=False)
    truth = dict(zip(new.truth["posting_id"], new.truth["label_group"]))
    catalog_path = tmp_path / "catalog.parquet"
    new.listings.to_parquet(catalog_path, index=False)
    confs = ["conf/local.yaml", str(base_dir / "overlay.yaml")]
    cfg = load_config(confs, LEX + FAST)
    cat = new.listings.assign(label_group=new.listings["posting_id"])
    pc = part_candidates("new", cat, cfg, None)
    base = load_reranker(base_dir)
    p0 = base.predict(pc.frame)
    ids = pc.part.ids
    s, d = ids[pc.frame["src"].to_numpy()], ids[pc.frame["dst"].to_numpy()]
    y = np.array([truth[a] == truth[b] for a, b in zip(s, d)], dtype=float)
    wrong = np.argsort(-np.abs(p0 - y), kind="stable")
    chosen, seen = [], set()
    for i in wrong:
        key = (min(s[i], d[i]), max(s[i], d[i]))
        if key not in seen:
            seen.add(key)
            chosen.append((*key, "same" if y[i] else "different"))
        if len(chosen) == 60:
            break
    v2 = tmp_path / "v2.csv"
    pd.DataFrame(chosen, columns=["posting_id_a", "posting_id_b", "verdict"]).to_csv(v2, index=False)
    assert _run(decide_cli.main, ["--warehouse", wh, "--input", str(v2)])[0] == 0
    out_dir = tmp_path / "refit"
    argv = ["--input", str(catalog_path), "--out", str(out_dir), "--decisions", wh, *sets]
    rc, out, err = _run(rr_cli.main, ["--conf", confs[0], "--conf", confs[1], *argv])
    assert rc == 0, err[-3000:]
    assert "refitted on the decisions: 70 decided pairs, 60 among the candidates" in out, out
    refit = load_reranker(out_dir)
    meta = json.loads((out_dir / "reranker.json").read_text())
    assert meta["refit"]["used_pairs"] == 60 and meta["threshold"] == base.meta["threshold"]
    ref = json.loads((out_dir / "health_reference.json").read_text())
    assert "refit on" in ref["source"] and ref != json.loads((base_dir / "health_reference.json").read_text())
    decided = np.isin(
        [f"{a}|{b}" for a, b in zip(np.minimum(s, d), np.maximum(s, d))], [f"{a}|{b}" for a, b, _ in chosen]
    )
    err0 = np.abs(p0[decided] - y[decided]).mean()
    err1 = np.abs(refit.predict(pc.frame)[decided] - y[decided]).mean()
    assert err1 < err0, (err0, err1)
    # the decisions only: a labelled-free input with no decision among its candidates is refused
    rc, _, err = _run(
        rr_cli.main,
        [
            "--conf",
            confs[0],
            "--input",
            str(catalog_path),
            "--out",
            str(out_dir),
            "--decisions",
            str(tmp_path / "none"),
            *sets,
        ],
    )
    assert rc == 2 and "no decisions" in err and err.count("\n") == 1
