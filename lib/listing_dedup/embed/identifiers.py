"""Product identifiers in listing titles: codes / model numbers and numbers with units.

Two listings of one product range often differ only in a model code and a size ("... 40in ...
XX40A550" against "... 52in ... XX52A650"): char n-grams and sentence vectors see them as
near-identical, a person sees two products. This module extracts, from a title (and the optional
``model`` / ``brand`` attributes), what decides identity, and compares two listings:

- **codes**: tokens mixing letters and digits (``DSC-W120``, ``ELPLP12``, ``MC688LL/A``), and
  digit runs of 5+ digits (part numbers), normalised across case and separators (``DSC-W120`` =
  ``dsc w120`` = ``dscw120``). A hyphen/slash-joined token also yields its parts that are codes
  themselves (``A500-10S32u`` gives ``a50010s32u`` and ``a500``, ``10s32u``; a dot followed by a
  digit does not split: ``T120.407.11.041.00`` is the one code ``t1204071104100``), and a word of 2-3
  letters followed by a short code starting with a letter is joined to it (``DSC W120`` gives
  ``dscw120``). Numbers with a unit
  (``16GB``) and ordinals (``6th``) are not codes;
- **quantities**: numbers with units, normalised to one unit per dimension (storage in GB,
  length in mm (``40in``, ``40"``, ``40-inch``), volume in ml, mass in g, power in W, ...);
- **brand** (attribute only): lower-cased letters and digits.

Pair evidence (:func:`pair_evidence`): the rarest shared code's inverse document frequency
(a shared rare code is strong evidence of one product), a code conflict (both listings have
codes, none shared), the number of dimensions whose quantities conflict (both have values in it,
none shared), a brand conflict (both have a brand, neither contains the other). Pure Python and
numpy; no model, nothing downloaded.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# unit -> (dimension, factor to the dimension's base unit)
UNITS: dict[str, tuple[str, float]] = {
    "kb": ("storage", 1e-6),
    "mb": ("storage", 1e-3),
    "gb": ("storage", 1.0),
    "tb": ("storage", 1e3),
    "mm": ("length", 1.0),
    "cm": ("length", 10.0),
    "m": ("length", 1000.0),
    "in": ("length", 25.4),
    "inch": ("length", 25.4),
    "inches": ("length", 25.4),
    '"': ("length", 25.4),
    "''": ("length", 25.4),
    "ft": ("length", 304.8),
    "ml": ("volume", 1.0),
    "l": ("volume", 1000.0),
    "ltr": ("volume", 1000.0),
    "floz": ("volume", 29.5735),
    "g": ("mass", 1.0),
    "gr": ("mass", 1.0),
    "gram": ("mass", 1.0),
    "kg": ("mass", 1000.0),
    "lb": ("mass", 453.592),
    "lbs": ("mass", 453.592),
    "oz": ("mass", 28.3495),
    "w": ("power", 1.0),
    "watt": ("power", 1.0),
    "watts": ("power", 1.0),
    "kw": ("power", 1000.0),
    "mah": ("charge", 1.0),
    "v": ("voltage", 1.0),
    "volt": ("voltage", 1.0),
    "hz": ("frequency", 1e-6),
    "khz": ("frequency", 1e-3),
    "mhz": ("frequency", 1.0),
    "ghz": ("frequency", 1e3),
    "mp": ("pixels", 1.0),
    "rpm": ("speed", 1.0),
    "mbps": ("rate", 1.0),
    "gbps": ("rate", 1e3),
}
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))
# a number, optional space or hyphen, a unit not followed by a letter or digit
_QUANTITY = re.compile(
    rf"(?<![\w.])(\d+(?:[.,]\d+)?)\s?-?\s?(fl\.?\s?oz|{_UNIT_ALT})(?![a-z0-9])",
    re.IGNORECASE,
)
_SEP = re.compile(r"[-_/.]")
# where a joined token splits into parts: at - _ / and at a dot not followed by a digit (the dots of
# a dotted reference number, "T120.407.11.041.00", join one code: its first group "t120" is the
# product line's, and "t120.417..." is another product)
_PART_SEP = re.compile(r"[-_/]|\.(?!\d)")
_TOKEN = re.compile(r"[^\s,;:|()\[\]{}<>!?+*&#@$%=~`^\\]+")
_ORDINAL = re.compile(r"\d+(st|nd|rd|th)")
# counts are units too (not codes), though not compared: "6 pack" and "6 ct" may be one product
_COUNTS = "pcs|pc|pack|pk|ct|pcs|pieces|sheets|set|x"
_UNIT_TOKEN = re.compile(rf"\d+(?:[.,]\d+)?(?:{_UNIT_ALT}|floz|{_COUNTS})(?:x\d+)?", re.IGNORECASE)
_SHORT_WORD = re.compile(r"[a-z]{2,3}")
_SHORT_CODE = re.compile(r"[a-z][a-z0-9]{2,5}")
MIN_CODE = 4  # characters of a normalised code (shorter mixed tokens: "ps4", "v2", "4k")
MIN_DIGITS = 5  # a digit-only token is a code from this many digits (years and counts are shorter)


@dataclass(frozen=True)
class Identifiers:
    codes: frozenset[str]
    quantities: dict[str, frozenset[float]]
    brand: str = ""


def normalise_code(token: str) -> str:
    """Lower case, separators (``- _ / .``) removed: ``DSC-W120`` -> ``dscw120``."""
    return _SEP.sub("", str(token).lower())


def _is_code(c: str) -> bool:
    if len(c) < MIN_CODE or not c.isalnum() or not c.isascii():
        return False
    digits = sum(ch.isdigit() for ch in c)
    if digits == 0:
        return False
    if digits == len(c):
        return len(c) >= MIN_DIGITS
    return not _ORDINAL.fullmatch(c) and not _UNIT_TOKEN.fullmatch(c)


def title_codes(title: str) -> set[str]:
    """The codes of one title (see the module doc)."""
    out: set[str] = set()
    prev_word = ""
    for raw in _TOKEN.findall(str(title or "").lower()):
        raw = raw.strip("-_/.'\"")
        if not raw:
            prev_word = ""
            continue
        whole = normalise_code(raw)
        found = False
        if _is_code(whole):
            out.add(whole)
            found = True
        parts = [normalise_code(p) for p in _PART_SEP.split(raw) if p]
        if len(parts) > 1:
            for p in parts:
                if _is_code(p):
                    out.add(p)
                    found = True
        if found and prev_word and len(parts) == 1 and _SHORT_CODE.fullmatch(whole) and _is_code(prev_word + whole):
            out.add(prev_word + whole)  # "dsc w120" -> "dscw120"
        prev_word = whole if _SHORT_WORD.fullmatch(whole) else ""
    return out


def title_quantities(title: str) -> dict[str, frozenset[float]]:
    """Numbers with units, by dimension, in the dimension's base unit (3 significant digits)."""
    by: dict[str, set[float]] = {}
    for num, unit in _QUANTITY.findall(str(title or "")):
        u = re.sub(r"[\s.]", "", unit.lower())
        if u not in UNITS:
            continue
        dim, factor = UNITS[u]
        value = float(num.replace(",", ".")) * factor
        if value <= 0:
            continue
        by.setdefault(dim, set()).add(float(f"{value:.3g}"))
    return {d: frozenset(v) for d, v in by.items()}


def normalise_brand(brand: object) -> str:
    if brand is None or (isinstance(brand, float) and math.isnan(brand)):
        return ""
    return re.sub(r"[^0-9a-z]", "", str(brand).lower())


def identifiers(title: str, model: object = None, brand: object = None) -> Identifiers:
    """Codes (title and the optional ``model`` attribute), quantities and brand of a listing."""
    codes = title_codes(title)
    if model is not None and not (isinstance(model, float) and math.isnan(model)) and str(model).strip():
        m = normalise_code(str(model).strip())
        if len(m) >= 3 and m.isalnum():
            codes.add(m)
        codes |= title_codes(str(model))
    return Identifiers(frozenset(codes), title_quantities(title), normalise_brand(brand))


def catalog_identifiers(
    titles: Sequence[str], models: Sequence | None = None, brands: Sequence | None = None
) -> list[Identifiers]:
    n = len(titles)
    models = models if models is not None else [None] * n
    brands = brands if brands is not None else [None] * n
    return [identifiers(t, m, b) for t, m, b in zip(titles, models, brands, strict=True)]


def code_idf(ids: Iterable[Identifiers]) -> dict[str, float]:
    """Inverse document frequency ``log(n / df)`` of every code of the catalog."""
    ids = list(ids)
    df = Counter(c for i in ids for c in i.codes)
    n = max(len(ids), 1)
    return {c: math.log(n / d) for c, d in df.items()}


EVIDENCE = ("code_shared_idf", "code_conflict", "quantity_conflicts", "brand_conflict", "codes_a", "codes_b")


def evidence_of(a: Identifiers, b: Identifiers, idf: dict[str, float]) -> tuple[float, float, float, float]:
    """(rarest shared code's idf or 0, code conflict 0/1, dimensions in conflict, brand conflict 0/1)."""
    shared = a.codes & b.codes
    shared_idf = max((idf.get(c, 0.0) for c in shared), default=0.0)
    code_conflict = float(bool(a.codes) and bool(b.codes) and not shared)
    q = sum(1 for d, va in a.quantities.items() if d in b.quantities and not va & b.quantities[d])
    brand = float(bool(a.brand) and bool(b.brand) and a.brand not in b.brand and b.brand not in a.brand)
    return shared_idf, code_conflict, float(q), brand


def pair_evidence(ids: Sequence[Identifiers], src: np.ndarray, dst: np.ndarray, idf: dict[str, float]) -> np.ndarray:
    """One row per pair ``(src[i], dst[i])`` (row indices into ``ids``), columns ``EVIDENCE``:
    the four values of :func:`evidence_of` and each end's number of codes."""
    out = np.zeros((len(src), len(EVIDENCE)), dtype=np.float32)
    cache: dict[tuple[int, int], tuple[float, float, float, float]] = {}
    for r, (s, d) in enumerate(zip(np.asarray(src).tolist(), np.asarray(dst).tolist(), strict=True)):
        key = (s, d) if s < d else (d, s)
        ev = cache.get(key)
        if ev is None:
            ev = cache[key] = evidence_of(ids[s], ids[d], idf)
        out[r, :4] = ev
        out[r, 4] = len(ids[s].codes)
        out[r, 5] = len(ids[d].codes)
    return out


def conflicts(evidence: np.ndarray) -> np.ndarray:
    """Pairs whose titles disagree on what decides identity: a code conflict, a quantity
    conflict or a brand conflict, and no shared code."""
    e = np.asarray(evidence)
    return (e[:, 0] == 0) & ((e[:, 1] > 0) | (e[:, 2] > 0) | (e[:, 3] > 0))
