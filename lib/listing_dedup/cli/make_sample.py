"""Write the generated sample catalog (listings Parquet + truth CSV) used by `make run`.

python jobs/make_sample.py --out data/sample [--products 400] [--seed 7]
"""

from __future__ import annotations

from pathlib import Path

from listing_dedup.quality.sample import generate_catalog
from listing_dedup.runtime import CliParser, run_cli


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="make_sample.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--products", type=int, default=400)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)

    def _run() -> int:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        s = generate_catalog(args.products, seed=args.seed)
        s.listings.to_parquet(out / "listings.parquet", index=False)
        s.truth.to_csv(out / "truth.csv", index=False)
        print(
            f"wrote {len(s.listings)} listings ({s.n_bad_rows} bad rows) and "
            f"{s.truth['label_group'].nunique()} true groups to {out}"
        )
        return 0

    return run_cli(_run)
