"""The health reference of the conf defaults' threshold rule (conf/local.yaml), computed on
Shopee folds 2-4 by ``python bench/health_reference.py --write`` (docs/quality.md). Do not edit
by hand: rerun the script when the defaults change (the job uses this reference only when a
run's threshold-rule settings equal its ``settings``)."""

from __future__ import annotations

import json

from listing_dedup.quality.health import HealthReference

REFERENCE_JSON = r"""
{
  "matches_per_listing": 3.96330900243309,
  "score": "fused",
  "settings": {
    "match": {
      "min2": false,
      "min2_threshold": 0.4,
      "mutual_floor": 0.6,
      "mutual_rank": 2,
      "relative": true,
      "relative_floor": 0.3,
      "relative_margin": 0.05,
      "relative_rank": 2,
      "threshold": 0.9
    },
    "phash": {
      "enabled": true,
      "max_bits": 8
    },
    "pipeline": {
      "fusion": {
        "lexical": 0.8,
        "text": 0.2
      },
      "inb_thresholds": [
        0.6
      ],
      "k": 50,
      "lexical": {
        "analyzer": "char_wb",
        "dim": 1024,
        "n_features": 1048576,
        "ngram_max": 4,
        "ngram_min": 2,
        "seed": 0,
        "sublinear_tf": true
      },
      "signals": [
        "lexical",
        "text"
      ],
      "text_model": "minilm"
    }
  },
  "share_matched": 0.9278832116788321,
  "signals": {
    "lexical": 1.0,
    "phash": 1.0,
    "text": 1.0
  },
  "source": "conf defaults on Shopee folds 2+3+4 (20550 listings)",
  "top1_quantiles": [
    0.4338996559381485,
    0.5002912044525146,
    0.5533792465925217,
    0.6056728839874268,
    0.9267282783985138,
    0.9559158623218537,
    0.9722995460033417,
    0.9804761409759521,
    0.9870707988739014,
    0.9919737279415131,
    0.9950006604194641,
    0.9970295429229736,
    0.9984009832143783,
    0.9992183387279511,
    0.9996707886457443,
    0.999878466129303,
    0.999973613023758,
    0.9999998211860657,
    1.0
  ]
}
"""


def reference() -> HealthReference:
    return HealthReference.from_dict(json.loads(REFERENCE_JSON))
