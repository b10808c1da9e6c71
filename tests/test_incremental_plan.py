"""Which plan a night runs (lib/listing_dedup/incremental.py): every reason by hand."""

from __future__ import annotations

import pandas as pd
import pytest
from listing_dedup.errors import InputError
from listing_dedup.incremental import (
    FULL,
    INCREMENTAL,
    choose_plan,
    drift_since_epoch,
    refuse_out_of_order,
    settings_fingerprint,
)
from listing_dedup.sink.state import StateRef

BASE = StateRef("2026-12-02", "2026-12-01", "e1", INCREMENTAL, "r2")


def plan(**kw):
    args = dict(
        full=False, base=BASE, previous_date="2026-12-02", epoch_fingerprint="f", fingerprint="f", drift=0.05,
        max_drift=0.2,
    )  # fmt: skip
    args.update(kw)
    return choose_plan(**args)


def test_reasons():
    p = plan()
    assert p.kind == INCREMENTAL and p.base == BASE and "continues 2026-12-02" in p.reason
    assert plan(full=True).reason == "--full"
    assert plan(base=None, previous_date=None).reason == "first night: no state to continue"
    assert "2026-12-02" in plan(base=None).reason and plan(base=None).kind == FULL
    assert "settings" in plan(fingerprint="g").reason
    p = plan(drift=0.25)
    assert p.kind == FULL and "drift: 0.250" in p.reason


def test_out_of_order_refused_unless_full():
    refuse_out_of_order("2026-12-03", "2026-12-03", full=False)  # a rerun of the newest night
    refuse_out_of_order("2026-12-04", "2026-12-03", full=False)
    refuse_out_of_order("2026-12-04", None, full=False)
    with pytest.raises(InputError, match="older than the match state's newest night 2026-12-05.*--full"):
        refuse_out_of_order("2026-12-03", "2026-12-05", full=False)
    refuse_out_of_order("2026-12-03", "2026-12-05", full=True)


def test_drift_counts_the_epochs_incremental_nights_once_each():
    t = pd.Timestamp("2026-12-07", tz="UTC")
    log = pd.DataFrame(
        [
            ("2026-12-01", "e1", FULL, 1000, 0, t),  # the epoch's full night: not drift
            ("2026-12-02", "e1", INCREMENTAL, 10, 20, t),
            ("2026-12-02", "e1", INCREMENTAL, 10, 20, t + pd.Timedelta(1, "h")),  # its rerun: once
            ("2026-12-03", "e1", INCREMENTAL, 5, 5, t),
            ("2026-12-04", "e0", INCREMENTAL, 99, 99, t),  # another epoch
            ("2026-12-05", "e1", INCREMENTAL, 7, 7, t),  # after tonight (a rerun of 12-04)
        ],
        columns=["run_date", "epoch", "plan", "added", "changed", "committed_at"],
    )
    assert drift_since_epoch(log, "e1", "2026-12-04", tonight=10, epoch_listings=1000) == pytest.approx(0.05)


def test_fingerprint_reads_the_shaping_settings_only():
    conf = {"embed": {"lexical": {"dim": 1024}}, "index": {"k": 50}, "match": {"threshold": 0.9}}
    a = settings_fingerprint(conf, 16, {"text": {"model": "m"}})
    assert a == settings_fingerprint({**conf, "match": {"threshold": 0.5}}, 16, {"text": {"model": "m"}})
    assert a != settings_fingerprint({**conf, "index": {"k": 40}}, 16, {"text": {"model": "m"}})
    assert a != settings_fingerprint(conf, 8, {"text": {"model": "m"}})
    assert a != settings_fingerprint(conf, 16, {"text": {"model": "other"}})
