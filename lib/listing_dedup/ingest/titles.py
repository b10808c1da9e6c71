"""Title clean-up: pure functions over strings and pandas Series.

Real catalog titles (the Shopee data among them) sometimes hold the *literal text* of
escaped UTF-8 bytes, for example ``Kaos \\xe2\\x9c\\x85 Murah``. ``clean_title`` turns such runs
back into the characters they encode (here the check-mark emoji) and normalises whitespace;
``lexical_form`` additionally lower-cases and strips punctuation for the lexical signal only.
"""

from __future__ import annotations

import re
import unicodedata

import pandas as pd

_ESCAPE_RUN = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")
_WS = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def _decode_run(match: re.Match[str]) -> str:
    raw = bytes(int(h, 16) for h in match.group(0).split("\\x")[1:])
    return raw.decode("utf-8", errors="replace")


def unescape_bytes(text: str) -> str:
    """Replace runs of literal ``\\xNN`` escapes by the UTF-8 text they encode."""
    if "\\x" not in text:
        return text
    return _ESCAPE_RUN.sub(_decode_run, text)


def clean_title(text: object, max_chars: int = 1000) -> str:
    """Unescape literal byte escapes, NFC-normalise, collapse whitespace, cap the length.

    ``None``/NaN become the empty string (the caller decides whether that rejects the row).
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    s = unicodedata.normalize("NFC", unescape_bytes(str(text)))
    s = _WS.sub(" ", s).strip()
    return s[:max_chars]


def lexical_form(text: str) -> str:
    """Lower-cased, punctuation-free form used by the lexical (TF-IDF) signal only."""
    return _WS.sub(" ", _NON_WORD.sub(" ", text.lower())).strip()


def clean_titles(titles: pd.Series, max_chars: int = 1000) -> pd.Series:
    return titles.map(lambda t: clean_title(t, max_chars)).astype("string")
