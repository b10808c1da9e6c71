"""Check what a run committed for one ``run_date``: the validation step of the nightly DAG
(``jobs/dedup_listings.py --verify-only``) and of the reliability tests.

Reads the four tables through the Delta log (no Spark) and checks, against the latest
``runs`` row of that date:

* the latest attempt succeeded, and ``rows_in == rows_kept + rows_rejected``;
* ``clusters`` and ``matches`` hold exactly ``rows_kept`` rows with unique ``posting_id``s,
  the same ids in both;
* ``rejects`` holds ``rows_rejected`` rows, with the per-reason counts the run recorded;
* every group's ``group_id`` is its smallest ``posting_id`` and ``group_size`` its row count;
* match lists are symmetric (b in matches(a) <=> a in matches(b)) and hold only kept ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from listing_dedup.errors import DedupError
from listing_dedup.sink.delta import read_table


class VerifyError(DedupError):
    """The committed tables of a date are inconsistent (exit code 1)."""


@dataclass
class Verified:
    run_date: str
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    n_groups: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(warehouse: str, run_date: str) -> Verified:
    """Collect every problem of ``run_date``'s committed tables (none: ``.ok``)."""
    out = Verified(run_date)
    runs = read_table(warehouse, "runs", run_date)
    if runs.empty:
        out.problems.append(f"no run recorded for {run_date}")
        return out
    last = runs.sort_values("finished_at").iloc[-1]
    if last["status"] != "succeeded":
        out.problems.append(f"the latest attempt for {run_date} has status {last['status']}: {last['error']}")
        return out
    out.rows_in, out.rows_kept, out.rows_rejected = (
        int(last["rows_in"]),
        int(last["rows_kept"]),
        int(last["rows_rejected"]),
    )
    p = out.problems
    if out.rows_in != out.rows_kept + out.rows_rejected:
        p.append(f"rows_in {out.rows_in} != kept {out.rows_kept} + rejected {out.rows_rejected}")

    clusters = read_table(warehouse, "clusters", run_date)
    matches = read_table(warehouse, "matches", run_date)
    rejects = read_table(warehouse, "rejects", run_date)
    for name, df in (("clusters", clusters), ("matches", matches)):
        if len(df) != out.rows_kept:
            p.append(f"{name} holds {len(df)} rows, the run kept {out.rows_kept}")
        dup = int(df["posting_id"].duplicated().sum())
        if dup:
            p.append(f"{name} holds {dup} duplicate posting_id rows")
    if set(clusters["posting_id"]) != set(matches["posting_id"]):
        p.append("clusters and matches hold different posting_ids")
    if len(rejects) != out.rows_rejected:
        p.append(f"rejects holds {len(rejects)} rows, the run rejected {out.rows_rejected}")
    recorded = json.loads(last["rejects_by_reason"] or "{}")
    found = {str(k): int(v) for k, v in rejects["reason"].value_counts().items()}
    if found != recorded:
        p.append(f"rejects by reason {found} != recorded {recorded}")

    if not clusters.empty:
        g = clusters.groupby("group_id")["posting_id"].agg(["min", "count"])
        out.n_groups = int((g["count"] > 1).sum())
        bad_id = g.index[g.index != g["min"]].tolist()
        if bad_id:
            p.append(f"{len(bad_id)} groups whose group_id is not their smallest posting_id, e.g. {bad_id[:3]}")
        sizes = clusters["group_id"].map(g["count"])
        if (sizes != clusters["group_size"]).any():
            p.append("group_size differs from the number of rows of the group")
    kept = set(matches["posting_id"])
    pairs = {(a, b) for a, ms in zip(matches["posting_id"], matches["match_ids"]) for b in ms}
    if any(b not in kept for _, b in pairs):
        p.append("match_ids hold posting_ids that are not kept listings")
    if any((b, a) not in pairs for a, b in pairs):
        p.append("match lists are not symmetric")
    return out


def verify_run(warehouse: str, run_date: str) -> Verified:
    """:func:`check_run`, raising :class:`VerifyError` listing the problems if any."""
    res = check_run(warehouse, run_date)
    if not res.ok:
        raise VerifyError(f"run {run_date} under {warehouse} failed verification: " + "; ".join(res.problems))
    return res
