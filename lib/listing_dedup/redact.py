"""Secrets out of what the job records and prints: the ``runs`` row, the logs, the summary
and the one-line error on stderr.

What is redacted (the value replaced by :data:`REDACTED`, the key or scheme kept):

- the value of a key matching :data:`SECRET_KEY`: Spark's own default ``spark.redaction.regex``
  (``(?i)secret|password|token|access[.]?key``) plus the other credential key names of the
  object stores and JDBC (``account.key`` for Azure, ``credential``, ``passwd``, ``sas``,
  ``signature``, ``private.key``, ``auth``): in a mapping (a conf dict, at any depth: a
  matching key hides its whole value) and in free text written as ``key=value``,
  ``key: value`` or ``"key": "value"``;
- the user information of a URI (``s3://AKIA...:secret@bucket/p`` -> ``s3://<redacted>@bucket/p``,
  ``https://user:pass@host``), whatever the scheme;
- the value of a URI query parameter whose name matches :data:`SECRET_KEY` or is ``sig`` /
  ``signature`` (Azure SAS, presigned S3 URLs).

Pure functions, no I/O: :func:`redact_text`, :func:`redact_mapping`, :func:`redact_json`;
:class:`RedactingFilter` applies :func:`redact_text` to log records (message and traceback).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "*********(redacted)"  # Spark's own replacement text

# Spark's default spark.redaction.regex, then the credential key names it does not cover
SPARK_REDACTION_REGEX = r"secret|password|token|access[.]?key"
SECRET_KEY = re.compile(
    SPARK_REDACTION_REGEX + r"|passwd|account[.]key|credential|(?:^|[._-])sas(?:$|[._-])|signature"
    r"|private[._-]?key|(?:^|[._-])auth(?:$|[._-])",
    re.IGNORECASE,
)
_QUERY_SECRET = re.compile(r"^(?:sig|signature)$", re.IGNORECASE)

# scheme://userinfo@ : the userinfo is everything up to the last '@' before the host part
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@?#\"']+)@")
# ?name=value / &name=value in a URI
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#\s\"']*)")
# key=value, key: value, "key": "value", 'key'='value' (key with dots, dashes, underscores)
_KEY_VALUE = re.compile(
    r"(?P<key>[\"']?[A-Za-z0-9_.\-]+[\"']?)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;&}\])\"']+)"
)


def is_secret_key(key: str) -> bool:
    """Whether a conf or parameter name holds a secret (:data:`SECRET_KEY`)."""
    return bool(SECRET_KEY.search(str(key)))


def redact_text(text: str) -> str:
    """``text`` with URI credentials, secret query parameters and ``key=value`` secrets replaced."""
    if not text:
        return text
    out = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)

    def query(m: re.Match) -> str:
        name = m["name"]
        if is_secret_key(name) or _QUERY_SECRET.match(name):
            return f"{m['lead']}{name}={REDACTED}"
        return m.group(0)

    out = _QUERY_PARAM.sub(query, out)

    def key_value(m: re.Match) -> str:
        key = m["key"].strip("\"'")
        if not is_secret_key(key) or REDACTED in m["value"]:
            return m.group(0)
        quote = m["value"][0] if m["value"][:1] in ("'", '"') else ""
        return f"{m['key']}{m['sep']}{quote}{REDACTED}{quote}"

    return _KEY_VALUE.sub(key_value, out)


def redact_mapping(value: Any) -> Any:
    """A copy of a (nested) conf value: under a secret key the whole value is :data:`REDACTED`,
    every other string goes through :func:`redact_text`."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) else redact_mapping(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_mapping(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_json(text: str) -> str:
    """A JSON document redacted as :func:`redact_mapping` (sorted keys); text that is not JSON
    goes through :func:`redact_text`."""
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return redact_text(text)
    return json.dumps(redact_mapping(doc), sort_keys=True)


class RedactingFilter(logging.Filter):
    """A handler filter: each record's message (arguments merged) and traceback redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler
            return True
        record.msg, record.args = redact_text(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to each handler of ``logger`` (default: the root logger),
    once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
