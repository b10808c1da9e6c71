"""The project's exception hierarchy.

Entry points in ``jobs/`` map these to exit codes: ``ConfigError`` and ``InputError``
mean the caller gave something wrong (exit 2), anything else is a runtime failure (exit 1).
Library code raises; it never logs an error and returns None.
"""


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
