"""Which plan a night runs, full or incremental, and why (docs/incremental.md, "Epochs").

A night is incremental when it continues the state of the night before it on the same epoch:
the idf and the quantizer a full night fitted, under the same settings. It runs full (and
starts an epoch) when it is the first night, when ``--full`` is given (``incremental.full``),
when the previous night kept no state, when the settings that shape the vectors and the lists
changed, or when drift passed ``incremental.max_drift`` (the share of the epoch's catalog added
or changed since the epoch began). A date older than the newest state is refused in incremental
mode (:class:`~listing_dedup.errors.InputError`, exit 2): the nights after it continued another
state; ``--full`` runs it as a full night."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from listing_dedup.errors import InputError
from listing_dedup.sink.state import StateRef

FULL, INCREMENTAL = "full", "incremental"
# the conf sections whose settings shape the vectors and the lists a state holds
SHAPING_SECTIONS = ("embed", "fusion", "index", "inb", "phash")  # phash: the state keeps its pairs


@dataclass(frozen=True)
class Plan:
    kind: str  # FULL | INCREMENTAL
    reason: str
    base: StateRef | None = None  # the state an incremental night continues

    @property
    def incremental(self) -> bool:
        return self.kind == INCREMENTAL


def settings_fingerprint(conf: dict[str, Any], slack: int, encoders: dict[str, Any]) -> str:
    """A digest of what shapes the state: the conf's :data:`SHAPING_SECTIONS` (``conf``: the
    job conf as a dict), the slack, and the encoders' fingerprints (model files, runtime)."""
    shaping = {s: conf.get(s) for s in SHAPING_SECTIONS}
    text = json.dumps({"conf": shaping, "slack": slack, "encoders": encoders}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def refuse_out_of_order(run_date: str, newest: str | None, full: bool) -> None:
    """Before any work: an incremental run of a date older than the newest state is refused."""
    if newest is not None and run_date < newest and not full:
        raise InputError(
            f"run_date {run_date} is older than the match state's newest night {newest}: the nights after it "
            "continued another state; run it with --full (a full night), or run the nights in date order"
        )


def drift_since_epoch(log: pd.DataFrame, epoch: str, run_date: str, tonight: int, epoch_listings: int) -> float:
    """The share of the epoch's catalog added or changed since the epoch began: the incremental
    nights of ``epoch`` before ``run_date`` (a date's last state row) plus ``tonight``'s."""
    rows = log[(log["epoch"] == epoch) & (log["run_date"] < run_date) & (log["plan"] == INCREMENTAL)]
    rows = rows.sort_values("committed_at", kind="stable").drop_duplicates("run_date", keep="last")
    moved = int((rows["added"].fillna(0) + rows["changed"].fillna(0)).sum()) + int(tonight)
    return moved / max(int(epoch_listings), 1)


def choose_plan(
    *,
    full: bool,
    base: StateRef | None,
    previous_date: str | None,
    epoch_fingerprint: str | None,
    fingerprint: str,
    drift: float | None,
    max_drift: float,
) -> Plan:
    """The plan of a night with the incremental state on (the reasons are the summary's)."""
    if full:
        return Plan(FULL, "--full")
    if base is None:
        if previous_date is None:
            return Plan(FULL, "first night: no state to continue")
        return Plan(FULL, f"the previous night ({previous_date}) kept no match state")
    if epoch_fingerprint != fingerprint:
        return Plan(FULL, f"the settings that shape vectors and lists changed since epoch {base.epoch}")
    if drift is not None and drift > max_drift:
        return Plan(
            FULL, f"drift: {drift:.3f} of epoch {base.epoch}'s catalog added or changed (> max_drift {max_drift})"
        )
    return Plan(INCREMENTAL, f"continues {base.run_date} (epoch {base.epoch})", base)


def listing_digests_spark(kept: Any, *, has_image: bool, image_root: str = "") -> Any:
    """``posting_id, digest, phash`` of tonight's kept listings: what the signals read (the cleaned
    title, the image's bytes, the pHash: :func:`listing_dedup.search.incremental.listing_digest_column`)."""
    from pyspark.sql import functions as F

    from listing_dedup.search.incremental import listing_digest_column
    from listing_dedup.sink.cache import image_digest_column

    image = image_digest_column(F.col("image"), image_root) if has_image else F.lit(None).cast("string")
    return kept.select(
        "posting_id",
        listing_digest_column(F.col("title"), image, F.col("image_phash")).alias("digest"),
        F.col("image_phash").alias("phash"),  # kept in the state: a changed listing's old hash leaves its blocks
    )
