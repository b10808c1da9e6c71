"""The project's exception hierarchy.

Entry points in ``jobs/`` map these to exit codes: ``ConfigError`` and ``InputError``
mean the caller gave something wrong (exit 2), anything else is a runtime failure (exit 1):
``StorageError`` (storage or credentials failed, not the data's fault: a retry may pass) and
``RunRecordError`` (the data tables committed, the ``runs`` row did not) among them.
Library code raises; it never logs an error and returns None.
"""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (Java errors through py4j span hundreds; their
    first line, py4j's ``An error occurred while calling o42.parquet.``, is skipped)."""
    lines = [line.strip() for line in str(e).strip().splitlines()]
    if len(lines) > 1 and lines[0].startswith("An error occurred while calling"):
        lines = [lines[1].removeprefix(":").strip(), *lines[2:]]
    return lines[0] if lines and lines[0] else type(e).__name__


class DedupError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(DedupError):
    """A configuration file, key or value is wrong."""

    exit_code = 2


class InputError(DedupError):
    """The input data cannot be used (missing path, wrong schema, unreadable file)."""

    exit_code = 2


class ModelError(DedupError):
    """A model could not be loaded from the configured path or package."""

    exit_code = 1


class SinkError(DedupError):
    """Writing or committing an output table failed."""

    exit_code = 1


class StorageError(DedupError):
    """Storage, network or credentials failed while reading or writing: not the input's fault
    (unlike a missing path or a file that is not Parquet), so a retry may succeed."""

    exit_code = 1


class RunRecordError(SinkError):
    """The data tables of a run were committed but its ``runs`` row was not: the data is good,
    its audit row is missing; a rerun of the date redoes it idempotently and records it."""

    exit_code = 1
