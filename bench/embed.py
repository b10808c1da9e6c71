"""The embed stage inside Spark against the same encoders in one plain process, same titles, same cores.

    python bench/embed.py [--rows 4000] [--input listings.parquet|listings.csv] [--cores 2]
        [--partitions 2] [--modes text,lexical,both] [--batch-size 64]

Titles: Shopee's (``../shared/data/shopee/listings_dev.csv``, fold 0 first, then the others)
unless ``--input`` names a Parquet/CSV file with a ``title`` column; the first ``--rows``.

For each mode (``text``: the packaged MiniLM, ``lexical``: hashed TF-IDF + projection,
``both``) the job's own embed functions (``embed_texts``, ``fit_idf`` + ``embed_lexical``) run
on ``local[<cores>]`` with one torch thread a task (as the job sets it), twice in one session:
``cold`` (the Python workers start and load the model) and ``warm`` (the workers and their
cached model are reused: a long job's steady state). Beside it, in the same run, ``bare``: the
same encoder objects called in this process with ``torch.set_num_threads(<cores>)`` on the same
titles (the model loaded once; lexical: idf fit + vectors, numpy). rows/s = titles / seconds.

Final line (text alone, warm, the issue's figure):
``embed rows_per_s=<r> bare_rows_per_s=<b> efficiency=<r/b>``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
SHOPEE = REPO.parent / "shared" / "data" / "shopee" / "listings_dev.csv"


def titles(path: str | None, rows: int) -> pd.DataFrame:
    if path:
        src = Path(path)
        df = pd.read_parquet(src) if src.suffix != ".csv" else pd.read_csv(src)
    else:
        if not SHOPEE.is_file():
            raise SystemExit(f"error: no --input and no Shopee data at {SHOPEE}")
        df = pd.read_csv(SHOPEE)
        df = df.sort_values("fold", kind="stable") if "fold" in df else df
    df = df[df["title"].notna()].head(rows)
    out = pd.DataFrame({"posting_id": [f"t{i:07d}" for i in range(len(df))], "title": df["title"].astype(str)})
    return out.reset_index(drop=True)


def spark_embed(spark, sdf, mode: str, builder, params) -> float:
    """Seconds to embed ``sdf`` with the job's own functions (materialised with a noop write)."""
    from listing_dedup.embed.encoder import embed_texts
    from listing_dedup.embed.lexical import embed_lexical, fit_idf

    t0 = time.perf_counter()
    out = sdf
    if mode in ("text", "both"):
        out = embed_texts(out, "title", "v_text", builder)
    if mode in ("lexical", "both"):
        idf = fit_idf(sdf, "title", params)
        out = embed_lexical(out, "title", "v_lexical", params, spark.sparkContext.broadcast(idf))
    out.drop("title").write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t0


def bare_embed(df: pd.DataFrame, mode: str, builder, params, cores: int) -> float:
    """Seconds for the same encoders in this process on ``cores`` threads (text model loaded once,
    not timed: the Spark side's warm figure does not load it either). The text encoder first
    runs once over the titles untimed, as the Spark side's warm figure follows its cold run:
    the first call of each batch shape pays one-off kernel set-up (batches hold titles of one
    token length, so there are tens of shapes), which made a cold bare pass 3-7x slower here."""
    import torch
    from listing_dedup.embed.lexical import document_frequencies, hashed_counts, idf_vector, lexical_vectors

    enc = None
    if mode in ("text", "both"):
        enc = builder()
        torch.set_num_threads(cores)  # the builder set 1 (a Spark task's share)
    texts = df["title"].tolist()
    if enc is not None:  # warm-up pass, untimed (see above)
        for i in range(0, len(texts), builder.batch_size):
            enc.encode(texts[i : i + builder.batch_size])
    t0 = time.perf_counter()
    if enc is not None:
        for i in range(0, len(texts), builder.batch_size):
            enc.encode(texts[i : i + builder.batch_size])
    if mode in ("lexical", "both"):
        feats, dfs = document_frequencies(hashed_counts(df["title"], params))
        idf = idf_vector(feats, dfs, len(df), params.n_features)
        for i in range(0, len(texts), 10_000):
            lexical_vectors(df["title"].iloc[i : i + 10_000], idf, params)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--input", default=None)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--partitions", type=int, default=0, help="Spark partitions (default: --cores)")
    p.add_argument("--modes", default="text,lexical,both")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    from listing_dedup.config import load_config
    from listing_dedup.embed.encoder import TextEncoderBuilder
    from pyspark.sql import SparkSession

    cfg = load_config([str(REPO / "conf" / "local.yaml")], [f"embed.text.batch_size={args.batch_size}"])
    builder = TextEncoderBuilder.from_conf(cfg.embed.text)
    params = cfg.embed.lexical.params()
    df = titles(args.input, args.rows)
    n = len(df)
    parts = args.partitions or args.cores
    print(f"titles: {n} (mean {df['title'].str.len().mean():.0f} chars); local[{args.cores}], {parts} partitions")

    spark = (
        SparkSession.builder.master(f"local[{args.cores}]")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", str(parts))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    sdf = spark.createDataFrame(df).repartition(parts).cache()
    sdf.count()

    results = {}
    for mode in args.modes.split(","):
        cold = spark_embed(spark, sdf, mode, builder, params)
        warm = spark_embed(spark, sdf, mode, builder, params)
        bare = bare_embed(df, mode, builder, params, args.cores)
        results[mode] = (n / warm, n / bare)
        print(
            f"{mode:8s} spark cold {n / cold:7.1f} rows/s ({cold:6.1f} s)  warm {n / warm:7.1f} rows/s "
            f"({warm:6.1f} s)  bare {n / bare:7.1f} rows/s ({bare:6.1f} s)  efficiency {bare / warm:.2f}",
            flush=True,
        )
    spark.stop()
    key = "text" if "text" in results else next(iter(results))
    r, b = results[key]
    print(f"embed rows_per_s={r:.1f} bare_rows_per_s={b:.1f} efficiency={r / b:.3f} mode={key} rows={n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
