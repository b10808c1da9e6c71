"""The row validation core: pure pandas, no Spark. :func:`listing_dedup.ingest.reader.validate`
runs it in a pandas UDF on the executors (the duplicate-id rule, which needs all rows, stays
in Spark); the property test (tests/reliability/test_ingest_property.py) calls it directly.

    out = validate_rows(ids, titles, images, phashes, RowRules(max_title_chars=1000, images=roots))

``out`` has one row per input row (same index) and the columns

``posting_id``
    the id with leading and trailing whitespace, control and format characters removed
    (``"\\t"``, ``"\\u00a0"``, ``"\\u200b"`` strip to nothing); null when nothing is left.
``title``
    the cleaned title (:func:`listing_dedup.ingest.titles.clean_title`), ``""`` when none.
``image``
    a string image value stripped (null when blank); null for bytes values (the caller keeps them).
``image_phash``
    the given pHash (stripped, lower-case), else the one computed from the decoded image, else null.
``image_error``
    why a present image is unusable (one of :data:`listing_dedup.ingest.images.IMAGE_ERRORS`).
``reason``
    the reject reason, null when the row is kept (before the duplicate-id rule): the first of
    ``null_posting_id``, ``no_title_no_image``, ``malformed_image_phash``, then, for a row with
    neither a title nor a valid pHash, its ``image_error``.

Nothing but :class:`listing_dedup.errors.StorageError` (storage failed: the run fails) escapes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from listing_dedup.ingest.images import ImageRoots, load_image
from listing_dedup.ingest.phash import phash_hex
from listing_dedup.ingest.titles import clean_title

# the optional listing attributes (issue 30): read when the input has them, never required; a bad
# value never rejects its row (the listing's title and image still work): it is nulled and counted
# (``source``: the listing's duplicate-free source, e.g. the shop of two deduplicated catalogs matched)
ATTRIBUTES = ("brand", "model", "category", "price", "description", "source")
MODEL_ALIASES = ("model", "modelno")  # the input column read as ``model`` (the first one present)
ATTRIBUTE_MAX_CHARS = {"brand": 200, "model": 200, "category": 500, "description": 5000, "source": 200}  # longer: cut
_PRICE_NUMBER = re.compile(r"\d[\d.,' ]*\d|\d")

NULL_POSTING_ID = "null_posting_id"
NO_TITLE_NO_IMAGE = "no_title_no_image"
MALFORMED_IMAGE_PHASH = "malformed_image_phash"
DUPLICATE_POSTING_ID = "duplicate_posting_id"
PHASH_RE = re.compile(r"[0-9a-f]{16}")
OUTPUT_COLUMNS = ("posting_id", "title", "image", "image_phash", "image_error", "reason")

# categories stripped from both ends of an id: separators (spaces), control and format characters
_STRIP_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


@dataclass(frozen=True)
class RowRules:
    max_title_chars: int = 1000
    images: ImageRoots = ImageRoots()  # where image paths may be read from, and the byte limit


def _null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _blank(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _STRIP_CATEGORIES


def clean_posting_id(value: Any) -> str | None:
    """The id with blank characters (whitespace, controls, format characters such as the
    zero-width space or a byte-order mark) stripped from both ends; None when nothing is left."""
    if _null(value):
        return None
    s = str(value)
    start, end = 0, len(s)
    while start < end and _blank(s[start]):
        start += 1
    while end > start and _blank(s[end - 1]):
        end -= 1
    return s[start:end] or None


def clean_phash(value: Any) -> str | None:
    """A given pHash stripped and lower-cased; None when absent or blank."""
    if _null(value) or not isinstance(value, str):
        return None
    s = value.strip().lower()
    return s or None


def _image_present(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) > 0
    return isinstance(value, str) and bool(value.strip())


def validate_row(posting_id: Any, title: Any, image: Any, image_phash: Any, rules: RowRules) -> tuple:
    """One row's :data:`OUTPUT_COLUMNS` (see the module doc)."""
    pid = clean_posting_id(posting_id)
    text = clean_title(title, rules.max_title_chars)
    given = clean_phash(image_phash)
    present = _image_present(image)
    image_out = image.strip() if isinstance(image, str) and present else None
    reason = None
    if pid is None:
        reason = NULL_POSTING_ID
    elif not text and not present and given is None:
        reason = NO_TITLE_NO_IMAGE
    elif given is not None and not PHASH_RE.fullmatch(given):
        reason = MALFORMED_IMAGE_PHASH
    phash = given
    error = None
    if present and reason is None:  # a rejected row's image is never read
        result = load_image(image, rules.images)
        error = result.error
        if result.ok and given is None:
            phash = phash_hex(result.image)
        if error is not None and not text and given is None:
            reason = error
    return pid, text, image_out, phash, error, reason


def validate_rows(
    posting_id: pd.Series,
    title: pd.Series,
    image: pd.Series | None = None,
    image_phash: pd.Series | None = None,
    rules: RowRules = RowRules(),
) -> pd.DataFrame:
    """:func:`validate_row` over aligned series (``image``/``image_phash`` None: no such column)."""
    n = len(posting_id)
    images = image if image is not None else [None] * n
    phashes = image_phash if image_phash is not None else [None] * n
    rows = [validate_row(i, t, im, ph, rules) for i, t, im, ph in zip(posting_id, title, images, phashes, strict=True)]
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), index=posting_id.index, dtype=object)


def clean_attribute_text(value: Any, max_chars: int) -> str | None:
    """A text attribute cleaned like a title (:func:`clean_title`: escapes, NFC, whitespace, cut
    to ``max_chars``); None when absent or blank. Any scalar is read as its text (a model number
    stored as a number is still a model number)."""
    if _null(value):
        return None
    return clean_title(value, max_chars) or None


def parse_price(value: Any) -> tuple[float | None, bool]:
    """``(price, bad)``: a price as a float >= 0, from a number or a text holding one number with
    an optional currency (``"$1,409.99"``, ``"€134,00"``, ``"69.71 gbp"``, ``"3.99E1"``); ``(None,
    False)`` when absent or blank; ``(None, True)`` when present but not one finite number >= 0
    (``"call us"``, ``"-5"``, ``"1-2"``, ``inf``). A comma followed by exactly 1-2 digits at the end
    is a decimal comma; other commas, apostrophes and spaces group thousands."""
    if _null(value):
        return None, False
    if isinstance(value, bool):
        return None, True
    if isinstance(value, (int, float)):
        x = float(value)
        return (x, False) if x == x and x not in (float("inf"), float("-inf")) and x >= 0 else (None, True)
    s = str(value).strip()
    if not s:
        return None, False
    try:  # plain and scientific notation ("39.9", "3.99E1")
        x = float(s)
        return (x, False) if x == x and abs(x) != float("inf") and x >= 0 else (None, True)
    except ValueError:
        pass
    nums = _PRICE_NUMBER.findall(s)
    if len(nums) != 1 or "-" in s:
        return None, True
    n = nums[0].replace("'", "").replace(" ", "")
    if "," in n and "." in n:  # the later one is the decimal mark
        n = n.replace(",", "") if n.rfind(".") > n.rfind(",") else n.replace(".", "").replace(",", ".")
    elif "," in n:
        head, _, tail = n.rpartition(",")
        n = (head.replace(",", "") + "." + tail) if len(tail) in (1, 2) else n.replace(",", "")
    elif n.count(".") > 1:
        return None, True
    try:
        return float(n), False
    except ValueError:
        return None, True


def validate_attributes(columns: dict[str, pd.Series]) -> tuple[pd.DataFrame, pd.Series]:
    """The optional attributes of some rows: ``columns`` maps each of :data:`ATTRIBUTES` the input
    has to its aligned series. Returns (the cleaned values: text columns as str or None, ``price``
    as float or NaN; one column per given attribute, same index) and, per row, the names of the
    attributes that held a bad value and were nulled (comma-joined, None when none)."""
    names = [a for a in ATTRIBUTES if a in columns]
    if not names:
        return pd.DataFrame(index=pd.RangeIndex(0)), pd.Series([], dtype=object)
    index = columns[names[0]].index
    out: dict[str, list] = {}
    nulled: list[list[str]] = [[] for _ in range(len(index))]
    for a in names:
        vals = columns[a].tolist()
        if a == "price":
            got = []
            for i, v in enumerate(vals):
                x, bad = parse_price(v)
                got.append(float("nan") if x is None else x)
                if bad:
                    nulled[i].append(a)
            out[a] = got
        else:
            out[a] = [clean_attribute_text(v, ATTRIBUTE_MAX_CHARS[a]) for v in vals]
    frame = pd.DataFrame(
        {a: pd.Series(out[a], index=index, dtype="float64" if a == "price" else object) for a in names}
    )
    return frame, pd.Series([",".join(x) if x else None for x in nulled], index=index, dtype=object)


def attribute_columns(columns: Iterable[str]) -> dict[str, str]:
    """The optional attributes a set of input ``columns`` has: attribute -> the column it is read
    from (``model`` from ``model``, else ``modelno``), in :data:`ATTRIBUTES` order."""
    present = set(columns)
    out = {}
    for a in ATTRIBUTES:
        col = next((c for c in (MODEL_ALIASES if a == "model" else (a,)) if c in present), None)
        if col is not None:
            out[a] = col
    return out


def listing_attributes(df: pd.DataFrame) -> pd.DataFrame:
    """The optional attributes of a pandas frame of listings as the reader keeps them: the
    :data:`ATTRIBUTES` it has (:func:`attribute_columns`), cleaned by :func:`validate_attributes`
    (a bad value nulled); no column when it has none."""
    cols = {a: df[c] for a, c in attribute_columns(df.columns).items()}
    if not cols:
        return pd.DataFrame(index=df.index)
    cleaned, _ = validate_attributes(cols)
    return cleaned
