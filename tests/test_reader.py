import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from listing_dedup.config import InputConf
from listing_dedup.errors import InputError
from listing_dedup.ingest.reader import read_input, read_listings


def write_parquet(path, rows, schema=None):
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)
    return str(path)


ROWS = [
    {"posting_id": "p1", "title": "Paper  Bag Victoria Secret", "image_phash": "94974F937D4C2433", "shop": "A"},
    {"posting_id": None, "title": "no id", "image_phash": None, "shop": "B"},
    {"posting_id": "  ", "title": "blank id", "image_phash": None, "shop": "C"},
    {"posting_id": "p2", "title": "   ", "image_phash": None, "shop": "D"},  # nothing to match on
    {"posting_id": "p3", "title": "", "image_phash": "af3f9460c2838f0f", "shop": "E"},  # phash only: kept
    {"posting_id": "p4", "title": "bad hash", "image_phash": "xyz", "shop": "F"},
    {"posting_id": "p5", "title": "short hash", "image_phash": "abc123", "shop": "G"},
    {"posting_id": "p1", "title": "second p1", "image_phash": None, "shop": "H"},  # duplicate
    {"posting_id": "p6", "title": "Kaos \\xe2\\x9c\\x85 Murah", "image_phash": "", "shop": "I"},
    {"posting_id": "p7", "title": None, "image_phash": None, "shop": "J"},
    {"posting_id": "p4", "title": "valid p4 after an invalid p4", "image_phash": None, "shop": "K"},
]


def test_validation_rules_and_accounting(spark, tmp_path):
    path = write_parquet(tmp_path / "in.parquet", ROWS)
    ing = read_listings(spark, path, InputConf())
    kept = ing.kept.toPandas().set_index("posting_id")
    rej = ing.rejects.toPandas()
    assert ing.rows_in() == len(ROWS) == len(kept) + len(rej)

    assert sorted(kept.index) == ["p1", "p3", "p4", "p6"]
    assert kept.loc["p1", "title"] == "Paper Bag Victoria Secret"
    assert kept.loc["p1", "image_phash"] == "94974f937d4c2433"
    assert kept.loc["p6", "title"] == "Kaos \u2705 Murah"
    assert kept.loc["p6", "image_phash"] is None  # empty hash = no hash
    assert kept.loc["p4", "title"] == "valid p4 after an invalid p4"
    assert kept.loc["p3", "title"] == ""

    reasons = sorted(zip(rej["posting_id"].fillna("<null>"), rej["reason"]))
    assert reasons == [
        ("  ", "null_posting_id"),
        ("<null>", "null_posting_id"),
        ("p1", "duplicate_posting_id"),
        ("p2", "no_title_no_image"),
        ("p4", "malformed_image_phash"),
        ("p5", "malformed_image_phash"),
        ("p7", "no_title_no_image"),
    ]
    # raw keeps every input column, including ones the job does not use
    dup = rej[rej["reason"] == "duplicate_posting_id"].iloc[0]
    assert json.loads(dup["raw"]) == {"posting_id": "p1", "title": "second p1", "shop": "H"}


def test_missing_path_and_columns(spark, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_input(spark, str(tmp_path / "nope.parquet"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        read_input(spark, str(tmp_path / "empty_dir"))
    path = write_parquet(tmp_path / "x.parquet", [{"id": "a", "title": "t"}])
    with pytest.raises(InputError, match="missing required column 'posting_id'"):
        read_listings(spark, path, InputConf())


def test_wrong_column_type(spark, tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [{"posting_id": 1, "title": "t"}])
    with pytest.raises(InputError, match="'posting_id' has type bigint, expected string"):
        read_listings(spark, path, InputConf())


def test_not_parquet(spark, tmp_path):
    p = tmp_path / "listings.parquet"
    p.write_text("posting_id,title\na,b\n")
    with pytest.raises(InputError, match="cannot read input Parquet"):
        read_listings(spark, str(p), InputConf()).kept.count()


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_binary_image_counts_as_image(spark, tmp_path):
    schema = pa.schema([("posting_id", pa.string()), ("title", pa.string()), ("image", pa.binary())])
    rows = [
        {"posting_id": "a", "title": "", "image": _png()},  # image only: kept
        {"posting_id": "b", "title": "", "image": b""},
        {"posting_id": "c", "title": "", "image": b"\xff\xd8jpeg"},  # not a decodable image, no title
        {"posting_id": "d", "title": "has a title", "image": b"\xff\xd8jpeg"},  # kept, image flagged
    ]
    path = write_parquet(tmp_path / "b.parquet", rows, schema)
    ing = read_listings(spark, path, InputConf())
    kept = {r.posting_id: r.image_error for r in ing.kept.collect()}
    assert kept == {"a": None, "d": "unreadable_image"}
    assert sorted((r.posting_id, r.reason) for r in ing.rejects.collect()) == [
        ("b", "no_title_no_image"),
        ("c", "unreadable_image"),
    ]


def test_long_titles_are_cut(spark, tmp_path):
    path = write_parquet(tmp_path / "l.parquet", [{"posting_id": "a", "title": "y" * 100_000}])
    ing = read_listings(spark, path, InputConf(max_title_chars=500))
    assert len(ing.kept.first()["title"]) == 500
    assert ing.rejects.count() == 0


def test_empty_input(spark, tmp_path):
    schema = pa.schema([("posting_id", pa.string()), ("title", pa.string())])
    path = write_parquet(tmp_path / "e.parquet", [], schema)
    ing = read_listings(spark, path, InputConf())
    assert (ing.rows_in(), ing.kept.count(), ing.rejects.count()) == (0, 0, 0)


def test_folder_input(spark, tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    write_parquet(d / "part-0.parquet", [{"posting_id": "a", "title": "x"}])
    write_parquet(d / "part-1.parquet", [{"posting_id": "b", "title": "y"}])
    ing = read_listings(spark, str(d), InputConf())
    assert sorted(r.posting_id for r in ing.kept.collect()) == ["a", "b"]
    assert pd.isna(ing.kept.first()["image"])


# --- hostile input files (issue 29 rows 7 and 9): exit 2 and one line naming the file / column / row


def _cli(fn) -> tuple[int, list[str]]:
    """Run ``fn`` the way the jobs do (runtime.run_cli): the exit code and the stderr lines."""
    import contextlib
    import io

    from listing_dedup.runtime import run_cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = run_cli(fn)
    return rc, err.getvalue().strip().splitlines()


def _count_all(spark, path):
    def run():
        ing = read_listings(spark, path, InputConf())
        ing.rows_in()
        ing.kept.count()
        ing.rejects.count()

    return run


def test_blank_ids_of_any_unicode_whitespace_or_control_are_null(spark, tmp_path):
    ids = ["\t", "\n", "\u00a0", "\u3000 \u2003", "\u200b", "\ufeff", "\x00", " ok\u00a0"]
    path = write_parquet(tmp_path / "ids.parquet", [{"posting_id": i, "title": "Tas kulit"} for i in ids])
    ing = read_listings(spark, path, InputConf())
    rej = ing.rejects.toPandas()
    assert sorted(rej["posting_id"]) == sorted(ids[:-1])
    assert set(rej["reason"]) == {"null_posting_id"}
    assert ing.kept.toPandas()["posting_id"].tolist() == ["ok"]  # stripped like the blanks


def test_a_column_the_job_does_not_read_is_ignored_whatever_its_name(spark, tmp_path):
    rows = [
        {"posting_id": "a", "title": "Tas kulit", "price.usd": 1.5, "`odd`": "x"},
        {"posting_id": None, "title": "no id", "price.usd": 2.5, "`odd`": "y"},
    ]
    path = write_parquet(tmp_path / "extra.parquet", rows)
    ing = read_listings(spark, path, InputConf())
    assert ing.kept.toPandas()["posting_id"].tolist() == ["a"]
    (raw,) = ing.rejects.toPandas()["raw"]
    # the whole row, every column whatever its name (to_json leaves the null id out)
    assert json.loads(raw) == {"title": "no id", "price.usd": 2.5, "`odd`": "y"}


@pytest.mark.parametrize("int_file", ["a.parquet", "b.parquet"])
def test_mixed_column_types_across_files_exit_2_naming_the_file_and_column(spark, tmp_path, int_file):
    d = tmp_path / "mixed"
    d.mkdir()
    str_file = "b.parquet" if int_file == "a.parquet" else "a.parquet"
    write_parquet(d / str_file, [{"posting_id": "a", "title": "Tas"}])
    pq.write_table(pa.table({"posting_id": pa.array([7], pa.int64()), "title": ["Sepatu"]}), d / int_file)
    rc, lines = _cli(_count_all(spark, str(d)))
    assert rc == 2 and len(lines) == 1, lines
    # Spark takes the schema from one of the files (listing order): either way the line names the
    # file whose posting_id is an integer, and the column
    assert lines[0] in {
        f"error: input file {d}/{int_file}: column 'posting_id' is INT64, not string as in the other input "
        "files (every input file must give its columns the same types)",
        f"error: input column 'posting_id' has type bigint, expected string (in {d}/{int_file})",
    }, lines


def test_one_corrupt_file_in_a_folder_exits_2_naming_it(spark, tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    write_parquet(d / "a.parquet", [{"posting_id": "a", "title": "Tas"}])
    (d / "b.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    rc, lines = _cli(_count_all(spark, str(d)))
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: input file {d}/b.parquet cannot be read as Parquet"), lines


def test_invalid_utf8_in_a_title_exits_2_naming_file_row_and_column(spark, tmp_path):
    titles = pa.array([b"Tas kulit", b"Sepatu \xff rusak"], pa.binary()).view(pa.string())
    path = tmp_path / "utf8.parquet"
    pq.write_table(pa.table({"posting_id": ["a", "b"], "title": titles}), path)
    rc, lines = _cli(_count_all(spark, str(path)))
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0] == f"error: input file {path}, row 2 (posting_id 'b'): column 'title' is not valid UTF-8"


def test_a_latin1_byte_in_a_conf_file_is_one_line(tmp_path):
    from listing_dedup.config import load_config
    from listing_dedup.errors import ConfigError

    conf = tmp_path / "bad.yaml"
    conf.write_bytes(b"input:\n  image_root: /data/caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        load_config([str(conf)], [])
    assert str(e.value) == (
        f"config file {conf} is not UTF-8 text: byte 0xe9 at offset 30 (line 2, column 24); save it as UTF-8"
    )
