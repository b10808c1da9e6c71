"""Text-only quality of pretrained vs fine-tuned encoders on a test split (exact kNN, the job's rules).

    python bench/bench_training.py --train data/shopee_train_labelled/listings.parquet \
        --test data/shopee_fold1_labelled/listings.parquet \
        --encoder minilm=data/emb/shopee_train_minilm.npy,data/emb/shopee_fold1_minilm.npy \
        --encoder e5-small=data/emb/shopee_train_e5small.npy,data/emb/shopee_fold1_e5small.npy \
        --model MODEL_DIR [--model MODEL_DIR2] [--json-out FILE]

For each pretrained ``--encoder NAME=TRAIN_NPY,TEST_NPY`` (rows in input order; checked
against the encoder on the first rows): INB (none or one round), threshold and min2 are
tuned on *all* training rows (lib/listing_dedup/training/validate.py: tune), then applied
to the test rows. The reference setting of conf/local.yaml is scored too.

For each ``--model`` (a directory from jobs/train_embedder.py): its head is applied to its
base encoder's test embeddings (checked against the embed stage's encoder on the first rows)
and scored with the thresholds the training run tuned on its held-out split (never the test
split). The pretrained base is also scored tuned on that same held-out split, for a
like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from listing_dedup.config import TrainValidateConf, load_config
from listing_dedup.embed.encoder import TextEncoderBuilder, get_encoder, resolve_model
from listing_dedup.embed.model_dir import read_model_json
from listing_dedup.ingest.titles import clean_title
from listing_dedup.quality.tuning import exact_neighbours
from listing_dedup.training.validate import grid_scores, inb_round, tune

K = 50


def score_setting(emb, ids, labels, threshold, min2_threshold, inb_threshold) -> dict:
    nbrs = exact_neighbours(emb, ids, K)
    if inb_threshold is not None:
        emb = inb_round(emb, ids, nbrs, inb_threshold)
        nbrs = exact_neighbours(emb, ids, K)
    r = grid_scores(nbrs, ids, labels, [threshold], [min2_threshold]).iloc[0].to_dict()
    return {k: r[k] for k in ("f1", "precision", "recall")}


def check_rows(name: str, encoder, titles: list[str], emb: np.ndarray) -> None:
    n = min(8, len(titles))
    cos = np.sum(encoder.encode([clean_title(t) for t in titles[:n]]) * emb[:n], axis=1)
    if cos.min() < 0.99:
        sys.exit(f"error: {name}: cached embeddings do not match the encoder (cosines {np.round(cos, 3)})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--encoder", action="append", default=[], help="NAME=TRAIN_NPY,TEST_NPY")
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--json-out")
    args = p.parse_args()

    train, test = pd.read_parquet(args.train), pd.read_parquet(args.test)
    tr_ids, tr_lab = train["posting_id"].to_numpy(object), train["label_group"].astype(str).to_numpy(object)
    te_ids, te_lab = test["posting_id"].to_numpy(object), test["label_group"].astype(str).to_numpy(object)
    vcfg = TrainValidateConf()
    ref = load_config(["conf/local.yaml"])
    results, embs = [], {}
    for spec in args.encoder:
        name, _, files = spec.partition("=")
        tr_npy, te_npy = files.split(",")
        tr, te = np.load(tr_npy), np.load(te_npy)
        assert len(tr) == len(train) and len(te) == len(test), (name, tr.shape, te.shape)
        enc = get_encoder(TextEncoderBuilder(path=resolve_model(name)[1], kind=resolve_model(name)[0]))
        check_rows(name, enc, test["title"].tolist(), te)
        embs[name] = (tr, te)
        t0 = time.perf_counter()
        best = tune(tr, tr_ids, tr_lab, vcfg)["best"]
        s = score_setting(te, te_ids, te_lab, best["threshold"], best["min2_threshold"], best["inb_threshold"])
        results.append(
            {
                "model": name,
                "tuned_on": "all training rows",
                "train_f1": best["f1"],
                **_setting(best),
                **{f"test_{k}": v for k, v in s.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        inb = ref.inb.thresholds[0] if ref.inb.thresholds else None
        s = score_setting(te, te_ids, te_lab, ref.match.threshold, ref.match.min2_threshold, inb)
        results.append(
            {
                "model": name,
                "tuned_on": "conf/local.yaml setting",
                "threshold": ref.match.threshold,
                "min2_threshold": ref.match.min2_threshold,
                "inb_threshold": inb,
                **{f"test_{k}": v for k, v in s.items()},
            }
        )
        print(results[-2], results[-1], sep="\n", flush=True)
    for mdir in args.model:
        meta = read_model_json(mdir)
        metrics = json.loads((Path(mdir) / "metrics.json").read_text())
        full = meta.get("mode") == "full"  # the encoder itself was fine-tuned: encode the test titles
        base = meta["training"]["encoder"]["model"] if full else meta["base_model"]
        if base not in embs:
            sys.exit(f"error: --model {mdir}: give --encoder {base}=... for its base encoder")
        enc = get_encoder(TextEncoderBuilder.from_conf(load_config([], [f"embed.text.model={mdir}"]).embed.text))
        tr, te = embs[base]
        if full:
            t0 = time.perf_counter()
            te_emb = enc.encode([clean_title(t) for t in test["title"].tolist()])
            print(f"encoded {len(te_emb)} test titles with {mdir} in {time.perf_counter() - t0:.0f}s", flush=True)
        else:
            te_emb = enc.project(te)
        check_rows(mdir, enc, test["title"].tolist(), te_emb)
        tuned = metrics["tuned"]
        s = score_setting(te_emb, te_ids, te_lab, tuned["threshold"], tuned["min2_threshold"], tuned["inb_threshold"])
        results.append(
            {
                "model": f"fine-tuned {Path(mdir).name} (base {base})",
                "tuned_on": metrics["split"],
                "train_f1": tuned["f1"],
                **_setting(tuned),
                **{f"test_{k}": v for k, v in s.items()},
                "train_seconds": metrics["seconds"],
                "epochs": metrics["epochs"],
            }
        )
        print({k: v for k, v in results[-1].items() if k != "epochs"}, flush=True)
        # the pretrained base tuned on the same held-out rows (like for like)
        held = train["fold"].to_numpy() == max(train["fold"]) if "fold" in train else None
        if held is not None and "fold" in metrics["split"]:
            best = tune(tr[held], tr_ids[held], tr_lab[held], vcfg)["best"]
            s = score_setting(te, te_ids, te_lab, best["threshold"], best["min2_threshold"], best["inb_threshold"])
            results.append(
                {
                    "model": f"pretrained {base}",
                    "tuned_on": metrics["split"],
                    "train_f1": best["f1"],
                    **_setting(best),
                    **{f"test_{k}": v for k, v in s.items()},
                }
            )
            print(results[-1], flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def _setting(best: dict) -> dict:
    return {k: best[k] for k in ("threshold", "min2_threshold", "inb_threshold")}


if __name__ == "__main__":
    sys.exit(main())
