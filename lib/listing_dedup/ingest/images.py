"""Load listing images: a pure function over one value, used by ingest (to check that images
decode) and by the image signals (embedding, pHash).

    result = load_image("imgs/a.jpg", root="/data/catalog")   # or load_image(b"\\xff\\xd8...", "")
    if result.ok:
        result.image          # a fully decoded RGB ``PIL.Image.Image``
    else:
        result.error          # one of IMAGE_ERRORS

An ``image`` value is either raw encoded bytes (a Parquet ``binary`` column) or a path
(a ``string`` column). A relative path is joined to ``root``: ``input.image_root`` when set,
otherwise the folder of the input Parquet (see :func:`image_root_for`). Absolute paths and
URIs (``file://``, ``s3://``, ``hdfs://``, ... through pyarrow's filesystems) are used as
they are.

Errors (never raised, returned as ``ImageResult.error``):

``no_image``
    the value is null, empty or only whitespace.
``missing_image_file``
    the path does not exist (or is a folder).
``unreadable_image``
    the bytes are not an image Pillow can decode completely: a non-image file, a truncated
    or corrupt JPEG, an image over ``max_pixels``.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

NO_IMAGE = "no_image"
MISSING_IMAGE_FILE = "missing_image_file"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_ERRORS = (NO_IMAGE, MISSING_IMAGE_FILE, UNREADABLE_IMAGE)

MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs), about 8000 x 8000


@dataclass(frozen=True)
class ImageResult:
    image: Any = None  # PIL.Image.Image (mode RGB) when the image decoded, else None
    error: str | None = None  # one of IMAGE_ERRORS when it did not, else None

    @property
    def ok(self) -> bool:
        return self.error is None


def image_root_for(input_path: str, image_root: str = "") -> str:
    """The folder relative ``image`` paths are resolved against: ``image_root`` when set,
    else the input folder (an input *file*'s parent folder)."""
    if image_root:
        return image_root
    if "://" in input_path and not input_path.startswith("file://"):
        base = input_path.rstrip("/")
        return base if not base.endswith(".parquet") else base.rsplit("/", 1)[0]
    local = input_path[len("file://") :] if input_path.startswith("file://") else input_path
    return local if os.path.isdir(local) else os.path.dirname(os.path.abspath(local))


def resolve_image_path(path: str, root: str) -> str:
    """``path`` joined to ``root`` unless it is absolute or a URI."""
    path = path.strip()
    if "://" in path or os.path.isabs(path) or not root:
        return path
    return root.rstrip("/") + "/" + path


def _read_bytes(path: str) -> bytes:
    """The file's bytes; ``FileNotFoundError`` when it is missing or not a file."""
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(path)
        if filesystem.get_file_info(inner).type != pafs.FileType.File:
            raise FileNotFoundError(path)
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    local = path[len("file://") :] if path.startswith("file://") else path
    if not os.path.isfile(local):
        raise FileNotFoundError(local)
    with open(local, "rb") as f:
        return f.read()


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageResult:
    """Decode encoded image bytes completely into an RGB image (no partial images)."""
    from PIL import Image, ImageFile

    if not data:
        return ImageResult(error=NO_IMAGE)
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, not a grey half-image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    return ImageResult(error=UNREADABLE_IMAGE)
                img.load()
                return ImageResult(image=img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        # UnidentifiedImageError is an OSError; truncated data raises OSError on load()
        return ImageResult(error=UNREADABLE_IMAGE)


def load_image(value: str | bytes | bytearray | memoryview | None, root: str = "") -> ImageResult:
    """Load one ``image`` value (a path relative to ``root``, an absolute path or URI, or raw
    encoded bytes) into a decoded RGB image, or say why not (see the module doc)."""
    if value is None:
        return ImageResult(error=NO_IMAGE)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image(bytes(value))
    if not isinstance(value, str) or not value.strip():
        return ImageResult(error=NO_IMAGE)
    try:
        data = _read_bytes(resolve_image_path(value, root))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return ImageResult(error=MISSING_IMAGE_FILE)
    except OSError:  # permission denied, I/O error: the file is there but cannot be read
        return ImageResult(error=UNREADABLE_IMAGE)
    return decode_image(data)
