"""Perceptual hashes of listing images (64-bit pHash, 16 hex characters).

The hashes are ``imagehash.phash`` with its defaults (hash size 8, high-frequency factor 4:
grey-scale, resize to 32 x 32, 2-D DCT, the top-left 8 x 8 block thresholded at its median),
written as ``str(hash)``: the same as the ``image_phash`` column of the Shopee data.

Public API
----------
``phash_hex(image) -> str``
    The 16-hex-character pHash of a decoded ``PIL.Image``.
``hex_to_bits(hexes) -> np.ndarray``
    uint8 (n, 8): the 64 bits of each hash, packed 8 per byte, ready for a FAISS binary index
    (``faiss.IndexBinaryFlat(64)``); a ``ValueError`` names the first hash that is not 16 hex.
``hamming(a, b) -> int | np.ndarray``
    Bits that differ, row by row; ``a`` and ``b`` are hex strings, sequences of them or
    arrays from :func:`hex_to_bits` (one side may be a single hash).
``inspect_images(images, phashes, root="") -> pd.DataFrame``
    One decode per present image (a path below ``root``: an :class:`ImageRoots` or one folder;
    or bytes): columns ``error``
    (the reason from :func:`listing_dedup.ingest.images.load_image`, null when the image decodes)
    and ``phash`` (the given hash when there is one, else computed from the decoded image,
    else null). The reader calls it once per row, so validating an image and hashing it
    cost one decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.ingest.images import ImageRoots, load_image

HASH_BYTES = 8
HASH_BITS = 64

# popcount of every byte value
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phash_hex(image: Any) -> str:
    """``str(imagehash.phash(image))``: 16 lower-case hex characters."""
    import imagehash

    return str(imagehash.phash(image))


def hex_to_bits(hexes: str | Sequence[str] | pd.Series) -> np.ndarray:
    """Pack 16-hex-character hashes into a uint8 (n, 8) array (byte i = hex chars 2i, 2i+1)."""
    if isinstance(hexes, str):
        hexes = [hexes]
    values = list(hexes)
    out = np.empty((len(values), HASH_BYTES), dtype=np.uint8)
    for i, h in enumerate(values):
        try:
            if not isinstance(h, str) or len(h.strip()) != 2 * HASH_BYTES:
                raise ValueError
            out[i] = np.frombuffer(bytes.fromhex(h.strip()), dtype=np.uint8)
        except ValueError:
            raise ValueError(f"not a 16-hex-character hash at row {i}: {h!r}") from None
    return out


def _as_bits(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x.reshape(-1, HASH_BYTES)
    return hex_to_bits(x)


def hamming(a: Any, b: Any) -> int | np.ndarray:
    """Hamming distances between hashes, row by row (an int when both sides are one hash)."""
    scalar = isinstance(a, str) and isinstance(b, str)
    x, y = _as_bits(a), _as_bits(b)
    if len(x) != len(y) and 1 not in (len(x), len(y)):
        raise ValueError(f"cannot pair {len(x)} hashes with {len(y)}")
    d = _POPCOUNT[np.bitwise_xor(x, y)].sum(axis=1, dtype=np.int64)
    return int(d[0]) if scalar else d


def inspect_images(images: pd.Series, phashes: pd.Series, root: str | ImageRoots = "") -> pd.DataFrame:
    """Decode every present image once: its ``error`` and its ``phash`` (given, or computed)."""
    out_hash: list[str | None] = []
    out_err: list[str | None] = []
    for value, given in zip(images, phashes, strict=True):
        given = given.strip() if isinstance(given, str) and given.strip() else None
        if value is None or (isinstance(value, str) and not value.strip()):
            out_hash.append(given)
            out_err.append(None)
            continue
        result = load_image(value, root)
        out_err.append(result.error)
        out_hash.append(given or (phash_hex(result.image) if result.ok else None))
    return pd.DataFrame({"phash": out_hash, "error": out_err}, index=images.index)
