"""The embed stage's ways to its vectors give one output (issue 16, same_output): a run with the
cache off, a first run with the cache (every vector computed), a rerun that reuses every vector,
and the same with a per-signal search (``union.lexical``), which keeps the lexical vectors as a
column instead of projecting them inside the fusion's pass. The lexical signal alone (no text
model to load): the match scores are compared bit for bit, the groups exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _rel import LEXICAL, config, job
from listing_dedup.sink.delta import read_table

pytestmark = pytest.mark.slow

DATE = "2026-05-01"
TITLES = [
    "Rice cooker digital Miyako 1.8 liter",
    "MIYAKO RICE COOKER DIGITAL 1.8 LITER",
    "Rice cooker Miyako digital 1.8L",
    "Mouse wireless Logitech M331 silent click",
    "Logitech M331 silent click wireless mouse",
    "Hijab segi empat voal motif bunga",
    "Hijab voal segi empat motif bunga mawar",
    "Sepatu sneakers pria kanvas hitam 42",
    "SEPATU SNEAKERS PRIA KANVAS HITAM 42",
    "Botol minum tupperware 500ml biru",
    "Susu UHT coklat 200ml",
    "Susu UHT cokelat 200 ml isi 24",
    "Kaos polos cotton combed 30s hitam",
    "Kaos polos cotton combed 30s putih",
    "Rice cooker digital Miyako 1.8 liter",  # the same title twice: one cache key
]


def _matches(warehouse: str) -> dict[str, list[tuple[str, float]]]:
    m = read_table(warehouse, "matches", DATE)
    return {
        p: sorted(zip(ids, (float(s) for s in sc))) for p, ids, sc in zip(m["posting_id"], m["match_ids"], m["scores"])
    }


def _groups(warehouse: str) -> dict[str, str]:
    c = read_table(warehouse, "clusters", DATE)
    return dict(zip(c["posting_id"], c["group_id"]))


def test_cold_first_cached_and_reused_runs_agree_bit_for_bit(spark, tmp_path):
    path = str(tmp_path / "catalog.parquet")
    pd.DataFrame({"posting_id": [f"p{i:02d}" for i in range(len(TITLES))], "title": TITLES}).to_parquet(path)
    runs = {
        "cold": ("cold", ["cache.enabled=false"]),
        "first": ("cached", []),
        "reused": ("cached", []),
        "union_first": ("union", ["union.lexical.enabled=true", "union.lexical.threshold=0.99"]),
        "union_reused": ("union", ["union.lexical.enabled=true", "union.lexical.threshold=0.99"]),
    }
    got, counts = {}, {}
    for name, (wh, sets) in runs.items():
        warehouse = str(tmp_path / wh)
        rc, err, summary = job(spark, config(*LEXICAL, *sets), path, DATE, warehouse)
        assert rc == 0, err
        got[name] = (_matches(warehouse), _groups(warehouse))
        counts[name] = summary.cache
    distinct = len(set(TITLES))
    assert counts["cold"] in (None, {})
    for first, again in (("first", "reused"), ("union_first", "union_reused")):
        assert counts[first] == {"lexical": {"reused": 0, "computed": distinct}}
        assert counts[again] == {"lexical": {"reused": distinct, "computed": 0}}
    cold_matches, cold_groups = got["cold"]
    assert any(len(v) for v in cold_matches.values())  # the catalog has matches to compare
    assert len(set(cold_groups.values())) < len(cold_groups)
    for name, (matches, groups) in got.items():
        assert groups == cold_groups, name
        assert matches.keys() == cold_matches.keys(), name
        for p, pairs in matches.items():
            assert [q for q, _ in pairs] == [q for q, _ in cold_matches[p]], (name, p)
            np.testing.assert_array_equal([s for _, s in pairs], [s for _, s in cold_matches[p]], err_msg=name)
