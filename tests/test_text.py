import pandas as pd
from listing_dedup.ingest.titles import clean_title, clean_titles, lexical_form, unescape_bytes


def test_unescape_literal_utf8_runs():
    assert unescape_bytes("Kaos \\xe2\\x9c\\x85 Murah") == "Kaos \u2705 Murah"
    assert unescape_bytes("no escapes here") == "no escapes here"
    # an invalid byte sequence becomes the replacement character, not an exception
    assert unescape_bytes("bad \\xff end") == "bad \ufffd end"
    # a backslash not followed by xNN is left alone
    assert unescape_bytes("path\\x1 and \\n") == "path\\x1 and \\n"


def test_clean_title_whitespace_none_and_cap():
    assert clean_title("  Paper   Bag\tVictoria\nSecret ") == "Paper Bag Victoria Secret"
    assert clean_title(None) == ""
    assert clean_title(float("nan")) == ""
    assert clean_title("x" * 5000, max_chars=100) == "x" * 100


def test_clean_titles_series():
    out = clean_titles(pd.Series(["a  b", None, "\\xc3\\xa9t\\xc3\\xa9"]))
    assert out.tolist() == ["a b", "", "\u00e9t\u00e9"]


def test_lexical_form():
    assert lexical_form("PAPERBAG V.S. Original!! 100%") == "paperbag v s original 100"
