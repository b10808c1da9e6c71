"""Image paths from the data are not trusted (issue 29 rows 2-4): they are read only below the
image roots of the conf, URI options in the data never reach pyarrow (no request to a host the
data names), files over the byte limit are refused before they are read, and a storage failure
fails the run instead of turning into bad rows."""

from __future__ import annotations

import os
import socket
from unittest import mock

import pandas as pd
import pytest
from _rel import Listener, jpeg
from listing_dedup.config import InputConf
from listing_dedup.errors import ConfigError, StorageError
from listing_dedup.ingest import images
from listing_dedup.ingest.images import ImageRoots, Location, image_roots_for, load_image, read_image_bytes
from listing_dedup.ingest.phash import inspect_images
from listing_dedup.ingest.reader import validate
from listing_dedup.runtime import run_cli
from listing_dedup.sink.cache import image_digests


@pytest.fixture
def tree(tmp_path):
    """root/imgs/a.jpg, root/link.jpg -> outside/secret.jpg, outside/secret.jpg (a good JPEG too)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "imgs").mkdir(parents=True)
    outside.mkdir()
    (root / "imgs" / "a.jpg").write_bytes(jpeg(1))
    (outside / "secret.jpg").write_bytes(jpeg(2))
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    return root, outside


@pytest.fixture
def opened():
    """The paths the one byte-reading function opens."""
    seen: list[str] = []
    real = images._read_bytes

    def spy(loc, max_bytes):
        seen.append(loc.path)
        return real(loc, max_bytes)

    with mock.patch.object(images, "_read_bytes", spy):
        yield seen


def test_paths_resolve_only_below_the_roots(tree, opened):
    root, outside = tree
    roots = ImageRoots.build(str(root))
    inside = str(root / "imgs" / "a.jpg")
    for value in ("imgs/a.jpg", "imgs/../imgs/./a.jpg", inside, f"file://{inside}", f"  {inside}  "):
        assert load_image(value, roots).ok, value
    for value in (
        "../outside/secret.jpg",
        "imgs/../../outside/secret.jpg",
        str(outside / "secret.jpg"),
        f"{root}/../outside/secret.jpg",
        f"file://{outside}/secret.jpg",
        "file://otherhost/etc/passwd",
        "link.jpg",  # a symbolic link under the root that points outside it
        "/etc/passwd",
        "../../../../../../etc/passwd",
    ):
        assert load_image(value, roots).error == "image_outside_roots", value
    assert opened == [os.path.realpath(inside)] * 5  # nothing outside was opened (nor stat'ed)
    # /etc/passwd and a missing file outside the roots say the same: the rejects tell nothing
    assert load_image("/etc/passwd", roots).error == load_image("/etc/nope.jpg", roots).error


def test_extra_roots_from_the_conf(tree):
    root, outside = tree
    cfg = InputConf(image_root=str(root), image_roots=[str(outside)])
    roots = image_roots_for("/data/in.parquet", cfg)
    assert roots.roots == (str(root), str(outside)) and roots.max_bytes == cfg.max_image_bytes
    assert load_image(str(outside / "secret.jpg"), roots).ok
    assert load_image("link.jpg", roots).ok  # the link's target lies below a root now
    assert load_image("imgs/a.jpg", roots).ok  # relative paths: below the first root
    with pytest.raises(Exception, match="input.image_roots"):
        InputConf(image_roots=["relative/dir"])


def test_uris_resolve_only_below_a_uri_root_and_never_with_options():
    roots = ImageRoots.build("/data/cat", ["s3://bkt/imgs?region=eu-west-1", "hdfs://nn:8020/imgs"])
    s3, hdfs = roots.roots[1], roots.roots[2]
    # the filesystem is built from the root (its options are the conf's); the data names a path in it
    assert roots.locate("s3://bkt/imgs/a/b.jpg") == Location(s3, "bkt/imgs/a/b.jpg")
    assert roots.locate("hdfs://nn:8020/imgs/x.jpg") == Location(hdfs, "/imgs/x.jpg")
    for value in (
        "s3://bkt/imgs/a.jpg?endpoint_override=127.0.0.1:9&scheme=http",  # options from the data
        "s3://bkt/imgs/a.jpg#frag",
        "s3://bkt/imgs/../private/key.jpg",
        "s3://bkt/imgsX/a.jpg",
        "s3://other/imgs/a.jpg",
        "S3://bkt:1/imgs/a.jpg",
        "hdfs://evil:8020/imgs/x.jpg",
        "http://127.0.0.1:9/x.jpg",
        "gs://bkt/imgs/a.jpg",
        "s3://[::1/x.jpg",
    ):
        assert roots.locate(value) == "image_outside_roots", value
    # with the data's own bucket as root, a relative path stays inside it
    remote = ImageRoots.build("s3://bkt/cat")
    assert remote.locate("imgs/a.jpg") == Location("s3://bkt/cat", "bkt/cat/imgs/a.jpg")
    assert remote.locate("../other/a.jpg") == "image_outside_roots"


def _hostile_values(port: int) -> list[str]:
    return [
        f"s3://internal-bucket/secret.jpg?endpoint_override=127.0.0.1:{port}&scheme=http",
        f"s3://internal-bucket/secret.jpg?endpoint_override=127.0.0.1%3A{port}&scheme=http",
        f"http://127.0.0.1:{port}/x.jpg",
        f"https://127.0.0.1:{port}/x.jpg",
        f"hdfs://127.0.0.1:{port}/x.jpg",
        f"gs://bucket/x.jpg?endpoint_override=127.0.0.1:{port}&scheme=http",
        f"file://127.0.0.1:{port}/etc/passwd",
    ]


def test_ssrf_a_loopback_listener_receives_no_request(spark, tree, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    root, _ = tree
    listener = Listener()
    try:
        values = _hostile_values(listener.port)
        roots = ImageRoots.build(str(root))
        # the pure readers: ingest's check, the embed path's loader, the cache's image digest
        assert {load_image(v, roots).error for v in values} == {"image_outside_roots"}
        assert image_digests(pd.Series(values), roots).isna().all()
        assert set(inspect_images(pd.Series(values), pd.Series([None] * len(values)), roots)["error"]) == {
            "image_outside_roots"
        }
        # and once through ingest on Spark (the check runs in a pandas UDF on the executors)
        rows = [(f"t{i}", "Tas kulit", v) for i, v in enumerate(values)]
        rows += [(f"u{i}", "", v) for i, v in enumerate(values)]
        ing = validate(spark.createDataFrame(rows, "posting_id string, title string, image string"), InputConf(), roots)
        kept = ing.kept.toPandas()
        rejects = ing.rejects.toPandas()
    finally:
        hits = listener.close()
    assert hits == 0
    # a titled row keeps its other signals; one with nothing else is rejected with the reason
    assert sorted(kept["posting_id"]) == sorted(f"t{i}" for i in range(len(values)))
    assert set(kept["image_error"]) == {"image_outside_roots"}
    assert sorted(rejects["posting_id"]) == sorted(f"u{i}" for i in range(len(values)))
    assert set(rejects["reason"]) == {"image_outside_roots"}


def test_the_byte_limit_is_checked_before_reading(tree, opened):
    root, _ = tree
    big = root / "imgs" / "huge.jpg"
    with open(big, "wb") as f:  # a 3 GB sparse file: reading it whole would take 3 GB of memory
        f.truncate(3 * 1024**3)
    roots = ImageRoots.build(str(root))
    assert roots.max_bytes == InputConf().max_image_bytes == 32 * 1024 * 1024
    assert load_image("imgs/huge.jpg", roots).error == "image_too_large"
    small = ImageRoots.build(str(root), max_bytes=100)
    assert load_image("imgs/a.jpg", small).error == "image_too_large"
    assert load_image(jpeg(1), small).error == "image_too_large"  # bytes values too
    assert load_image("imgs/a.jpg", ImageRoots.build(str(root), max_bytes=len(jpeg(1)))).ok
    assert read_image_bytes("imgs/huge.jpg", roots) == (None, "image_too_large")


def test_a_permission_denied_under_a_root_fails_the_run(tree):
    root, _ = tree

    def denied(loc, max_bytes):  # the deployment cannot read its own image folder
        raise PermissionError(13, "Permission denied", loc.path)

    with mock.patch.object(images, "_read_bytes", denied), pytest.raises(StorageError) as e:
        load_image("imgs/a.jpg", str(root))
    assert str(e.value) == (
        f"cannot read image file {root}/imgs/a.jpg: storage error (not the input's fault): "
        "PermissionError: Permission denied"
    )
    assert e.value.exit_code == 1


def test_an_image_root_that_is_not_there_fails_the_run(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        load_image("a.jpg", str(tmp_path / "unmounted"))
    # a missing file under a root that is there is the row's fault
    assert load_image("a.jpg", str(tmp_path)).error == "missing_image_file"


def test_an_object_store_that_refuses_connections_fails_the_run(monkeypatch):
    for k, v in {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }.items():
        monkeypatch.setenv(k, v)  # no credential look-up: the store's refusal is all that happens
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = f"s3://bkt/imgs?endpoint_override=127.0.0.1:{port}&scheme=http"
    with pytest.raises(StorageError) as e:
        load_image("a.jpg", ImageRoots.build(root))
    assert str(e.value).startswith(f"cannot read image file {root} (bkt/imgs/a.jpg): storage error"), str(e.value)
    assert "\n" not in str(e.value)
    # a root pyarrow cannot open is the conf's fault (exit 2), never a row's
    with pytest.raises(ConfigError, match="image root s3://bkt/imgs\\?nonsense=1: pyarrow cannot open it"):
        load_image("a.jpg", ImageRoots.build("s3://bkt/imgs?nonsense=1"))


def test_a_storage_error_inside_the_spark_job_exits_1_with_one_line(spark, tmp_path):
    import contextlib
    import io

    df = spark.createDataFrame([("a", "", "x.jpg")], "posting_id string, title string, image string")
    ing = validate(df, InputConf(), str(tmp_path / "unmounted"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = run_cli(lambda: ing.kept.count())
    assert rc == 1
    assert err.getvalue().strip().splitlines()[-1] == (
        f"error: image root {tmp_path}/unmounted does not exist (an unmounted volume or a wrong bucket?): "
        "storage error (not the input's fault)"
    )
