"""A generated sample catalog with known duplicate groups (the demo and the tests use it).

Each *product* gets a canonical title (brand, product line name, product, variant, size)
and a 64-bit perceptual hash; its listings are noisy rewrites of that title (most carry the product code,
most reuse the product photo) (reordered words, shop
promo words, case changes, unit spelling, dropped words, the odd typo) with a hash a few
bits away. Products of the same brand and kind that differ only in size or variant are
the hard negatives. A handful of bad rows exercise every reject reason.

Deterministic for a given seed. No real data is involved.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

BRANDS = [
    "Wardah",
    "Emina",
    "Pixy",
    "Maybelline",
    "Garnier",
    "Pond's",
    "Nivea",
    "Citra",
    "Lifebuoy",
    "Dettol",
    "Indomie",
    "Sedaap",
    "Kapal Api",
    "Nescafe",
    "Ultra Milk",
    "Bear Brand",
    "Samsung",
    "Xiaomi",
    "Oppo",
    "Logitech",
    "Rexus",
    "Philips",
    "Miyako",
    "Cosmos",
    "Tupperware",
    "Lock&Lock",
    "Pigeon",
    "MamyPoko",
    "Sweety",
    "Baby Happy",
    "Adidas",
    "Nike",
    "Eiger",
    "Converse",
    "Uniqlo",
    "Erigo",
    "Zoya",
    "Rabbani",
]
KINDS = [
    ("lipstick matte", ["red velvet", "nude pink", "coral", "maroon"], ["3.5g", "4g"]),
    ("face wash", ["acne care", "brightening", "oil control"], ["50ml", "100ml", "150ml"]),
    ("micellar water", ["pink", "blue", "oil infused"], ["125ml", "400ml"]),
    ("hand body lotion", ["aloe vera", "sakura", "milk"], ["120ml", "250ml", "400ml"]),
    ("sabun cair", ["lemon", "original", "sensitive"], ["450ml", "900ml"]),
    ("mie instan goreng", ["original", "rendang", "ayam geprek"], ["1 dus 40 pcs", "5 pcs"]),
    ("kopi bubuk", ["original", "mocca", "susu"], ["165g", "380g"]),
    ("susu UHT", ["coklat", "full cream", "strawberry"], ["200ml", "1 liter"]),
    ("casing hp silicone", ["hitam", "transparan", "navy"], ["A52", "A72", "Note 10"]),
    ("mouse wireless", ["silent click", "gaming rgb"], ["M170", "M331", "G304"]),
    ("keyboard mechanical", ["blue switch", "red switch"], ["TKL", "full size"]),
    ("rice cooker", ["digital", "mini"], ["0.6 liter", "1.8 liter"]),
    ("blender", ["kaca", "plastik"], ["1 liter", "2 liter"]),
    ("kotak makan", ["bento", "3 sekat"], ["500ml", "1 liter"]),
    ("botol susu bayi", ["wide neck", "slim"], ["120ml", "240ml"]),
    ("popok bayi pants", ["boy", "girl"], ["M 34", "L 30", "XL 26"]),
    ("sepatu sneakers pria", ["hitam putih", "full white"], ["size 40", "size 42"]),
    ("kaos polos cotton combed 30s", ["hitam", "putih", "navy"], ["M", "L", "XL"]),
    ("hijab segi empat voal", ["motif bunga", "polos"], ["115x115", "130x130"]),
    ("tas ransel laptop", ["waterproof", "anti maling"], ["14 inch", "15.6 inch"]),
]
PROMO = ["PROMO", "MURAH", "ORIGINAL", "ORI 100%", "READY STOCK", "BPOM", "COD", "TERLARIS", "Grosir", "[BISA COD]"]
SYNONYMS = {"original": "ori", "liter": "L", "hitam": "black", "putih": "white", "pria": "cowok", "bayi": "baby"}


@dataclass(frozen=True)
class Sample:
    listings: pd.DataFrame  # posting_id, title, image_phash (+ bad rows)
    truth: pd.DataFrame  # posting_id, label_group (valid listings only)
    n_bad_rows: int


_SYLLABLES = ["ka", "ri", "mo", "la", "zen", "tu", "vi", "so", "ne", "ra", "pe", "lu", "da", "xi", "or", "mi", "ta"]


def _line_name(rng: random.Random) -> str:
    """A made-up product line name ("Zenrami", "Kalu"): real listings carry one most of the time."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _canonical(rng: random.Random, lines: int = 1, growth: str = "categories") -> tuple[str, str, str, str]:
    brand = rng.choice(BRANDS)
    kind, variants, sizes = rng.choice(KINDS)
    if lines > 1 and growth == "categories":
        block = rng.randrange(lines)
        if block:  # another category block: brands and product kinds of its own
            brand = _made_up(rng, block, brand, 2)
            kind = " ".join(_made_up(rng, block, w, 1).lower() for w in kind.split())
    # few product lines per brand and kind: products differing only in variant or size stay hard negatives
    if lines == 1 or growth == "categories":
        line = _LINES.setdefault((brand, kind), _line_name(rng))
    else:
        key = (brand, kind, rng.randrange(lines))
        line = _LINES.get(key)
        if line is None:
            taken = _LINE_NAMES.setdefault((brand, kind), set())
            line = _line_name(rng)
            while line in taken:  # another line of the same brand and kind: another name
                line = _line_name(rng) + (f" {rng.randint(2, 99)}" if len(taken) > 2000 else "")
            taken.add(line)
            _LINES[key] = line
    return f"{brand} {line}", kind, rng.choice(variants), rng.choice(sizes)


def _made_up(rng: random.Random, block: int, word: str, n_words: int) -> str:
    """Block ``block``'s stand-in for ``word`` (a brand, or a word of a product kind): a made-up
    name of ``n_words`` words, the same throughout the block, used by no other block and never
    a real brand or kind word."""
    name = _MADE_UP.get((block, word))
    if name is None:
        for _ in range(20):
            name = " ".join(_line_name(rng) for _ in range(n_words))
            if name.lower() not in _TAKEN:
                break
        while name.lower() in _TAKEN:  # the short names are running out (5,202 one-word names)
            name += rng.choice(_SYLLABLES)
        _TAKEN.add(name.lower())
        _MADE_UP[(block, word)] = name
    return name


_LINES: dict[tuple, str] = {}
_MADE_UP: dict[tuple[int, str], str] = {}
_TAKEN: set[str] = set()
_LINE_NAMES: dict[tuple[str, str], set[str]] = {}
# about 4,500 distinct products fit one line per brand and kind (38 brands x 20 kinds x their
# variants and sizes); a larger catalog is cut in blocks of about this many products. growth
# "categories" (default): each block past the first is another category universe, its own
# made-up brands and product-kind words (variants, sizes, promo words and codes stay shared),
# so a listing's neighbourhood grows slowly with the catalog, as in real data (docs/benchmarks.md
# "Scale: the whole job"); growth "lines" (before stop 27): each block adds one more product
# line to every brand and kind, so the look-alikes of a listing grow in proportion to the catalog
PRODUCTS_PER_LINE_SET = 3000


def _unit_variant(size: str, rng: random.Random) -> str:
    for unit in ("ml", "g", "liter"):
        if size.endswith(unit) and rng.random() < 0.5:
            num = size[: -len(unit)].strip()
            return f"{num} {unit.upper()}" if rng.random() < 0.5 else f"{num}{unit}"
    return size


def _noisy_title(parts: tuple[str, str, str, str], rng: random.Random, code: str = "") -> str:
    brand, kind, variant, size = parts
    words = [brand, *kind.split(), *variant.split(), _unit_variant(size, rng)]
    if code and rng.random() < 0.7:  # most sellers copy the product code
        words.insert(rng.randint(1, len(words)), code)
    if rng.random() < 0.3:  # drop one non-brand word
        idx = rng.randrange(1, len(words))
        if len(words) > 4:
            words.pop(idx)
    if rng.random() < 0.3:  # synonym
        words = [SYNONYMS.get(w.lower(), w) for w in words]
    if rng.random() < 0.4:  # move the size or variant to the front
        words.insert(0, words.pop())
    if rng.random() < 0.6:
        words.insert(0 if rng.random() < 0.5 else len(words), rng.choice(PROMO))
    if rng.random() < 0.15:  # one typo: swap two letters of a long word
        long = [i for i, w in enumerate(words) if len(w) > 5]
        if long:
            i = rng.choice(long)
            w = words[i]
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    title = " ".join(words)
    r = rng.random()
    if r < 0.25:
        title = title.upper()
    elif r < 0.4:
        title = title.lower()
    elif r < 0.5:
        title = title.title()
    return title


def _listing_hash(base_hash: int, rng: random.Random) -> int:
    """Most sellers reuse the product photo (a few bits of re-encoding noise); some take their own."""
    return _flip_bits(base_hash, rng.randint(0, 4), rng) if rng.random() < 0.6 else rng.getrandbits(64)


def _flip_bits(h: int, n_bits: int, rng: random.Random) -> int:
    for b in rng.sample(range(64), n_bits):
        h ^= 1 << b
    return h


def generate_catalog(
    n_products: int = 300,
    *,
    seed: int = 7,
    min_size: int = 1,
    max_size: int = 5,
    with_bad_rows: bool = True,
    growth: str = "categories",
) -> Sample:
    """``n_products`` products, each listed ``min_size..max_size`` times (singletons when 1).
    Past :data:`PRODUCTS_PER_LINE_SET` products the catalog grows by ``growth``: ``"categories"``
    (blocks of made-up brands and product kinds) or ``"lines"`` (more product lines of the same
    brands and kinds, the generator before stop 27), so any size can be generated
    (``bench/scale.py``); smaller catalogs are the same as ever for a seed."""
    rng = random.Random(seed)
    if growth not in ("categories", "lines"):
        raise ValueError(f"growth must be 'categories' or 'lines', not {growth!r}")
    _LINES.clear()
    _LINE_NAMES.clear()
    _MADE_UP.clear()
    _TAKEN.clear()
    _TAKEN.update(b.lower() for b in BRANDS)  # made-up names never take a real brand or kind word
    _TAKEN.update(w.lower() for kind, _, _ in KINDS for w in kind.split())
    lines = max(1, -(-n_products // PRODUCTS_PER_LINE_SET))
    seen: set[tuple[str, str, str, str]] = set()
    rows: list[dict] = []
    truth: list[dict] = []
    pid = 0
    for g in range(n_products):
        parts = _canonical(rng, lines, growth)
        while parts in seen:
            parts = _canonical(rng, lines, growth)
        seen.add(parts)
        base_hash = rng.getrandbits(64)
        code = f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXZ')}{rng.choice('ABCDEFGHJKLMNPRSTUVWXZ')}-{rng.randint(100, 9999)}"
        size = rng.randint(min_size, max_size)
        for _ in range(size):
            pid += 1
            posting_id = f"s{seed}_{pid:06d}" if pid < 1_000_000 else f"s{seed}_{pid}"
            rows.append(
                {
                    "posting_id": posting_id,
                    "title": _noisy_title(parts, rng, code),
                    # most sellers reuse the product photo (a few bits of re-encoding noise); some take their own
                    "image_phash": f"{_listing_hash(base_hash, rng):016x}",
                }
            )
            truth.append({"posting_id": posting_id, "label_group": f"g{g:05d}"})
    rng.shuffle(rows)
    n_bad = 0
    if with_bad_rows:
        bad = [
            {"posting_id": None, "title": "Wardah lipstick tanpa id", "image_phash": None},
            {"posting_id": "   ", "title": "id kosong", "image_phash": None},
            {"posting_id": rows[0]["posting_id"], "title": "duplicate of the first row", "image_phash": None},
            {"posting_id": f"s{seed}_bad_empty", "title": "   ", "image_phash": None},
            {"posting_id": f"s{seed}_bad_phash", "title": "Nivea lotion 250ml", "image_phash": "xyz123"},
            {"posting_id": f"s{seed}_escaped", "title": "Kaos \\xe2\\x9c\\x85 polos hitam", "image_phash": None},
        ]
        n_bad = 5  # the escaped-title row is valid (its title gets unescaped)
        rows.extend(bad)
        truth.append({"posting_id": f"s{seed}_escaped", "label_group": "g_escaped"})
    listings = pd.DataFrame(rows, columns=["posting_id", "title", "image_phash"])
    return Sample(listings=listings, truth=pd.DataFrame(truth), n_bad_rows=n_bad)
