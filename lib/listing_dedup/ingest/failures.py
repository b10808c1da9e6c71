"""What a failed read of the input means: the input's fault (:class:`InputError`, exit 2) or
storage's (:class:`StorageError`, exit 1: a retry may pass). Pure Python (no pyspark import), so
:mod:`listing_dedup.runtime` can classify any command's failure with it.

``read_error(path, e)``
    a failure of the driver's first read (the path, the footers).
``job_failure(e)``
    a failure Spark reports from a task, recognised from its text (a Java error through py4j
    carries its whole cause chain; a Python worker's error its traceback):

    - a :class:`DedupError` raised in a Python worker (``listing_dedup.errors.StorageError: ...``
      in the text): that error, with its message;
    - an input check that fired inside a query (``raise_error`` with :data:`BAD_INPUT`): an
      :class:`InputError` with its message (a field that is not valid UTF-8, naming the file,
      row and column);
    - ``FAILED_READ_FILE`` (Spark's error for one input file): a storage cause is a
      :class:`StorageError`; a column whose type differs from the first file's, a corrupt
      file: an :class:`InputError` naming the file (and the column);
    - else None (the caller treats it as a runtime failure).
"""

from __future__ import annotations

import os
import re

from listing_dedup import errors
from listing_dedup.errors import DedupError, InputError, StorageError, first_line

# The prefix of the messages of the input checks that fire inside Spark queries (raise_error)
BAD_INPUT = "listing-dedup bad input: "

# Signs, anywhere in an error's text (a Java error through py4j carries its whole cause chain),
# that storage, the network or credentials failed rather than the input: such a read exits 1
# (a retry may pass), not 2. A missing path or a file that is not Parquet has none of them.
STORAGE_SIGNS = (
    "java.net.",  # ConnectException, SocketTimeoutException, UnknownHostException, ...
    "java.nio.file.AccessDeniedException",
    "org.apache.hadoop.security.AccessControlException",
    "org.apache.hadoop.security.token.",  # expired or invalid delegation tokens
    "java.io.InterruptedIOException",
    "org.apache.hadoop.fs.s3a.",  # S3A errors (auth, throttling, connection) and a missing S3A jar
    "com.amazonaws.",
    "software.amazon.awssdk.",
    "com.google.cloud.hadoop.",
    "com.microsoft.azure.",
    "Permission denied",
    "Access Denied",
    "Connection refused",
    "Connection reset",
    "Filesystem closed",
)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def read_error(path: str, e: BaseException) -> DedupError:
    """The error for a failed read of the input: :class:`StorageError` (exit 1) when storage or
    credentials failed (an ``OSError`` other than a missing file, or a Java error with one of
    :data:`STORAGE_SIGNS`), else :class:`InputError` (exit 2: a missing path, a file that is
    not Parquet). One line either way, naming the cause."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return InputError(f"input path does not exist: {path}")
    if isinstance(e, OSError):
        return StorageError(f"cannot read input at {path}: storage error (not the input's fault): {_os_cause(e)}")
    text = str(e)
    for p in {path, path.removeprefix("file://"), os.path.abspath(path) if _is_local(path) else path}:
        text = text.replace(p, "<input>")  # a sign inside the path itself says nothing
    sign = next((s for s in STORAGE_SIGNS if s in text), None)
    if sign is not None:
        cause = _cause_from(text, sign).replace("<input>", path)
        return StorageError(f"cannot read input at {path}: storage error (not the input's fault): {cause}")
    return InputError(f"cannot read input Parquet at {path}: {first_line(e)}")


def _os_cause(e: OSError) -> str:
    return f"{type(e).__name__}: {e.strerror or first_line(e)}" + (f" ({e.filename})" if e.filename else "")


def _cause_from(text: str, sign: str) -> str:
    """The first line of ``text`` holding ``sign`` (a Java exception: class and message)."""
    line = next(ln for ln in text.splitlines() if sign in ln).strip()
    return " ".join(line.removeprefix("Caused by:").removeprefix(":").split())[:500]


_WORKER_ERROR = re.compile(r"^\s*listing_dedup\.errors\.(\w+): (.*)$", re.M)
_RAISED = re.compile(r"\[USER_RAISED_EXCEPTION\] " + re.escape(BAD_INPUT) + r"(.*?)(?: SQLSTATE: \w+)?\s*$", re.M)
_FAILED_READ = re.compile(r"\[FAILED_READ_FILE\.(\w+)\] Encountered error while reading file (.+?)\.\s+(.*)$", re.M)
_TYPE_MISMATCH = re.compile(
    r"Parquet column \[(.*?)\]\. Expected Spark type (\S+), actual Parquet type (\S+?)\.?(\s|$)"
)


def job_failure(e: BaseException) -> DedupError | None:
    """The project error a failed Spark job stands for, or None (see the module doc)."""
    text = str(e)
    m = _WORKER_ERROR.search(text)
    if m is not None:
        cls = getattr(errors, m.group(1), None)
        if isinstance(cls, type) and issubclass(cls, DedupError):
            return cls(m.group(2).strip())
    m = _RAISED.search(text)
    if m is not None:
        return InputError(m.group(1).strip())
    m = _FAILED_READ.search(text)
    if m is None:
        return None
    kind, file, rest = m.group(1), m.group(2), m.group(3)
    shown = re.sub(r"^file:(//)?", "", file)  # a local file as its path
    sign = next((s for s in STORAGE_SIGNS if s in text.replace(file, "<file>")), None)
    if sign is not None:
        cause = _cause_from(text.replace(file, "<file>"), sign).replace("<file>", file)
        return StorageError(f"cannot read input file {shown}: storage error (not the input's fault): {cause}")
    if kind == "FILE_NOT_EXIST":  # deleted while the job ran (an extract being rewritten): retry
        return StorageError(
            f"input file {shown} disappeared while the job read it (rewritten upstream?): {first_line(e)}"
        )
    t = _TYPE_MISMATCH.search(text)
    if t is not None:
        return InputError(
            f"input file {shown}: column '{t.group(1)}' is {t.group(3)}, not {t.group(2)} as in the other input "
            "files (every input file must give its columns the same types)"
        )
    cause = next(
        (
            ln.strip().removeprefix("Caused by:").strip()
            for ln in text.splitlines()
            if ln.strip().startswith("Caused by:")
        ),
        rest.strip() or kind,
    )
    return InputError(f"input file {shown} cannot be read as Parquet ({kind}): {' '.join(cause.split())[:300]}")
