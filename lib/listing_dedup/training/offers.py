"""Generated offers of many shops for one product: a training part of wdc_products' shape.

A catalog of web offers holds each product several times, each shop's title in its own words: a
code written with other separators or dropped, words left out or moved, the brand put in front,
a shop's filler ("free shipping", "original"), units written "16GB" or "16 gb". The training
catalogs of two shops (amazon_google, walmart_amazon) hold pairs among singletons, and Shopee's
folds hold groups in Indonesian; none teaches a model what one product in many English offers
looks like, which is where the titles-only model loses on wdc_products (docs/quality.md, "Where
wdc_products loses"). :func:`many_shops` makes such a catalog from a labelled catalog's groups of
2+: each group keeps its own listings and gets generated offers of them up to a drawn size; the
label is the group's (known by construction). Pure Python and numpy, seeded.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from listing_dedup.embed.identifiers import title_codes

FILLER = (
    "new",
    "original",
    "genuine",
    "oem",
    "retail",
    "black",
    "white",
    "silver",
    "free shipping",
    "bulk",
    "official",
    "brand new",
    "sealed",
    "sale",
    "best price",
    "in stock",
    "fast delivery",
    "uk",
    "eu",
    "us",
)
_UNIT = re.compile(r"(\d+(?:\.\d+)?)\s?(gb|tb|mb|mhz|ghz|w|mm|cm|in|inch|v|mah|hz|ml|l|kg|g)\b", re.IGNORECASE)
SIZES = (3, 9)  # a group's listings after generation: drawn in [3, 9)


def _code_variant(token: str, rng: np.random.Generator) -> str:
    """A code (embed/identifiers.title_codes) in another shop's writing: upper case, a hyphen
    put in, or its hyphens removed; any other token as it is."""
    if not title_codes(token) or _UNIT.fullmatch(token):
        return token
    r = rng.random()
    if r < 0.3:
        return token.upper()
    if r < 0.5:
        i = int(rng.integers(1, len(token)))
        return token[:i] + "-" + token[i:]
    if r < 0.6:
        return token.replace("-", "")
    return token


def offer(title: str, brand: str, rng: np.random.Generator) -> str:
    """One shop's offer of the product titled ``title``: a share of its words kept (all when fewer
    than 3 would remain), its codes dropped on a quarter of the offers, codes rewritten, a chunk
    moved to the front, the brand put in front, a filler appended, units rewritten, the case changed."""
    words = str(title).split()
    if not words:
        return str(title)
    share = rng.uniform(0.6, 0.95)
    keep = [w for w in words if rng.random() < share]
    if len(keep) < min(3, len(words)):
        keep = words
    coded = [w for w in words if title_codes(w)]
    if coded and rng.random() < 0.25:
        keep = [w for w in keep if w not in coded] or keep
    keep = [_code_variant(w, rng) for w in keep]
    if len(keep) > 3 and rng.random() < 0.5:
        i = int(rng.integers(1, len(keep)))
        keep = keep[i:] + keep[:i]
    b = str(brand or "").strip()
    if b and b.lower() not in " ".join(keep).lower() and rng.random() < 0.6:
        keep = [b, *keep]
    if rng.random() < 0.4:
        keep = [*keep, str(rng.choice(FILLER))]
    sep = " " if rng.random() < 0.5 else ""
    t = _UNIT.sub(
        lambda m: m.group(1) + sep + (m.group(2).upper() if rng.random() < 0.5 else m.group(2).lower()), " ".join(keep)
    )
    r = rng.random()
    return t.lower() if r < 0.3 else (t.title() if r < 0.45 else t)


def many_shops(df: pd.DataFrame, seed: int = 0, prefix: str = "offer") -> pd.DataFrame:
    """``posting_id, title, brand, label_group``: each label group of 2+ of ``df`` (columns
    ``title``, ``label_group``, optional ``brand``) with its own listings and at least one
    generated offer of them (:func:`offer`), up to a size drawn in :data:`SIZES`."""
    rng = np.random.default_rng(seed)
    df = df[df.groupby("label_group")["title"].transform("size") >= 2]
    brands = df["brand"] if "brand" in df.columns else pd.Series([None] * len(df), index=df.index)
    rows: list[tuple[str, object, str]] = []
    for g, grp in df.groupby("label_group", sort=False):
        titles = grp["title"].astype(str).tolist()
        brand = brands.loc[grp.index[0]]
        brand = brand if isinstance(brand, str) else None
        rows.extend((t, brand, g) for t in titles)
        size = int(rng.integers(*SIZES))
        for _ in range(max(size - len(titles), 1)):
            rows.append((offer(titles[int(rng.integers(len(titles)))], brand or "", rng), brand, g))
    out = pd.DataFrame(rows, columns=["title", "brand", "label_group"])
    out.insert(0, "posting_id", [f"{prefix}_{i}" for i in range(len(out))])
    return out
