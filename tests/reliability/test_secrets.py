"""Secrets never stored or printed (issue 29 row 8): conf values under credential keys (Spark's
own ``spark.redaction.regex`` and the object stores' key names) and credentials in URIs are
redacted in the ``runs`` row, the summary, the logs and the one-line error on stderr."""

from __future__ import annotations

import io
import json
import logging

import pandas as pd
import pytest
from _rel import LEXICAL, cli_args
from listing_dedup.cli import dedup as dedup_cli
from listing_dedup.errors import InputError
from listing_dedup.redact import (
    REDACTED,
    RedactingFilter,
    is_secret_key,
    redact_json,
    redact_mapping,
    redact_text,
)
from listing_dedup.runtime import run_cli
from listing_dedup.sink.delta import read_table

S3_SECRET = "s3a-SECRET-wJalrXUtnFEMI"
AZURE_KEY = "azure-KEY-Eby8vdM02xNOcqFl"
URI_SECRET = "uri-PASSWORD-9f8e7d"
ACCESS_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize(
    "key",
    [
        "spark.hadoop.fs.s3a.secret.key",
        "spark.hadoop.fs.s3a.access.key",
        "spark.hadoop.fs.s3a.session.token",
        "spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net",
        "spark.hadoop.fs.azure.sas.container.acct.blob.core.windows.net",
        "spark.hadoop.fs.gs.auth.service.account.private.key",
        "spark.jdbc.password",
        "google.cloud.auth.service.account.json.keyfile.credential",
    ],
)
def test_credential_keys_are_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["spark.sql.shuffle.partitions", "embed.text.max_seq_length", "cache.keep_runs", "input.image_root", "author"],
)
def test_ordinary_keys_are_not_secret(key):
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"s3a://{ACCESS_ID}:{S3_SECRET}@bucket/listings", f"s3a://{REDACTED}@bucket/listings"),
        (f"read https://user:{URI_SECRET}@host:8443/p failed", f"read https://{REDACTED}@host:8443/p failed"),
        ("s3://bucket/path@v2/x.parquet", "s3://bucket/path@v2/x.parquet"),  # an '@' in the path: no user
        (
            f"https://acct.blob.core.windows.net/c/x.jpg?sv=2022-11-02&sig={AZURE_KEY}&se=2030",
            f"https://acct.blob.core.windows.net/c/x.jpg?sv=2022-11-02&sig={REDACTED}&se=2030",
        ),
        (
            f"--set spark.conf.spark.hadoop.fs.s3a.secret.key={S3_SECRET} is not valid",
            f"--set spark.conf.spark.hadoop.fs.s3a.secret.key={REDACTED} is not valid",
        ),
        (
            f'{{"spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net": "{AZURE_KEY}", "a": "b"}}',
            f'{{"spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net": "{REDACTED}", "a": "b"}}',
        ),
        ("match.threshold=0.8, run 2026-04-01 12:00", "match.threshold=0.8, run 2026-04-01 12:00"),
    ],
)
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_redact_mapping_hides_secret_keys_at_any_depth_and_uri_credentials():
    conf = {
        "spark": {
            "master": "local[2]",
            "conf": {
                "spark.hadoop.fs.s3a.secret.key": S3_SECRET,
                "spark.hadoop.fs.s3a.access.key": ACCESS_ID,
                "spark.sql.shuffle.partitions": "2",
            },
        },
        "cache": {"path": f"s3a://{ACCESS_ID}:{URI_SECRET}@bucket/cache", "keep_runs": 7},
        "password": {"nested": "x"},
        "roots": [f"https://u:{URI_SECRET}@host/a", "/data/images"],
    }
    assert redact_mapping(conf) == {
        "spark": {
            "master": "local[2]",
            "conf": {
                "spark.hadoop.fs.s3a.secret.key": REDACTED,
                "spark.hadoop.fs.s3a.access.key": REDACTED,
                "spark.sql.shuffle.partitions": "2",
            },
        },
        "cache": {"path": f"s3a://{REDACTED}@bucket/cache", "keep_runs": 7},
        "password": REDACTED,
        "roots": [f"https://{REDACTED}@host/a", "/data/images"],
    }
    assert conf["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] == S3_SECRET  # a copy: the input is untouched
    assert json.loads(redact_json(json.dumps(conf)))["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] == REDACTED


def test_log_records_and_tracebacks_are_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("listing_dedup.test_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("conf %s", {"spark.hadoop.fs.s3a.secret.key": S3_SECRET})
        try:
            raise OSError(f"cannot open s3a://{ACCESS_ID}:{URI_SECRET}@bucket/x")
        except OSError:
            logger.exception("read failed for %s", f"https://u:{URI_SECRET}@h/p")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert "Traceback" in text and "OSError" in text and "bucket/x" in text
    for secret in (S3_SECRET, URI_SECRET, ACCESS_ID):
        assert secret not in text, text


def test_error_line_on_stderr_is_redacted(capsys):
    def fail() -> int:
        raise InputError(f"cannot read the input s3a://{ACCESS_ID}:{URI_SECRET}@bucket/listings: access denied")

    assert run_cli(fail) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: cannot read the input s3a://{REDACTED}@bucket/listings: access denied"


@pytest.mark.slow
def test_job_never_stores_or_prints_the_secrets(cli_spark, tmp_path, monkeypatch, capsys, caplog):
    """The job run with secrets in --set: the runs row's config JSON, the summary on stdout, the
    logs and stderr hold none of them; the other conf values are recorded as given."""
    path = tmp_path / "listings.parquet"
    pd.DataFrame(
        [("a1", "Rice cooker digital Miyako 1.8 liter"), ("a2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER")],
        columns=["posting_id", "title"],
    ).to_parquet(path, index=False)
    wh = str(tmp_path / "wh")
    monkeypatch.setattr(dedup_cli, "build_spark", lambda _conf: cli_spark)  # the test session, not a new one
    secrets = [
        f"spark.conf.spark.hadoop.fs.s3a.secret.key={S3_SECRET}",
        f"spark.conf.spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net={AZURE_KEY}",
        f"spark.conf.spark.listing_dedup.test.uri=s3a://{ACCESS_ID}:{URI_SECRET}@bucket/x",
    ]
    caplog.set_level(logging.INFO)
    rc = dedup_cli.main(cli_args(str(path), "2026-04-01", wh, *LEXICAL, *secrets))
    out = capsys.readouterr()
    assert rc == 0, out.err
    runs = read_table(wh, "runs")
    assert len(runs) == 1
    stored = runs.iloc[0].to_dict()
    recorded = json.loads(stored["config_json"])["spark"]["conf"]
    assert recorded["spark.hadoop.fs.s3a.secret.key"] == REDACTED
    assert recorded["spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net"] == REDACTED
    assert recorded["spark.listing_dedup.test.uri"] == f"s3a://{REDACTED}@bucket/x"
    assert recorded["spark.sql.shuffle.partitions"] == "2"  # the rest as given
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (S3_SECRET, AZURE_KEY, URI_SECRET, ACCESS_ID):
        assert secret not in json.dumps(stored, default=str)
        assert secret not in out.out and secret not in out.err and secret not in logs
    assert "rows kept      2" in out.out
