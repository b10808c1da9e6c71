"""Load listing images: pure functions over one value, used by ingest (to check that images
decode), by the image signals (embedding, pHash) and by the embeddings cache (image digests).

    roots = ImageRoots.build("/data/catalog")         # where image files may be read from
    result = load_image("imgs/a.jpg", roots)          # or load_image(b"\\xff\\xd8...", roots)
    if result.ok:
        result.image          # a fully decoded RGB ``PIL.Image.Image``
    else:
        result.error          # one of IMAGE_ERRORS

An ``image`` value is either raw encoded bytes (a Parquet ``binary`` column) or a path (a
``string`` column). The input is not trusted, so a path is only ever read **under the image
roots** (:class:`ImageRoots`): ``input.image_root`` (or the input folder when that is empty)
and the extra roots of ``input.image_roots``, from the conf, never from the data.

- A relative path is joined to the first root; after normalisation it must stay below it
  (``imgs/../a.jpg`` is fine, ``../secret.jpg`` is not).
- An absolute path (or a ``file://`` URI) is read only when it lies below a local root, after
  resolving symbolic links (a link under the root that points elsewhere is outside).
- A URI (``s3://``, ``hdfs://``, ...) is read only when it lies below a root with the same
  scheme and authority; its filesystem is built from the *root* (the conf), so options in
  the data never reach pyarrow. A URI value holding ``?`` or ``#`` is refused outright.
- Anything else is ``image_outside_roots`` and is never opened (nor stat'ed: the rejects
  table does not tell which files exist outside the roots).

Errors returned as ``ImageResult.error`` (the row is at fault):

``no_image``
    the value is null, empty or only whitespace.
``image_outside_roots``
    the path or URI does not lie below an image root (see above).
``missing_image_file``
    the path does not exist, is not a regular file, or cannot name a file (too long, NUL).
``image_too_large``
    the file (or the bytes value) holds more than ``ImageRoots.max_bytes`` bytes
    (``input.max_image_bytes``): checked from the file's size before it is read.
``unreadable_image``
    the bytes are not an image Pillow can decode completely: a non-image file, a truncated
    or corrupt JPEG, an image over ``max_pixels``.

Storage failures are not the row's fault and raise :class:`listing_dedup.errors.StorageError`
(the run fails with exit 1, a retry may pass): a permission denied on a file under a root (the
deployment's permissions, not the data), an I/O or network error, an image root that does not
exist where the file should be.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import posixpath
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from listing_dedup.errors import ConfigError, StorageError

NO_IMAGE = "no_image"
IMAGE_OUTSIDE_ROOTS = "image_outside_roots"
MISSING_IMAGE_FILE = "missing_image_file"
IMAGE_TOO_LARGE = "image_too_large"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_ERRORS = (NO_IMAGE, IMAGE_OUTSIDE_ROOTS, MISSING_IMAGE_FILE, IMAGE_TOO_LARGE, UNREADABLE_IMAGE)

MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs), about 8000 x 8000
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # input.max_image_bytes' default

# errno values that say the *path* cannot name a file (the data's fault), not that storage failed
_BAD_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL}


class ImageTooLarge(Exception):
    """A file over the byte limit (raised by :func:`_read_bytes` before reading it)."""


@dataclass(frozen=True)
class ImageResult:
    image: Any = None  # PIL.Image.Image (mode RGB) when the image decoded, else None
    error: str | None = None  # one of IMAGE_ERRORS when it did not, else None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Location:
    """A file below a root: ``path`` is a real local path (``root`` is local) or the path
    inside the root's filesystem (``root`` is a URI)."""

    root: str
    path: str

    @property
    def local(self) -> bool:
        return _is_local_root(self.root)


@dataclass(frozen=True)
class ImageRoots:
    """Where image files may be read from (local folders or URI prefixes; the first one is
    the base of relative paths) and how large they may be. Picklable: the pandas UDFs carry it."""

    roots: tuple[str, ...] = ()
    max_bytes: int = MAX_IMAGE_BYTES

    @classmethod
    def build(cls, root: str, extra: Sequence[str] = (), max_bytes: int = MAX_IMAGE_BYTES) -> ImageRoots:
        roots = tuple(_normal_root(r) for r in (root, *extra) if r and r.strip())
        return cls(roots=tuple(dict.fromkeys(roots)), max_bytes=max_bytes)

    @classmethod
    def of(cls, root: str | ImageRoots) -> ImageRoots:
        """``root`` as is, or a single root folder with the default byte limit."""
        return root if isinstance(root, ImageRoots) else cls.build(root or "")

    def locate(self, value: str) -> Location | str:
        """Where the path ``value`` lies below a root, or the reason it may not be read
        (``image_outside_roots``, ``missing_image_file``). Touches no storage except local
        ``realpath`` (symbolic links are resolved before the root check)."""
        value = value.strip()
        if "\x00" in value:
            return MISSING_IMAGE_FILE
        if "://" in value:
            try:
                parts = urlsplit(value) if _plain_uri(value) else None
            except ValueError:  # an unbalanced "[" in the authority
                parts = None
            if parts is None:
                return IMAGE_OUTSIDE_ROOTS
            if parts.scheme.lower() == "file":
                if parts.netloc not in ("", "localhost"):
                    return IMAGE_OUTSIDE_ROOTS
                return self._local_absolute(parts.path)
            return self._remote(parts.scheme.lower(), parts.netloc, parts.path)
        if value.startswith("/"):
            return self._local_absolute(value)
        if not self.roots:
            return IMAGE_OUTSIDE_ROOTS
        rel = posixpath.normpath(value)
        if rel == ".." or rel.startswith("../"):
            return IMAGE_OUTSIDE_ROOTS
        root = self.roots[0]
        if _is_local_root(root):
            return self._local_absolute(root + "/" + rel)
        base = _split_root(root)
        return Location(root, base.inner.rstrip("/") + "/" + rel) if rel != "." else MISSING_IMAGE_FILE

    def _local_absolute(self, path: str) -> Location | str:
        if not path.startswith("/"):
            return IMAGE_OUTSIDE_ROOTS
        real = os.path.realpath(posixpath.normpath(path))
        for root in self.roots:
            if _is_local_root(root):
                base = _real_root(root)
                if real == base or real.startswith(base.rstrip("/") + "/"):
                    return Location(root, real)
        return IMAGE_OUTSIDE_ROOTS

    def _remote(self, scheme: str, netloc: str, path: str) -> Location | str:
        norm = posixpath.normpath(path or "/")
        for root in self.roots:
            if _is_local_root(root):
                continue
            base = _split_root(root)
            if (base.scheme, base.netloc) != (scheme, netloc):
                continue
            prefix = base.path.rstrip("/")
            if norm == prefix or norm.startswith(prefix + "/"):
                rel = norm[len(prefix) :].lstrip("/")
                return Location(root, base.inner.rstrip("/") + "/" + rel) if rel else MISSING_IMAGE_FILE
        return IMAGE_OUTSIDE_ROOTS


def _plain_uri(value: str) -> bool:
    """A URI with no options (query, fragment) and no control characters or spaces."""
    return not any(c in value for c in "?#\\") and all(c.isprintable() and not c.isspace() for c in value)


def _is_local_root(root: str) -> bool:
    return "://" not in root


def _normal_root(root: str) -> str:
    root = root.strip()
    if root.startswith("file://"):
        root = root[len("file://") :]
    if _is_local_root(root):
        return os.path.abspath(root)
    return root.rstrip("/") if not root.endswith(":///") else root


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


@dataclass(frozen=True)
class _RemoteRoot:
    scheme: str
    netloc: str
    path: str  # the root's path part, normalised ("/prefix")
    inner: str  # the root's path inside its filesystem (pyarrow's ``from_uri``)


@functools.lru_cache(maxsize=64)
def _split_root(root: str) -> _RemoteRoot:
    parts = urlsplit(root)
    scheme, netloc = parts.scheme.lower(), parts.netloc
    path = posixpath.normpath(parts.path or "/")
    # the inner path the way pyarrow names it: object stores prefix the bucket, others the path
    inner = f"{netloc}{path}" if scheme in ("s3", "s3a", "gs", "gcs") else path
    return _RemoteRoot(scheme, netloc, path, inner.rstrip("/") or "/")


_FILESYSTEMS: dict[str, Any] = {}


def _filesystem(root: str) -> Any:
    """The pyarrow filesystem of a URI root, built from the root (with its options, from the
    conf) once per process."""
    fs = _FILESYSTEMS.get(root)
    if fs is None:
        from pyarrow import fs as pafs

        try:
            fs, _ = pafs.FileSystem.from_uri(root)
        except (ValueError, NotImplementedError, ImportError) as e:  # the conf's root, not the data
            raise ConfigError(f"image root {root}: pyarrow cannot open it: {' '.join(str(e).split())}"[:500]) from None
        _FILESYSTEMS[root] = fs
    return fs


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


def image_roots_for(input_path: str, cfg: Any) -> ImageRoots:
    """The image roots of a run: ``cfg.image_root`` (or the input folder), then
    ``cfg.image_roots``; byte limit ``cfg.max_image_bytes`` (``cfg``: an ``InputConf``)."""
    return ImageRoots.build(
        image_root_for(input_path, cfg.image_root), tuple(cfg.image_roots), max_bytes=cfg.max_image_bytes
    )


def _read_bytes(loc: Location, max_bytes: int) -> bytes:
    """The file's bytes: the one function that opens image files. ``FileNotFoundError`` when
    it is missing or not a regular file, :class:`ImageTooLarge` when its size is over
    ``max_bytes`` (checked before reading), any other ``OSError`` as raised."""
    if loc.local:
        # O_NONBLOCK: a FIFO under the root must not hang the open; it is refused as not a file
        fd = os.open(loc.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a regular file", loc.path)
            if st.st_size > max_bytes:
                raise ImageTooLarge(loc.path)
            data = f.read(max_bytes + 1)  # the file may have grown since the stat
    else:
        from pyarrow import fs as pafs

        filesystem = _filesystem(loc.root)
        info = filesystem.get_file_info(loc.path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(errno.ENOENT, "not a file", loc.path)
        if info.size is not None and info.size > max_bytes:
            raise ImageTooLarge(loc.path)
        with filesystem.open_input_stream(loc.path) as f:
            data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(loc.path)
    return data


def _root_missing(loc: Location) -> bool:
    """True when the root itself is not there (an unmounted volume, a wrong bucket)."""
    if loc.local:
        return not os.path.isdir(_real_root(loc.root))
    from pyarrow import fs as pafs

    return _filesystem(loc.root).get_file_info(_split_root(loc.root).inner).type == pafs.FileType.NotFound


def _storage_error(loc: Location, e: BaseException) -> StorageError:
    where = loc.path if loc.local else f"{loc.root} ({loc.path})"
    cause = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
    return StorageError(f"cannot read image file {where}: storage error (not the input's fault): {cause}"[:1000])


def read_image_bytes(value: Any, root: str | ImageRoots = "") -> tuple[bytes | None, str | None]:
    """The encoded bytes of one ``image`` value (bytes as they are, a path read below the
    roots), or ``(None, reason)`` with one of :data:`IMAGE_ERRORS` except ``unreadable_image``.
    Raises :class:`StorageError` when storage fails (see the module doc)."""
    roots = ImageRoots.of(root)
    if value is None:
        return None, NO_IMAGE
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            return None, NO_IMAGE
        return (None, IMAGE_TOO_LARGE) if len(data) > roots.max_bytes else (data, None)
    if not isinstance(value, str) or not value.strip():
        return None, NO_IMAGE
    try:
        loc = roots.locate(value)
    except ValueError:  # a path the OS cannot take (an unpaired surrogate)
        return None, MISSING_IMAGE_FILE
    if isinstance(loc, str):
        return None, loc
    try:
        return _read_bytes(loc, roots.max_bytes), None
    except ImageTooLarge:
        return None, IMAGE_TOO_LARGE
    except ValueError:  # a path pyarrow or the OS cannot take (pyarrow.ArrowInvalid is a ValueError)
        return None, MISSING_IMAGE_FILE
    except PermissionError as e:  # the deployment's permissions under a root: fail the run
        raise _storage_error(loc, e) from None
    except OSError as e:
        if isinstance(e, FileNotFoundError) or e.errno in _BAD_PATH_ERRNOS:
            try:
                missing_root = _root_missing(loc)
            except (OSError, ValueError) as e2:
                raise _storage_error(loc, e2) from None
            if missing_root:
                raise StorageError(
                    f"image root {loc.root} does not exist (an unmounted volume or a wrong bucket?): "
                    "storage error (not the input's fault)"
                ) from None
            return None, MISSING_IMAGE_FILE
        raise _storage_error(loc, e) from None


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
    except (
        OSError,
        SyntaxError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        EOFError,
        MemoryError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ):
        # UnidentifiedImageError is an OSError; truncated data raises OSError on load(); Pillow's
        # plugins raise the others on some malformed headers
        return ImageResult(error=UNREADABLE_IMAGE)


def load_image(value: str | bytes | bytearray | memoryview | None, root: str | ImageRoots = "") -> ImageResult:
    """Load one ``image`` value (a path below the roots, or raw encoded bytes) into a decoded
    RGB image, or say why not (see the module doc). ``root``: the :class:`ImageRoots`, or one
    root folder."""
    data, error = read_image_bytes(value, root)
    if error is not None:
        return ImageResult(error=error)
    return decode_image(data)
