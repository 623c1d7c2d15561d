"""Sovrium: a self-hosted, configuration-driven backend over one SQLite file.

Write one YAML file describing tables, fields, permissions and views, then run

    sovrium start app.yaml

to serve a complete REST API under /api (records with validation, filtering and pagination,
trash, history, views, ...). Or embed it:

    import sovrium
    app = sovrium.App("app.yaml", db_path="app.db")
    app.table("tasks").create({"title": "Write launch notes"})

The HTTP contract is API.md, the configuration CONFIG.md, the runtime OPERATIONS.md.

Sections (``grep -n '^# [0-9].*####' sovrium.py``):

    1. Settings and constants      10. Permissions
    2. Errors                      11. Query compiler
    3. Utilities                   12. Records (lists, writes, batch, trash, history, comments,
    4. Values and time                 views, activity)
    5. Configuration loading       13. Accounts and sessions (/api/auth)
    6. Formula language            14. Analytics
    7. Configuration: validation,  15. Application and embedding API
       normalization, schema model 16. HTTP layer (the only section that knows the web framework)
    8. Storage                     17. Server and CLI
    9. Authentication
"""

import base64
import collections
import contextlib
import copy
import datetime
import email.message
import email.utils
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import secrets
import signal
import smtplib
import socket
import sys
import threading
import time
import traceback
import unicodedata
import urllib.parse
import uuid
import zoneinfo

import apsw
import argon2
import yaml

__version__ = "0.1.0"

__all__ = [
    "__version__", "main", "App", "load_config", "validate_config", "ConfigError", "StartupError",
    "ApiError", "ValidationError", "UnauthorizedError", "ForbiddenError", "NotFoundError",
    "MethodNotAllowedError", "ConflictError", "PayloadTooLargeError", "RateLimitedError",
    "ServiceUnavailableError", "InternalError",
]

###############################################################################
# 1. Settings and constants ###################################################
###############################################################################

SCHEMA_VERSION = 1                     # PRAGMA user_version written by schema.sql
APPLICATION_ID = 1397708370            # 0x534F5652, "SOVR"
MAX_SAFE_INTEGER = 9007199254740991
BUSY_BUDGET_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 10.0
HOUSEKEEPING_FIRST_DELAY = 60.0
HOUSEKEEPING_INTERVAL = 3600.0
HOUSEKEEPING_BATCH = 500
WAITRESS_BODY_BACKSTOP = 65536

DEFAULT_SETTINGS = {
    "defaultPageSize": 10,
    "maxPageSize": 1000,
    "batchLimit": 1000,
    "maxBodyBytes": 10485760,
    "queryTimeoutMs": 10000,
    "historyRetentionDays": 0,
    "trashRetentionDays": 0,
    "trustedOrigins": [],
}
RATE_LIMIT_DEFAULTS = {
    "signIn": (20, 60), "signInAccount": (10, 900), "signUp": (20, 60), "emailSend": (10, 60),
    "emailSendAccount": (5, 3600), "tokenVerify": (30, 60), "authAdmin": (60, 60),
    "schemaAdmin": (120, 60), "collect": (120, 60), "api": (0, 60),
}
IGNORED_TOP_LEVEL_KEYS = (
    "badge", "theme", "languages", "components", "pages", "forms", "palette", "llms", "scripts",
    "systemSources", "connections", "env", "actions", "automations", "agents", "buckets",
)
BUILTIN_ROLES = ("admin", "member", "viewer")
PSEUDO_FIELDS = {"id": "id", "createdAt": "created_at", "updatedAt": "updated_at",
                 "createdBy": "created_by", "updatedBy": "updated_by",
                 "deletedAt": "deleted_at", "deletedBy": "deleted_by"}

###############################################################################
# 2. Errors ###################################################################
###############################################################################


class ApiError(Exception):
    """An error with an HTTP status, a code and a message; the one envelope renders it."""

    status = 500
    code = "INTERNAL_ERROR"
    default_message = "An unexpected error occurred"

    def __init__(self, *args, errors=None, status=None, code=None, headers=None, reason=None):
        # Two call forms: ApiError(status, code, message, errors=None) (OPERATIONS.md §11.3) and,
        # for the subclasses, ValidationError(message, errors).
        if args and isinstance(args[0], int) and not isinstance(args[0], bool):
            status, code, *rest = args
            message = rest[0] if rest else None
            errors = rest[1] if len(rest) > 1 else errors
        else:
            message = args[0] if args else None
            errors = args[1] if len(args) > 1 else errors
        self.message = message or self.default_message
        super().__init__(self.message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.errors = list(errors) if errors else None
        self.headers = dict(headers or {})
        self.reason = reason

    def __str__(self):
        return self.message

    def envelope(self, request_id=None):
        """The JSON body of API.md §1.11."""
        body = {"success": False, "message": self.message, "code": self.code}
        if self.code == "VALIDATION_ERROR":
            body["errors"] = self.errors or [{"field": "body", "message": self.message}]
        if self.reason:
            body["error"] = self.reason
        if self.status == 500:
            body["requestId"] = request_id
        return body


class ValidationError(ApiError):
    status, code, default_message = 400, "VALIDATION_ERROR", "One or more fields failed validation"

    def __init__(self, message=None, errors=None, **kw):
        if errors and message is None:
            message = errors[0]["message"]
        super().__init__(message, errors=errors, **kw)


class UnauthorizedError(ApiError):
    status, code, default_message = 401, "UNAUTHORIZED", "Authentication required"


class ForbiddenError(ApiError):
    status, code = 403, "FORBIDDEN"
    default_message = "You do not have permission to perform this action"


class NotFoundError(ApiError):
    status, code, default_message = 404, "NOT_FOUND", "Resource not found"


class MethodNotAllowedError(ApiError):
    status, code, default_message = 405, "METHOD_NOT_ALLOWED", "Method not allowed"


class ConflictError(ApiError):
    status, code, default_message = 409, "CONFLICT", "Conflict"


class PayloadTooLargeError(ApiError):
    status, code, default_message = 413, "PAYLOAD_TOO_LARGE", "Payload too large"


class RateLimitedError(ApiError):
    status, code = 429, "RATE_LIMITED"
    default_message = "Too many requests. Please try again later."


class ServiceUnavailableError(ApiError):
    status, code = 503, "SERVICE_UNAVAILABLE"
    default_message = "The database is busy; please retry"

    def __init__(self, message=None, errors=None, **kw):
        super().__init__(message, errors=errors, **kw)
        self.headers.setdefault("Retry-After", "1")


class InternalError(ApiError):
    status, code, default_message = 500, "INTERNAL_ERROR", "An unexpected error occurred"


def field_error(field, message):
    """A one-entry 400 whose message repeats the entry (API.md §1.11)."""
    return ValidationError(message, [{"field": field, "message": message}])


class ConfigError(Exception):
    """Invalid configuration: `.errors` and `.warnings` are lists of {"path", "message"}."""

    def __init__(self, errors, warnings=()):
        self.errors = list(errors)
        self.warnings = list(warnings)
        super().__init__("; ".join(f"{e['path']}: {e['message']}" if e["path"] else e["message"]
                                   for e in self.errors))


class StartupError(Exception):
    """The runtime environment refused to start (database, lease, port); `.exit_code` for the CLI."""

    def __init__(self, message, exit_code=3):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(Exception):
    """Command-line or environment misuse (exit code 2)."""


###############################################################################
# 3. Utilities ################################################################
###############################################################################


def utcnow():
    """The system clock as an aware UTC datetime."""
    return datetime.datetime.now(datetime.timezone.utc)


def new_id():
    """A 32-character [A-Za-z0-9] identifier (users, sessions, ...)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(32))


def dumps(value):
    """Compact JSON text, UTF-8 friendly."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sql_str(text):
    """A SQL string literal; only for identifiers and option values from validated configuration."""
    return "'" + str(text).replace("'", "''") + "'"


def parse_bool_text(text):
    """Booleans of OPERATIONS.md §3: true/false/1/0/yes/no/on/off; None when not one."""
    t = str(text).strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    return None


_INT_PARAM = re.compile(r"^-?[0-9]+$")


def query_int(params, name, lo, hi, default=None):
    """An integer query parameter within [lo, hi] (API.md §1.3)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not _INT_PARAM.fullmatch(raw):
        raise field_error(name, f"Parameter '{name}' must be an integer")
    value = int(raw) if len(raw) <= 20 else (hi + 1 if raw[0] != "-" else lo - 1)
    if not lo <= value <= hi:
        raise field_error(name, f"Parameter '{name}' must be between {lo} and {hi}")
    return value


def query_bool(params, name, default=False):
    """A boolean query parameter: true/false/1/0 (API.md §1.3)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    t = raw.lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise field_error(name, f"Parameter '{name}' must be a boolean")


def paginate_params(params, default_limit, max_limit):
    """limit/offset/page of API.md §1.9 → (limit, offset)."""
    limit = query_int(params, "limit", 1, max_limit, default_limit)
    if params.get("offset") not in (None, "") and params.get("page") not in (None, ""):
        raise field_error("page", "Use either page or offset, not both")
    offset = query_int(params, "offset", 0, MAX_SAFE_INTEGER, 0)
    page = query_int(params, "page", 1, MAX_SAFE_INTEGER // limit + 1, None)
    if page is not None:
        offset = (page - 1) * limit
    return limit, offset


def pagination(limit, offset, count, total):
    """The pagination object of API.md §1.9 (total None with skipTotal)."""
    out = {"page": offset // limit + 1, "limit": limit, "offset": offset, "total": total,
           "totalPages": None if total is None else -(-total // limit)}
    out["hasNextPage"] = (offset + count < total) if total is not None else None
    out["hasPreviousPage"] = offset > 0
    return out


class _JsonTooDeep(ValueError):
    pass


def _check_json_value(value):
    """Nesting ≤ 64 and no lone surrogates (API.md §1.2); iterative so hostile input can't recurse."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("lone surrogate") from None
        elif isinstance(v, (dict, list)):
            if depth > 64:
                raise _JsonTooDeep("too deep")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, item in items:
                if isinstance(k, str):
                    stack.append((k, depth))
                stack.append((item, depth + 1))


def _reject_constant(name):
    raise ValueError(name)


def _finite_float(text):
    f = float(text)
    if math.isinf(f) or math.isnan(f):
        raise ValueError("not finite")
    return f


def parse_json_text(text):
    """Strict JSON of API.md §1.2: no NaN/Infinity, finite numbers, ≤ 4300 digits, depth ≤ 64."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    # Depth and surrogate checks only matter when the text could hold them (cheap C-level counts).
    if text.count("[") + text.count("{") > 64 or "\\ud" in text or "\\uD" in text:
        _check_json_value(value)
    return value

###############################################################################
# 4. Values and time ##########################################################
###############################################################################

# Field values: date/time input, sov_* SQL functions, per-type validation
# (CONFIG.md §5, §6.2; OPERATIONS.md §7.5).

MAX_SAFE_INT = 9007199254740991
MAX_JSON_BYTES = 1048576
MAX_LINKS = 1000

# fullmatch everywhere: `$` would also accept a trailing "\n".
DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?")
TIME_RE = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?")
NUMBER_TEXT_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
URL_RE = re.compile(r"(?i)https?://([^/?#\s]*)\S*")
PHONE_RE = re.compile(r"\+?[0-9 ().-]*")
COLOR_RE = re.compile(r"#[0-9A-Fa-f]{6}")
USER_ID_RE = re.compile(r"[A-Za-z0-9]{32}")
MIME_RE = re.compile(r"[^/\s]+/[^/\s]+")
# Rich text: a dangerous element or a javascript: URL anywhere, or an on* attribute (with a
# value) inside a tag. Tags are scanned one by one (TAG_RE) so that the check stays linear
# on hostile input such as "<<<<...".
DISALLOWED_MARKUP_RE = re.compile(r"<(?:script|style|iframe|object|embed)|javascript:", re.I)
TAG_RE = re.compile(r"<[^>]*")
ON_ATTRIBUTE_RE = re.compile(r"[\s/\"']on[^\s=>/\"']*\s*=", re.I)
CODE39_RE = re.compile(r"[0-9A-Z \-.$/+%]{1,80}")
CODE128_RE = re.compile(r"[\x20-\x7e]{1,80}")
ATTACHMENT_KEYS = ("url", "filename", "mimeType", "size")


# ----------------------------- numbers ------------------------------------

def _is_finite_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and (
        isinstance(x, int) or math.isfinite(x))


def normalize_number(x):
    """Stored/returned form of a number: integral floats as int, -0.0 as 0; else unchanged."""
    # Only within the safe-integer range: larger integral floats stay floats so that
    # JSON round-trips and SQLite bindings (int64) never overflow.
    if isinstance(x, float) and not isinstance(x, bool) and math.isfinite(x) \
            and x.is_integer() and abs(x) <= MAX_SAFE_INT:
        return int(x)
    return x


def _as_safe_int(x):
    """x as an int when it is a JSON integer (3.0 counts) within the safe range, else None."""
    if not _is_finite_number(x):
        return None
    if isinstance(x, float):
        if not x.is_integer():
            return None
        x = int(x)
    return x if -MAX_SAFE_INT <= x <= MAX_SAFE_INT else None


def sov_num_text(x):
    """Text of a number: integral as integer ('3'), else Python repr ('2.5'); -0 -> '0'."""
    if not _is_finite_number(x):
        return None
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return repr(x)


def sov_parse_number(t):
    """Number denoted by trimmed text t (int when integral), or None."""
    if _is_finite_number(t):
        return normalize_number(t)
    if not isinstance(t, str):
        return None
    t = t.strip(" \t\n\r\f\v")
    m = NUMBER_TEXT_RE.fullmatch(t)
    if not m:
        return None
    # More than 19 digits is beyond int64 anyway (and int() refuses > 4300 digits).
    if m.group(1) is None and m.group(2) is None and len(t) <= 20:
        n = int(t)
        # Beyond SQLite's int64 a Python int cannot be returned; a float can.
        return n if -2**63 <= n < 2**63 else float(n)
    v = float(t)
    return normalize_number(v) if math.isfinite(v) else None


# ----------------------------- date and time ------------------------------

def _zone_or_none(tz):
    if not isinstance(tz, str):
        return None
    try:
        return zoneinfo.ZoneInfo(tz)
    except (ValueError, LookupError, OSError):
        return None


def format_ts(dt):
    """Aware datetime -> canonical 'YYYY-MM-DDTHH:MM:SS.sssZ' (UTC, milliseconds)."""
    d = dt.astimezone(datetime.timezone.utc)
    # Explicit padding: strftime('%Y') does not zero-pad years < 1000 on every libc.
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:"
            f"{d.second:02d}.{d.microsecond // 1000:03d}Z")


def parse_ts(text):
    """Canonical UTC timestamp text -> aware UTC datetime (inverse of format_ts)."""
    dt = datetime.datetime.fromisoformat(text)
    if dt.tzinfo is None:  # never let astimezone() assume the host's local zone
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.astimezone(datetime.timezone.utc)


def _match_datetime(text):
    """(naive datetime, offset minutes or None, has_time) for valid input, else None."""
    if not isinstance(text, str):
        return None
    m = DATETIME_RE.fullmatch(text)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    hh, mi, ss = int(hh or 0), int(mi or 0), int(ss or 0)
    if hh > 23 or mi > 59 or ss > 59:
        return None
    micro = int((frac or "")[:3].ljust(3, "0")) * 1000  # cut to ms, never rounded
    try:
        naive = datetime.datetime(int(y), int(mo), int(d), hh, mi, ss, micro)
    except ValueError:  # not a real calendar date (2026-02-30, year 0000)
        return None
    minutes = None
    if off and off != "Z":
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            return None
        minutes = (oh * 60 + om) * (-1 if off[0] == "-" else 1)
    elif off == "Z":
        minutes = 0
    return naive, minutes, m.group(4) is not None


def parse_date(text):
    """Validated 'YYYY-MM-DD' (date part of the §5.4 pattern only), else None."""
    r = _match_datetime(text)
    return r[0].date().isoformat() if r and not r[2] else None


def parse_datetime(text, tz="UTC"):
    """§5.4 date-time input read in zone tz -> canonical UTC timestamp, else None."""
    r = _match_datetime(text)
    if not r:
        return None
    naive, minutes, _ = r
    try:
        if minutes is not None:
            utc = naive - datetime.timedelta(minutes=minutes)
            return format_ts(utc.replace(tzinfo=datetime.timezone.utc))
        zone = _zone_or_none(tz)
        if zone is None:
            return None
        # fold=0 (the default): earlier instant in an overlap, pre-transition offset in a gap.
        return format_ts(naive.replace(tzinfo=zone))
    except OverflowError:  # left the years 0001..9999 after conversion
        return None


def parse_time(text):
    """'HH:MM' or 'HH:MM:SS' (24-hour) -> 'HH:MM:SS', else None."""
    if not isinstance(text, str):
        return None
    m = TIME_RE.fullmatch(text)
    if not m:
        return None
    hh, mi, ss = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if hh > 23 or mi > 59 or ss > 59:
        return None
    return f"{hh:02d}:{mi:02d}:{ss:02d}"


def sov_parse_date(t):
    """SQL: t as 'YYYY-MM-DD' when valid date input, else NULL."""
    return parse_date(t)


def sov_parse_datetime(t, tz):
    """SQL: canonical UTC timestamp of t read in zone tz, else NULL."""
    return parse_datetime(t, tz) if isinstance(tz, str) else None


def sov_parse_time(t):
    """SQL: t as 'HH:MM:SS' when valid time input, else NULL."""
    return parse_time(t)


def sov_local_date(ts, tz):
    """SQL: calendar date 'YYYY-MM-DD' in zone tz of UTC timestamp ts, else NULL."""
    canonical = parse_datetime(ts, "UTC") if isinstance(ts, str) else None
    zone = _zone_or_none(tz)
    if canonical is None or zone is None:
        return None
    try:
        return parse_ts(canonical).astimezone(zone).date().isoformat()
    except OverflowError:
        return None


# ----------------------------- validation ---------------------------------

class ValueProblem(Exception):
    """A field value failed validation; .message is the API message."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def _value_fail(field, what):
    raise ValueProblem(f"Field '{field['name']}' {what}")


def _field_opt(field, key, default):
    v = field.get(key)
    return default if v is None else v


def _check_value_length(field, value, limit):
    if len(value) > limit:  # len() of a str counts code points
        _value_fail(field, f"must be at most {sov_num_text(limit)} characters")


def _val_text(field, value):
    if not isinstance(value, str):
        _value_fail(field, "must be a string")
    kind = field["type"]
    if kind == "single-line-text" and ("\r" in value or "\n" in value):
        _value_fail(field, "must not contain line breaks")
    default = 255 if kind == "single-line-text" else 100000
    _check_value_length(field, value, _field_opt(field, "maxLength", default))
    if kind == "rich-text" and (DISALLOWED_MARKUP_RE.search(value) or any(
            ON_ATTRIBUTE_RE.search(tag) for tag in TAG_RE.findall(value))):
        _value_fail(field, "contains disallowed markup")
    return value


def _val_email(field, value):
    v = value.strip().lower() if isinstance(value, str) else ""
    if len(v) > 254 or not EMAIL_RE.fullmatch(v):  # length first: bounds the regex work
        _value_fail(field, "must be a valid email address")
    return v


def _is_http_url(value):
    if not isinstance(value, str) or len(value) > 2048:
        return False
    m = URL_RE.fullmatch(value)
    if not m:
        return False
    host = m.group(1).rpartition("@")[2]  # drop user-info
    host = re.sub(r":[0-9]*$", "", host)  # drop the port
    return host != ""


def _val_url(field, value):
    if not _is_http_url(value):
        _value_fail(field, "must be a valid http or https URL")
    return value


def _val_phone(field, value):
    if not (isinstance(value, str) and 3 <= len(value) <= 32 and PHONE_RE.fullmatch(value)
            and sum(c.isdigit() for c in value) >= 3):
        _value_fail(field, "must be a valid phone number")
    return value


def _check_value_range(field, v, lo, hi):
    if lo is not None and v < lo:
        _value_fail(field, f"must be at least {sov_num_text(lo)}")
    if hi is not None and v > hi:
        _value_fail(field, f"must be at most {sov_num_text(hi)}")
    return v


def _val_integer(field, value):
    v = _as_safe_int(value)
    if v is None:
        _value_fail(field, "must be an integer")
    lo = _field_opt(field, "min", 0) if field["type"] == "duration" else field.get("min")
    return _check_value_range(field, v, lo, field.get("max"))


def _val_decimal(field, value):
    if not _is_finite_number(value):
        _value_fail(field, "must be a number")
    return _check_value_range(field, normalize_number(value), field.get("min"), field.get("max"))


def _val_bounded_int(field, value):
    lo, hi = (1, _field_opt(field, "max", 5)) if field["type"] == "rating" else (0, 100)
    v = _as_safe_int(value)
    if v is None or not lo <= v <= hi:
        _value_fail(field, f"must be an integer between {lo} and {sov_num_text(hi)}")
    return v


def _val_date(field, value):
    v = parse_date(value)
    if v is None:
        _value_fail(field, "must be a date in YYYY-MM-DD format")
    return v


def _val_datetime(field, value):
    v = parse_datetime(value, _field_opt(field, "timeZone", "UTC"))
    if v is None:
        _value_fail(field, "must be an ISO 8601 date-time")
    return v


def _val_time(field, value):
    v = parse_time(value)
    if v is None:
        _value_fail(field, "must be a time in HH:MM or HH:MM:SS format")
    return v


def _val_checkbox(field, value):
    if not isinstance(value, bool):
        _value_fail(field, "must be a boolean")
    return value


def _option_values(field):
    # Options are normally {value, label, color} dicts; bare strings are tolerated.
    return [o["value"] if isinstance(o, dict) else o for o in field.get("options") or []]


def _bad_option(field, v):
    raise ValueProblem(f"Value '{v}' is not a valid option for field '{field['name']}'")


def _val_select(field, value):
    if not isinstance(value, str):
        _value_fail(field, "must be a string")
    if value not in _option_values(field):
        _bad_option(field, value)
    return value


def _val_multi_select(field, value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _value_fail(field, "must be an array of strings")
    rank = {v: i for i, v in enumerate(_option_values(field))}
    for v in value:
        if v not in rank:
            _bad_option(field, v)
    if len(set(value)) != len(value):
        _value_fail(field, "contains duplicate values")
    limit = field.get("maxSelections")
    if limit is not None and len(value) > limit:
        _value_fail(field, f"allows at most {sov_num_text(limit)} selections")
    return sorted(value, key=rank.__getitem__)


def _attachment_item(field, i, obj):
    def bad(what):
        _value_fail(field, f"attachment {i}: {what}")
    for key in obj:
        if key not in ATTACHMENT_KEYS:
            bad(f"unknown member '{key}'")
    if not _is_http_url(obj.get("url")):
        bad("url must be an http or https URL")
    name = obj.get("filename")
    if not isinstance(name, str) or name == "":
        bad("filename is required")
    if len(name) > 255:
        bad("filename must be at most 255 characters")
    out = {"url": obj["url"], "filename": name}
    # A null optional member is treated as absent (and omitted when stored).
    mime = obj.get("mimeType")
    if mime is not None:
        if not isinstance(mime, str) or not MIME_RE.fullmatch(mime):
            bad("mimeType must be a type/subtype string")
        out["mimeType"] = mime = mime.lower()
    size = obj.get("size")
    if size is not None:
        size = _as_safe_int(size)
        if size is None or size < 0:
            bad("size must be a non-negative integer")
        out["size"] = size
    allowed = field.get("allowedFileTypes")
    if allowed:
        if mime is None:
            bad("mimeType is required")
        major = mime.split("/")[0] + "/*"
        if not any(a.lower() in (mime, major) for a in allowed):
            bad(f"file type '{mime}' is not allowed")
    limit = field.get("maxFileSize")
    if limit is not None:
        if size is None:
            bad("size is required")
        if size > limit:
            bad(f"size exceeds the maximum of {sov_num_text(limit)} bytes")
    return out


def _val_single_attachment(field, value):
    if not isinstance(value, dict):
        _value_fail(field, "must be an attachment object")
    return _attachment_item(field, 0, value)


def _val_multiple_attachments(field, value):
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        _value_fail(field, "must be an array of attachment objects")
    out = [_attachment_item(field, i, v) for i, v in enumerate(value)]
    limit = field.get("maxFiles")
    if limit is not None and len(out) > limit:
        _value_fail(field, f"allows at most {sov_num_text(limit)} files")
    return out


def _check_digit_ok(digits):
    body, check = digits[:-1], int(digits[-1])
    # Weights 3,1,3,... starting from the digit left of the check digit, going left.
    total = sum(int(c) * (3 if k % 2 == 0 else 1) for k, c in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def _barcode_ok(fmt, v):
    if fmt == "CODE-128":
        return bool(CODE128_RE.fullmatch(v))
    if fmt == "CODE-39":
        return bool(CODE39_RE.fullmatch(v))
    if not (v.isascii() and v.isdigit()):
        return False
    if fmt == "UPC-E":
        return len(v) == 8 and v[0] in "01"
    size = {"EAN-13": 13, "EAN-8": 8, "UPC-A": 12}.get(fmt)
    return len(v) == size and _check_digit_ok(v)


def _val_barcode(field, value):
    fmt = _field_opt(field, "format", "CODE-128")
    if not isinstance(value, str) or not _barcode_ok(fmt, value):
        _value_fail(field, f"must be a valid {fmt} barcode")
    return value


def _val_color(field, value):
    if not isinstance(value, str) or not COLOR_RE.fullmatch(value):
        _value_fail(field, "must be a color in #RRGGBB format")
    return value.upper()


def _val_geolocation(field, value):
    ok = (isinstance(value, dict) and set(value) == {"lat", "lng"}
          and _is_finite_number(value["lat"]) and _is_finite_number(value["lng"])
          and -90 <= value["lat"] <= 90 and -180 <= value["lng"] <= 180)
    if not ok:
        _value_fail(field, "must be an object with lat between -90 and 90"
                           " and lng between -180 and 180")
    return {"lat": normalize_number(value["lat"]), "lng": normalize_number(value["lng"])}


def _val_json(field, value):
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):  # NaN/Infinity, non-JSON object, too deep
        _value_fail(field, "must be a JSON value")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JSON_BYTES:
        _value_fail(field, "is too large")
    return value


def _val_array(field, value):
    if not isinstance(value, list):
        _value_fail(field, "must be an array")
    kind = _field_opt(field, "itemType", "text")
    out = []
    for i, item in enumerate(value):
        if kind == "text":
            v = item if isinstance(item, str) else None
            if v is not None and len(v) > 1000:
                _value_fail(field, f"item {i} must be at most 1000 characters")
        elif kind == "number":
            v = normalize_number(item) if _is_finite_number(item) else None
        elif kind == "integer":
            v = _as_safe_int(item)
        else:
            v = item if isinstance(item, bool) else None
        if v is None:
            _value_fail(field, f"item {i} must be {'an' if kind == 'integer' else 'a'} {kind}")
        out.append(v)
    limit = _field_opt(field, "maxItems", 1000)
    if len(out) > limit:
        _value_fail(field, f"allows at most {sov_num_text(limit)} items")
    return out


def _as_record_id(x):
    v = _as_safe_int(x)
    return v if v is not None and v >= 1 else None


def _val_relationship(field, value):
    if field.get("relationType") != "many-to-many":
        v = _as_record_id(value)
        if v is None:
            _value_fail(field, "must be a record id")
        return v
    ids = [_as_record_id(x) for x in value] if isinstance(value, list) else [None]
    if None in ids:
        _value_fail(field, "must be an array of record ids")
    if len(set(ids)) != len(ids):
        _value_fail(field, "contains duplicate values")
    if len(ids) > MAX_LINKS:
        _value_fail(field, f"allows at most {MAX_LINKS} records")
    return sorted(ids)


def _is_user_id(x):
    return isinstance(x, str) and USER_ID_RE.fullmatch(x) is not None


def _val_user(field, value):
    if not field.get("allowMultiple"):
        if not _is_user_id(value):
            _value_fail(field, "must be a user id")
        return value
    if not isinstance(value, list) or not all(_is_user_id(v) for v in value):
        _value_fail(field, "must be an array of user ids")
    if len(set(value)) != len(value):
        _value_fail(field, "contains duplicate values")
    return sorted(value)


VALIDATORS = {
    "single-line-text": _val_text, "long-text": _val_text, "rich-text": _val_text,
    "code": _val_text,
    "email": _val_email, "url": _val_url, "phone-number": _val_phone,
    "integer": _val_integer, "duration": _val_integer,
    "decimal": _val_decimal, "currency": _val_decimal, "percentage": _val_decimal,
    "rating": _val_bounded_int, "progress": _val_bounded_int,
    "date": _val_date, "datetime": _val_datetime, "time": _val_time,
    "checkbox": _val_checkbox,
    "single-select": _val_select, "status": _val_select, "multi-select": _val_multi_select,
    "single-attachment": _val_single_attachment, "multiple-attachments": _val_multiple_attachments,
    "barcode": _val_barcode, "color": _val_color, "geolocation": _val_geolocation,
    "json": _val_json, "array": _val_array,
    "relationship": _val_relationship, "user": _val_user,
}


def validate_value(field, value):
    """Validate a written value; return what to store (None = no value) or raise ValueProblem."""
    kind = field["type"]
    if kind == "json":
        return None if value is None else _val_json(field, value)
    if value is None or value == "" and isinstance(value, str) \
            or value == [] and isinstance(value, list):
        return False if kind == "checkbox" else None
    return VALIDATORS[kind](field, value)

###############################################################################
# 5. Configuration loading ####################################################
###############################################################################

# ---------------------------------------------------------------------------
# Configuration loading (CONFIG.md §1): formats, $ref includes, environment
# substitution, checksums, typo suggestions, error paths.
# ---------------------------------------------------------------------------

_REF_MAX_DEPTH = 32
_ENV_ALLOWED_KEYS = frozenset({"auth", "settings", "analytics", "name", "version", "description"})
_IGNORED_TOP_KEYS = frozenset({
    "badge", "theme", "languages", "components", "pages", "forms", "palette", "llms", "scripts",
    "systemSources", "connections", "env", "actions", "automations", "agents", "buckets"})
_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_WHOLE_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}")
_SUBST_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_Y12_INT_RE = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_Y12_FLOAT_RE = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


class _RawInt(int):
    """An int that remembers its source text (so `version: 2` can be kept as written)."""
    raw = None


class _RawFloat(float):
    """A float that remembers its source text (so `version: 1.10` stays "1.10")."""
    raw = None


class _Map(dict):
    """A parsed mapping that remembers keys written twice, reported later with a config path."""
    dups = ()


def _raw_number(cls, value, text):
    n = cls(value)
    n.raw = text
    return n


def _y12_int(loader, node):
    text = loader.construct_scalar(node)
    # Explicit `!!int` tags bypass the resolver, so re-check the core-schema syntax here.
    if not _Y12_INT_RE.fullmatch(text):
        raise yaml.constructor.ConstructorError(None, None, f"invalid integer '{text}'", node.start_mark)
    value = int(text[2:], 8) if text.startswith("0o") else int(text[2:], 16) if text.startswith("0x") else int(text)
    return _raw_number(_RawInt, value, text)


def _y12_float(loader, node):
    text = loader.construct_scalar(node)
    if not _Y12_FLOAT_RE.fullmatch(text):
        raise yaml.constructor.ConstructorError(None, None, f"invalid float '{text}'", node.start_mark)
    low = text.lower()
    value = math.nan if low == ".nan" else float(low.replace(".inf", "inf"))
    return _raw_number(_RawFloat, value, text)


def _y12_bool(loader, node):
    text = loader.construct_scalar(node)
    if text.lower() not in ("true", "false"):
        raise yaml.constructor.ConstructorError(None, None, f"invalid boolean '{text}'", node.start_mark)
    return text.lower() == "true"


def _y12_map(loader, node):
    data = _Map()
    yield data
    loader.flatten_mapping(node)
    dups = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark)
        if key in data:
            dups.append(key)
        data[key] = loader.construct_object(value_node)
    data.dups = dups


def _y12_resolvers():
    table = {}
    for tag, regexp, first in (
            ("null", r"~|null|Null|NULL|", "~nN"),
            ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
            ("int", _Y12_INT_RE.pattern, "-+0123456789"),
            ("float", _Y12_FLOAT_RE.pattern, "-+.0123456789")):
        # "" is PyYAML's bucket for the empty plain scalar, which is null.
        for ch in list(first) + ([""] if tag == "null" else []):
            table.setdefault(ch, []).append((f"tag:yaml.org,2002:{tag}", re.compile(f"^(?:{regexp})$")))
    return table


class _Yaml12Loader(yaml.SafeLoader):
    """Safe loader whose plain-scalar typing is exactly the YAML 1.2 core schema."""
    yaml_implicit_resolvers = _y12_resolvers()
    # Only core tags get constructors: explicit !!timestamp, !!binary, !!set … become errors
    # instead of producing values that JSON (snapshots, checksums) cannot hold.
    yaml_constructors = {
        "tag:yaml.org,2002:null": lambda loader, node: None,
        "tag:yaml.org,2002:bool": _y12_bool,
        "tag:yaml.org,2002:int": _y12_int,
        "tag:yaml.org,2002:float": _y12_float,
        "tag:yaml.org,2002:str": yaml.SafeLoader.construct_yaml_str,
        "tag:yaml.org,2002:seq": yaml.SafeLoader.construct_yaml_seq,
        "tag:yaml.org,2002:map": _y12_map,
        None: yaml.SafeLoader.construct_undefined,
    }


def _json_object(pairs):
    data, dups = _Map(), []
    for key, value in pairs:
        if key in data:
            dups.append(key)
        data[key] = value
    data.dups = dups
    return data


def _line_col(text, pos):
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _parse_config_text(text, filename, display):
    """Parse one configuration file's text; returns (value, error message or None)."""
    if filename.lower().endswith(".json"):
        try:
            return json.loads(text, object_pairs_hook=_json_object,
                              parse_int=lambda s: _raw_number(_RawInt, int(s), s),
                              parse_float=lambda s: _raw_number(_RawFloat, float(s), s)), None
        except json.JSONDecodeError as e:
            return None, f"{display}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}"
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, f"{display}:{line}:{col}: YAML syntax error: {e.problem or e.context}"
    except yaml.reader.ReaderError as e:
        line, col = _line_col(text, e.position)
        return None, f"{display}:{line}:{col}: YAML syntax error: unacceptable character #x{e.character:04x}"
    except yaml.YAMLError as e:
        return None, f"{display}:1:1: YAML syntax error: {e}"
    finally:
        loader.dispose()


def _read_text(path):
    """Read a UTF-8 file; raises OSError (also for undecodable bytes) with a readable strerror."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise OSError(0, f"invalid UTF-8 at byte {e.start}") from None


def _plain(value):
    """Turn parser-internal number/mapping subclasses back into plain JSON-able values."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def config_path(parts):
    """Join path parts into a config path: names with '.', list indices as '[n]'."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_config(path):
    """Read a configuration file, resolve its $ref includes and return plain data (ConfigError on problems)."""
    errors = []
    root_dir = os.path.realpath(os.path.dirname(os.path.abspath(path)))

    def rel(p):
        return os.path.relpath(p, root_dir).replace(os.sep, "/")

    try:
        text = _read_text(path)
    except OSError as e:
        raise ConfigError([{"path": "", "message": f"cannot read {path}: {e.strerror or e}"}])
    doc, syntax = _parse_config_text(text, path, os.path.basename(path))
    if syntax:
        raise ConfigError([{"path": "", "message": syntax}])
    if not isinstance(doc, dict):
        raise ConfigError([{"path": "", "message": "Expected a mapping"}])

    def err(parts, message):
        errors.append({"path": config_path(parts), "message": message})

    def include(ref, parts, chain):
        # `chain` holds the real paths of the files being included, root first.
        if os.path.isabs(ref) or _URL_RE.match(ref):
            return err(parts, f"$ref '{ref}' must be a relative file path")
        target = os.path.join(os.path.dirname(chain[-1]), ref)
        real = os.path.realpath(target)
        if os.path.commonpath([real, root_dir]) != root_dir:
            return err(parts, f"$ref '{ref}' points outside the configuration directory")
        if real in chain:
            return err(parts, "Circular $ref: " + " -> ".join(rel(p) for p in chain + [real]))
        if len(chain) > _REF_MAX_DEPTH:
            return err(parts, f"$ref '{ref}' exceeds the maximum nesting depth of {_REF_MAX_DEPTH}")
        try:
            sub_text = _read_text(real)
        except OSError as e:
            return err(parts, f"$ref '{ref}' cannot be read: {e.strerror or e}")
        value, syntax = _parse_config_text(sub_text, target, rel(real))
        if syntax:
            return err([], syntax)
        return walk(value, parts, chain + [real], ())

    def walk(value, parts, chain, active):
        # `active` guards against self-containing YAML aliases (`&a [*a]`) recursing forever.
        if isinstance(value, (dict, list)):
            if id(value) in active:
                return err(parts, "Recursive alias")
            active = active + (id(value),)
        if isinstance(value, dict):
            for key in getattr(value, "dups", ()):
                err(parts, f"Duplicate key '{key}'")
            if "$ref" in value:
                if len(value) != 1:
                    err(parts, "$ref must be the only key")
                elif not isinstance(value["$ref"], str):
                    return err(parts + ["$ref"], "Expected a string")
                else:
                    return include(value["$ref"], parts, chain)
            return {k: walk(v, parts + [str(k)], chain, active) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, parts + [i], chain, active) for i, v in enumerate(value)]
        return value

    # The root is named by its directory's real path so that includes resolve inside that tree
    # even when the root file itself is a symlink.
    doc = walk(doc, [], [os.path.join(root_dir, os.path.basename(path))], ())
    if errors:
        raise ConfigError(errors)
    version = doc.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        doc["version"] = getattr(version, "raw", None) or str(version)
    return _plain(doc)


class Substituted(str):
    """A string that was exactly one ${NAME} placeholder; numeric/boolean settings may convert it."""


def coerce_substituted(value, kind):
    """Convert a Substituted value to a number/integer/boolean (ValueError if it does not fit); else return value."""
    if not isinstance(value, Substituted):
        return value
    text = str(value)
    if kind == "boolean":
        if text in ("true", "false"):
            return text == "true"
        raise ValueError("Expected a boolean")
    if kind == "integer":
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        raise ValueError("Expected an integer")
    if kind == "number":
        m = _SUBST_NUMBER_RE.fullmatch(text)
        if m:
            return float(text) if m.group(1) or m.group(2) else int(text)
        raise ValueError("Expected a number")
    raise ValueError(f"unknown kind {kind!r}")


def substitute_env(doc, env):
    """Expand ${NAME} placeholders where CONFIG.md §1.3 allows them; returns (new_doc, errors)."""
    errors = []

    def expand(text, parts, allowed):
        if "$" not in text:
            return text
        placeholders = []

        def repl(m):
            if m.group(0) == "$${":
                return "${"
            placeholders.append(m)
            if not allowed:
                return m.group(0)
            name, fallback = m.group(1), m.group(2)
            value = env.get(name)
            if fallback is not None and not value:
                return fallback
            if value is None:
                errors.append({"path": config_path(parts), "message": f"Environment variable '{name}' is not set"})
                return m.group(0)
            return str(value)

        result = _ENV_RE.sub(repl, text)
        if placeholders and not allowed:
            errors.append({"path": config_path(parts), "message": "Environment substitution is not allowed here"})
            return text
        return Substituted(result) if _ENV_WHOLE_RE.fullmatch(text) else result

    def walk(value, parts, allowed):
        if isinstance(value, dict):
            return {k: walk(v, parts + [k], allowed) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, parts + [i], allowed) for i, v in enumerate(value)]
        if isinstance(value, str):
            return expand(value, parts, allowed)
        return value

    if not isinstance(doc, dict):
        return doc, errors
    new_doc = {}
    for key, value in doc.items():
        # Ignored keys are never read, so their placeholders (and `$${`) stay as written.
        new_doc[key] = value if key in _IGNORED_TOP_KEYS else walk(value, [key], key in _ENV_ALLOWED_KEYS)
    return new_doc, errors


def config_checksum(snapshot):
    """Lower-case hex SHA-256 of the snapshot as canonical JSON (sorted keys, no whitespace, UTF-8)."""
    text = json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def levenshtein(a, b):
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def closest_key(key, honoured):
    """The honoured key within edit distance 2 of `key` (closest, then alphabetical), or None."""
    honoured = list(honoured)
    if key in honoured:
        return None
    scored = sorted((levenshtein(key, h), h) for h in honoured)
    return scored[0][1] if scored and scored[0][0] <= 2 else None

###############################################################################
# 6. Formula language #########################################################
###############################################################################

# ---------------------------------------------------------------------------
# Formula language (CONFIG.md §5.7) and filterByFormula (API.md §4.10)
# ---------------------------------------------------------------------------


class FormulaError(Exception):
    """A formula or filterByFormula problem: reason, 0-based position (or None), full message."""

    def __init__(self, reason, position=None, message=None):
        if message is None:
            message = (reason if position is None
                       else f"Formula syntax error at position {position}: {reason}")
        super().__init__(message)
        self.reason, self.position, self.message = reason, position, message


# Whitespace is skipped; strings are scanned by hand because of their escapes.
_FORMULA_TOKEN = re.compile(
    r"[ \t\r\n]+|(?P<num>[0-9]+(?:\.[0-9]+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<field>[^{}\x00-\x1f]+)\}|(?P<op><=|>=|<>|!=|[-=<>&+*/(),])")
_FORMULA_COMPARE = ("=", "!=", "<>", "<", ">", "<=", ">=")
# Parser recursion (parens, calls, unary minus) and tree depth are capped so that neither
# Python's recursion limit nor SQLite's expression depth (1000) can be reached.
_FORMULA_MAX_NEST = 50
_FORMULA_MAX_DEPTH = 100


def _formula_lex(text):
    """Tokens (kind, value, pos); a lexing problem becomes a final ('err', reason, pos) token."""
    toks, i, n = [], 0, len(text)
    while i < n:
        quote = text[i]
        if quote in "'\"":
            j, buf = i + 1, []
            while True:
                if j >= n or (text[j] == "\\" and j + 1 >= n):
                    return toks + [("err", "unterminated string", i)]
                ch = text[j]
                if ch == "\\":
                    if text[j + 1] not in "'\"\\":
                        return toks + [("err", "unexpected token", j)]
                    buf.append(text[j + 1])
                    j += 2
                elif ch == quote:
                    break
                else:
                    buf.append(ch)
                    j += 1
            toks.append(("str", "".join(buf), i))
            i = j + 1
            continue
        m = _FORMULA_TOKEN.match(text, i)
        if not m:
            return toks + [("err", "unexpected token", i)]
        if m.lastgroup:
            toks.append((m.lastgroup, m.group(m.lastgroup), i))
        i = m.end()
    return toks + [("end", None, n)]


class _FormulaParser:
    """Recursive-descent parser producing tuple nodes whose second item is the start position.

    Nodes: ('num', pos, digits) ('str', pos, value) ('bool', pos, flag) ('field', pos, name)
    ('neg', pos, operand) ('bin', pos, op, left, right, op_pos)
    ('call', pos, NAME, args, name_as_written, close_paren_pos).
    """

    def __init__(self, toks):
        self.toks, self.i, self.nest = toks, 0, 0

    def fail(self, tok=None):
        kind, val, pos = tok or self.toks[self.i]
        raise FormulaError(val if kind == "err" else "unexpected token", pos)

    def take(self, ops):
        tok = self.toks[self.i]
        if tok[0] == "op" and tok[1] in ops:
            self.i += 1
            return tok
        return None

    def expect(self, op):
        tok = self.take((op,))
        if not tok:
            self.fail()
        return tok

    def enter(self, pos):
        self.nest += 1
        if self.nest > _FORMULA_MAX_NEST:
            raise FormulaError("too complex", pos, "Formula is too complex")

    def expression(self):
        # Comparison is non-associative: a second operator is left for the caller to reject.
        left = self.binary(0)
        tok = self.take(_FORMULA_COMPARE)
        if tok:
            left = ("bin", left[1], tok[1], left, self.binary(0), tok[2])
        return left

    def binary(self, level):
        ops = (("&",), ("+", "-"), ("*", "/"))[level]
        left = self.binary(level + 1) if level < 2 else self.unary()
        while (tok := self.take(ops)):
            right = self.binary(level + 1) if level < 2 else self.unary()
            left = ("bin", left[1], tok[1], left, right, tok[2])
        return left

    def unary(self):
        tok = self.take(("-",))
        if not tok:
            return self.primary()
        self.enter(tok[2])
        node = ("neg", tok[2], self.unary())
        self.nest -= 1
        return node

    def primary(self):
        tok = self.toks[self.i]
        kind, val, pos = tok
        if kind in ("num", "str", "field"):
            self.i += 1
            return (kind, pos, val)
        if kind == "name":
            self.i += 1
            if self.take(("(",)):
                self.enter(pos)
                args = []
                close = self.take((")",))
                while not close:
                    args.append(self.expression())
                    if not self.take((",",)):
                        close = self.expect(")")
                self.nest -= 1
                return ("call", pos, val.upper(), tuple(args), val, close[2])
            if val.upper() in ("TRUE", "FALSE"):
                return ("bool", pos, val.upper() == "TRUE")
            self.fail(tok)  # a bare name is neither a constant nor a call
        if kind == "op" and val == "(":
            self.i += 1
            self.enter(pos)
            node = self.expression()
            self.expect(")")
            self.nest -= 1
            return node
        self.fail(tok)


def _formula_children(node):
    kind = node[0]
    if kind == "bin":
        return (node[3], node[4])
    if kind == "neg":
        return (node[2],)
    return node[3] if kind == "call" else ()


def parse_formula(text):
    """Parse formula text (CONFIG.md §5.7) into a tuple tree; raises FormulaError."""
    parser = _FormulaParser(_formula_lex(text))
    node = parser.expression()
    if parser.toks[parser.i][0] != "end":
        parser.fail()
    # Long operator chains are loops in the parser but deep trees for compiling and for SQLite.
    stack = [(node, 1)]
    while stack:
        cur, depth = stack.pop()
        if depth > _FORMULA_MAX_DEPTH:
            raise FormulaError("too complex", cur[1], "Formula is too complex")
        stack.extend((child, depth + 1) for child in _formula_children(cur))
    return node


# name -> (min args, max args or None for "any number")
_FORMULA_ARITY = {
    "IF": (2, 3), "AND": (1, None), "OR": (1, None), "NOT": (1, 1), "BLANK": (0, 0),
    "TRUE": (0, 0), "FALSE": (0, 0), "CONCAT": (1, None), "UPPER": (1, 1), "LOWER": (1, 1),
    "TRIM": (1, 1), "LEN": (1, 1), "LEFT": (2, 2), "RIGHT": (2, 2), "MID": (3, 3),
    "SUBSTITUTE": (3, 3), "ABS": (1, 1), "FLOOR": (1, 1), "CEILING": (1, 1), "ROUND": (1, 2),
    "MOD": (2, 2), "MIN": (1, None), "MAX": (1, None), "SUM": (1, None), "NOW": (0, 0),
    "TODAY": (0, 0), "YEAR": (1, 1), "MONTH": (1, 1), "DAY": (1, 1), "DATE_ADD": (3, 3),
    "DATETIME_DIFF": (3, 3), "DATEVALUE": (1, 1), "DATETIMEVALUE": (1, 1),
}
# Milliseconds per unit; SQLite has no 'weeks' modifier, so weeks are added as 7 days.
_FORMULA_UNIT_MS = {"seconds": 1000, "minutes": 60000, "hours": 3600000, "days": 86400000,
                    "weeks": 604800000}
_FORMULA_STR_LIT = re.compile(r"'(?:[^']|'')+'")
_FORMULA_NOW = "(SELECT now FROM _ctx)"


def _sql_str(value):
    """SQL string literal (NUL cannot appear inside SQL text, so it is spliced in with char(0))."""
    return " || char(0) || ".join("'" + p.replace("'", "''") + "'" for p in value.split("\x00"))


def _blank_text(sql):
    # The empty text is blank: compare and return text with '' turned into NULL.
    if sql in ("''", "NULL"):
        return "NULL"
    return sql if _FORMULA_STR_LIT.fullmatch(sql) else f"nullif({sql}, '')"


def _as_text(sql, typ):
    # '&' / CONCAT conversion: numbers as sov_num_text, booleans true/false, null as ''.
    if typ == "null":
        return "''"
    if typ == "text" and _FORMULA_STR_LIT.fullmatch(sql):
        return sql
    if typ == "number":
        sql = f"sov_num_text({sql})"
    elif typ == "boolean":
        sql = f"CASE {sql} WHEN 1 THEN 'true' WHEN 0 THEN 'false' END"
    return f"coalesce({sql}, '')"


def _mismatch(op, expected, got):
    return FormulaError(f"Type mismatch: '{op}' expects {expected}, got {got}")


def _need(op, typ, *allowed):
    # BLANK() (type 'null') goes with any type.
    if typ != "null" and typ not in allowed:
        raise _mismatch(op, allowed[0], typ)


def compile_formula(node, resolve, result_type=None):
    """Type-check a parsed formula and return (sql, type, uses_now) as one SQLite expression."""
    uses_now = []

    def comp(n):
        kind = n[0]
        if kind == "num":
            return n[2], "number"
        if kind == "str":
            return _sql_str(n[2]), "text"
        if kind == "bool":
            return ("1" if n[2] else "0"), "boolean"
        if kind == "field":
            typ, sql = resolve(n[2])
            return f"({sql})", ("number" if typ == "integer" else typ)
        if kind == "neg":
            sql, typ = comp(n[2])
            _need("-", typ, "number")
            return f"(-({sql}))", "number"
        if kind == "bin":
            return binary(n[2], comp(n[3]), comp(n[4]))
        return call(n)

    def binary(op, left, right):
        (a, ta), (b, tb) = left, right
        if op in "+-*/":
            _need(op, ta, "number")
            _need(op, tb, "number")
            # SQLite gives NULL for x/0; CAST makes '/' real division.
            return (f"(CAST({a} AS REAL) / {b})" if op == "/" else f"({a} {op} {b})"), "number"
        if op == "&":
            return f"({_as_text(a, ta)} || {_as_text(b, tb)})", "text"
        # Comparisons: a date meets a datetime at midnight UTC of that date.
        if (ta, tb) == ("date", "datetime"):
            a, ta = f"({a} || 'T00:00:00.000Z')", "datetime"
        elif (ta, tb) == ("datetime", "date"):
            b, tb = f"({b} || 'T00:00:00.000Z')", "datetime"
        if "null" not in (ta, tb) and ta != tb:
            raise _mismatch(op, ta, tb)
        typ = tb if ta == "null" else ta
        coll = ""
        if typ == "text":
            a, b = _blank_text(a), _blank_text(b)
            coll = " COLLATE BINARY" if op in ("=", "!=", "<>") else " COLLATE NOCASE"
        if op == "=":
            return f"({a} IS {b}{coll})", "boolean"
        if op in ("!=", "<>"):
            return f"({a} IS NOT {b}{coll})", "boolean"
        # Ordering with a null side is false, not NULL.
        return f"coalesce({a} {op} {b}{coll}, 0)", "boolean"

    def unit_of(arg, allowed):
        if arg[0] != "str" or arg[2] not in allowed:
            raise FormulaError("Expected one of: " + ", ".join(allowed))
        return arg[2]

    def call(n):
        fname, nodes = n[2], n[3]
        if fname not in _FORMULA_ARITY:
            raise FormulaError(f"Unknown function '{n[4]}'")
        lo, hi = _FORMULA_ARITY[fname]
        if len(nodes) < lo or (hi is not None and len(nodes) > hi):
            count = (f"at least {lo}" if hi is None else str(lo) if lo == hi
                     else f"{lo} or {hi}")
            raise FormulaError(f"Function '{fname}' expects {count} arguments")
        if fname in ("DATE_ADD", "DATETIME_DIFF"):  # the unit is a literal, not an expression
            args = [comp(a) for a in nodes[:2]]
        else:
            args = [comp(a) for a in nodes]
        sqls = [s for s, _ in args]
        types = [t for _, t in args]

        def need(i, *allowed):
            _need(fname, types[i], *allowed)
            return sqls[i]

        if fname == "IF":
            cond = need(0, "boolean")
            then, other = args[1], (args[2] if len(args) > 2 else ("NULL", "null"))
            if "null" not in (then[1], other[1]) and then[1] != other[1]:
                raise _mismatch("IF", then[1], other[1])
            typ = other[1] if then[1] == "null" else then[1]
            return f"(CASE WHEN {cond} THEN {then[0]} ELSE {other[0]} END)", typ
        if fname in ("AND", "OR"):
            parts = [need(i, "boolean") for i in range(len(args))]
            # NULL AND/OR mixes can give NULL; null counts as false and the result is 0/1.
            return f"coalesce({f' {fname} '.join(parts)}, 0)", "boolean"
        if fname == "NOT":
            return f"(coalesce({need(0, 'boolean')}, 0) = 0)", "boolean"
        if fname in ("BLANK", "TRUE", "FALSE"):
            return {"BLANK": ("NULL", "null"), "TRUE": ("1", "boolean"),
                    "FALSE": ("0", "boolean")}[fname]
        if fname == "CONCAT":
            return "(" + " || ".join(_as_text(s, t) for s, t in args) + ")", "text"
        if fname in ("UPPER", "LOWER"):
            return f"{fname.lower()}({need(0, 'text')})", "text"
        if fname == "TRIM":
            return f"trim({need(0, 'text')}, ' ')", "text"
        if fname == "LEN":
            # Blank text has length 0 (null and '' must not differ).
            return f"coalesce(length({need(0, 'text')}), 0)", "number"
        if fname == "LEFT":
            # substr() with a negative count yields '' — blank, the same as null.
            return f"substr({need(0, 'text')}, 1, {need(1, 'number')})", "text"
        if fname == "RIGHT":
            s, k = need(0, "text"), need(1, "number")
            return f"(CASE WHEN {k} >= 1 THEN substr({s}, -({k})) END)", "text"
        if fname == "MID":
            s, start, k = need(0, "text"), need(1, "number"), need(2, "number")
            return (f"(CASE WHEN {start} >= 1 AND {k} >= 0 THEN substr({s}, {start}, {k}) END)",
                    "text")
        if fname == "SUBSTITUTE":
            s, old, new = need(0, "text"), need(1, "text"), need(2, "text")
            return f"replace({s}, coalesce({old}, ''), coalesce({new}, ''))", "text"
        if fname in ("ABS", "FLOOR", "CEILING"):
            fn = {"ABS": "abs", "FLOOR": "floor", "CEILING": "ceil"}[fname]
            return f"{fn}({need(0, 'number')})", "number"
        if fname == "ROUND":
            x = need(0, "number")
            if len(args) == 1:
                return f"round({x})", "number"
            d = need(1, "number")
            # SQLite's round() is half away from zero; digits outside 0..10 give null.
            return f"(CASE WHEN {d} BETWEEN 0 AND 10 THEN round({x}, {d}) END)", "number"
        if fname == "MOD":
            # mod() is C fmod: a − b·trunc(a/b), sign of a, NULL when b = 0.
            return f"mod({need(0, 'number')}, {need(1, 'number')})", "number"
        if fname in ("MIN", "MAX"):
            parts = [need(i, "number") for i in range(len(args))]
            if len(parts) == 1:
                return parts[0], "number"
            rows = ", ".join(f"({p})" for p in parts)
            return f"(SELECT {fname.lower()}(column1) FROM (VALUES {rows}))", "number"
        if fname == "SUM":
            parts = [need(i, "number") for i in range(len(args))]
            return "(" + " + ".join(f"coalesce({p}, 0)" for p in parts) + ")", "number"
        if fname in ("NOW", "TODAY"):
            uses_now.append(True)
            return ((_FORMULA_NOW, "datetime") if fname == "NOW"
                    else (f"substr({_FORMULA_NOW}, 1, 10)", "date"))
        if fname in ("YEAR", "MONTH", "DAY"):
            # Dates and canonical UTC datetimes both start with YYYY-MM-DD.
            start, size = {"YEAR": (1, 4), "MONTH": (6, 2), "DAY": (9, 2)}[fname]
            return f"CAST(substr({need(0, 'date', 'datetime')}, {start}, {size}) AS INTEGER)", \
                "number"
        if fname == "DATE_ADD":
            d, k = need(0, "date", "datetime"), need(1, "number")
            units = ("days", "weeks") if types[0] == "date" else tuple(_FORMULA_UNIT_MS)
            unit = unit_of(nodes[2], units)
            if unit == "weeks":
                k, unit = f"({k} * 7)", "days"
            modifier = f"({k} || ' {unit}')"
            if types[0] == "date":
                return f"date({d}, {modifier})", "date"
            return f"strftime('%Y-%m-%dT%H:%M:%fZ', {d}, {modifier})", types[0]
        if fname == "DATETIME_DIFF":
            a, b = need(0, "date", "datetime"), need(1, "date", "datetime")
            unit = unit_of(nodes[2], tuple(_FORMULA_UNIT_MS))
            # Whole milliseconds first (julianday of a date is its midnight UTC), then integer
            # division, which truncates toward zero without float error at exact multiples.
            ms = f"CAST(round((julianday({a}) - julianday({b})) * 86400000.0) AS INTEGER)"
            return f"({ms} / {_FORMULA_UNIT_MS[unit]})", "number"
        if fname == "DATEVALUE":
            return f"sov_parse_date({need(0, 'text')})", "date"
        return f"sov_parse_datetime({need(0, 'text')}, 'UTC')", "datetime"  # DATETIMEVALUE

    sql, typ = comp(node)
    if result_type is not None:
        if result_type not in ("text", "number", "integer", "boolean", "date", "datetime"):
            raise FormulaError("Expected one of: text, number, integer, boolean, date, datetime")
        want = "number" if result_type == "integer" else result_type
        if typ != "null" and typ != want:
            raise _mismatch("resultType", result_type, typ)
    final = result_type or ("text" if typ == "null" else typ)
    if final == "text":
        sql = _blank_text(sql)
    elif final == "integer":
        sql = f"CAST({sql} AS INTEGER)"  # CAST truncates toward zero
    return sql, final, bool(uses_now)


_FILTER_OPS = {"=": "equals", "!=": "notEquals", "<>": "notEquals", ">": "greaterThan",
               "<": "lessThan", ">=": "greaterThanOrEqual", "<=": "lessThanOrEqual"}
_FILTER_FLIP = {">": "<", "<": ">", ">=": "<=", "<=": ">="}
_FILTER_MAX_LEN = 2000


def _filter_error(reason, pos):
    return FormulaError(reason, pos, f"Invalid filterByFormula: {reason} at position {pos}")


def _filter_literal(node):
    """The JSON value of a literal node (string, number, -number, TRUE/FALSE, BLANK())."""
    kind, pos = node[0], node[1]
    if kind == "num":
        return float(node[2]) if "." in node[2] else int(node[2])
    if kind == "str":
        return node[2]
    if kind == "bool":
        return node[2]
    if kind == "neg":
        if node[2][0] != "num":
            raise _filter_error("unexpected token", node[2][1])
        return -_filter_literal(node[2])
    if kind == "call":
        if node[2] not in ("TRUE", "FALSE", "BLANK"):
            reason = "unexpected token" if node[2] in ("AND", "OR", "NOT") else \
                "function not allowed here"
            raise _filter_error(reason, pos)
        if node[3]:
            raise _filter_error("unexpected token", node[3][0][1])
        return {"TRUE": True, "FALSE": False, "BLANK": None}[node[2]]
    if kind == "bin":
        raise _filter_error("unexpected token", node[5])
    raise _filter_error("unexpected token", pos)  # a field where a literal is needed


def formula_to_filter(text, field_family):
    """Translate a filterByFormula string (API.md §4.10) into a §4.8 filter tree."""
    if len(text) > _FILTER_MAX_LEN:
        raise FormulaError("too long", None,
                           f"Invalid filterByFormula: longer than {_FILTER_MAX_LEN} characters")
    try:
        root = parse_formula(text)
    except FormulaError as e:
        raise _filter_error(e.reason, e.position) from None

    def leaf(name, operator, *value):
        return {"field": name, "operator": operator, **({"value": value[0]} if value else {})}

    def comparison(n):
        op, left, right = n[2], n[3], n[4]
        if left[0] == "field" and right[0] == "field":
            raise _filter_error("field-to-field comparison", n[1])
        if left[0] != "field" and right[0] != "field":
            _filter_literal(left)  # a malformed side is reported before the missing field
            _filter_literal(right)
            raise _filter_error("expected a comparison", n[1])
        if right[0] == "field":
            left, right, op = right, left, _FILTER_FLIP.get(op, op)
        value = _filter_literal(right)
        name = left[2]
        family = field_family(name)
        if op in ("=", "!=", "<>"):
            positive = op == "="
            if value is None:
                return leaf(name, "isEmpty" if positive else "isNotEmpty")
            if isinstance(value, bool) and family == "Boolean":
                return leaf(name, "isTrue" if value == positive else "isFalse")
        return leaf(name, _FILTER_OPS[op], value)

    def cond(n):
        kind, pos = n[0], n[1]
        if kind == "field":
            return leaf(n[2], "isTrue" if field_family(n[2]) == "Boolean" else "isNotEmpty")
        if kind == "bool":
            return {"and": []} if n[2] else {"or": []}
        if kind == "bin":
            if n[2] in _FILTER_OPS:
                return comparison(n)
            raise _filter_error("expected a comparison", pos)
        if kind == "call":
            fname, args = n[2], n[3]
            if fname in ("AND", "OR"):
                if not args:
                    raise _filter_error("unexpected token", n[5])
                return {fname.lower(): [cond(a) for a in args]}
            if fname == "NOT":
                if len(args) != 1:
                    raise _filter_error("unexpected token", args[1][1] if args else n[5])
                return {"not": cond(args[0])}
            if fname in ("TRUE", "FALSE") and not args:
                return {"and": []} if fname == "TRUE" else {"or": []}
            if fname == "BLANK" and not args:
                raise _filter_error("expected a comparison", pos)
            _filter_literal(n)  # raises: not allowed, or arguments to a constant
        raise _filter_error("expected a comparison", pos)

    return cond(root)

###############################################################################
# 7. Configuration: validation, normalization and the schema model ############
###############################################################################

TYPE_ALIASES = {"number": "decimal", "boolean": "checkbox", "attachment": "multiple-attachments"}
AI_TYPES = ("ai-categorize", "ai-extract", "ai-generate", "ai-sentiment", "ai-summary", "ai-tag",
            "ai-translate")
TEXT_TYPES = ("single-line-text", "long-text", "rich-text", "email", "url", "phone-number", "code",
              "barcode", "color")
NUMBER_TYPES = ("integer", "decimal", "currency", "percentage", "rating", "progress", "duration",
                "autonumber")
INTEGER_TYPES = ("integer", "rating", "progress", "duration", "autonumber")
CHOICE_TYPES = ("single-select", "status")
SYSTEM_TYPES = ("created-by", "updated-by", "deleted-by", "created-at", "updated-at", "deleted-at")
SYSTEM_COLUMNS = {"created-by": "created_by", "updated-by": "updated_by", "deleted-by": "deleted_by",
                  "created-at": "created_at", "updated-at": "updated_at", "deleted-at": "deleted_at"}
COMPUTED_TYPES = ("formula", "lookup", "rollup", "count", "autonumber")
OPAQUE_TYPES = ("json", "geolocation", "single-attachment", "multiple-attachments")
UNIQUE_TYPES = ("single-line-text", "email", "url", "phone-number", "integer", "decimal", "currency",
                "percentage", "date", "datetime", "single-select", "barcode")
SEARCHABLE_TYPES = ("single-line-text", "long-text", "rich-text", "email", "url", "phone-number",
                    "code", "barcode", "single-select", "status", "multi-select")
FAMILY_OPERATORS = {
    "Text": {"equals", "notEquals", "greaterThan", "lessThan", "greaterThanOrEqual",
             "lessThanOrEqual", "contains", "notContains", "startsWith", "endsWith", "isNull",
             "isNotNull", "isEmpty", "isNotEmpty", "in", "notIn"},
    "Choice": {"equals", "notEquals", "contains", "notContains", "startsWith", "endsWith", "isNull",
               "isNotNull", "isEmpty", "isNotEmpty", "in", "notIn"},
    "Number": {"equals", "notEquals", "greaterThan", "lessThan", "greaterThanOrEqual",
               "lessThanOrEqual", "isNull", "isNotNull", "isEmpty", "isNotEmpty", "in", "notIn"},
    "Date": {"equals", "notEquals", "greaterThan", "lessThan", "greaterThanOrEqual",
             "lessThanOrEqual", "isNull", "isNotNull", "isEmpty", "isNotEmpty", "in", "notIn"},
    "Boolean": {"equals", "notEquals", "isTrue", "isFalse"},
    "Link": {"equals", "notEquals", "isNull", "isNotNull", "isEmpty", "isNotEmpty", "in", "notIn"},
    "Multi": {"equals", "notEquals", "contains", "notContains", "isNull", "isNotNull", "isEmpty",
              "isNotEmpty", "in", "notIn"},
    "Opaque": {"isNull", "isNotNull", "isEmpty", "isNotEmpty"},
}
ALL_OPERATORS = set().union(*FAMILY_OPERATORS.values())
UNARY_OPERATORS = {"isNull", "isNotNull", "isEmpty", "isNotEmpty", "isTrue", "isFalse"}
SORTABLE_FAMILIES = ("Text", "Choice", "Number", "Date", "Boolean", "Link")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
IDENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
APP_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$")
VIEW_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIME_PATTERN = re.compile(r"^[a-z0-9!#$&^_.+-]+/([a-z0-9!#$&^_.+-]+|\*)$")
DURATION = re.compile(r"^([0-9]+)([smhd])$")
ORIGIN = re.compile(r"^https?://[^/\s?#]+$")

_META = ("meta",)   # option kept as given, no validation (display metadata)
_NUM = ("num", None)
TYPE_OPTIONS = {
    "single-line-text": {"maxLength": ("int", 1, 10000, 255)},
    "long-text": {"maxLength": ("int", 1, 1000000, 100000)},
    "rich-text": {"maxLength": ("int", 1, 1000000, 100000), "toolbar": _META, "placeholder": _META},
    "email": {}, "url": {}, "phone-number": {},
    "code": {"language": ("str", "required"), "lineNumbers": _META, "tabSize": ("int", 1, 8, None),
             "maxLength": ("int", 1, 1000000, 100000)},
    "integer": {"min": _NUM, "max": _NUM},
    "decimal": {"precision": ("int", 0, 10, None), "min": _NUM, "max": _NUM},
    "currency": {"currency": ("code3", "required"), "precision": ("int", 0, 10, 2),
                 "symbolPosition": ("enum", ("before", "after"), None), "negativeFormat": _META,
                 "thousandsSeparator": _META, "min": _NUM, "max": _NUM},
    "percentage": {"precision": ("int", 0, 10, None), "min": _NUM, "max": _NUM},
    "rating": {"max": ("int", 1, 10, 5), "style": _META},
    "progress": {"color": _META},
    "duration": {"min": ("num", 0), "max": _NUM,
                 "displayFormat": ("enum", ("h:mm", "h:mm:ss", "decimal"), None)},
    "date": {"dateFormat": _META, "format": _META},
    "datetime": {"timeZone": ("tz", "UTC"), "dateFormat": _META, "timeFormat": _META},
    "time": {"timeFormat": _META},
    "checkbox": {},
    "single-select": {"options": ("options",)},
    "status": {"options": ("options",)},
    "multi-select": {"options": ("options",), "maxSelections": ("maxsel",)},
    "relationship": {"relatedTable": ("str", "required"),
                     "relationType": ("enum", ("many-to-one", "many-to-many", "one-to-many"), None),
                     "relatedField": ("str", None), "onDelete": ("enum", ("set-null", "restrict", "cascade"), None),
                     "displayField": _META, "limitToView": _META, "reciprocalField": _META},
    "lookup": {"relationshipField": ("str", "required"), "relatedField": ("str", "required")},
    "rollup": {"relationshipField": ("str", "required"), "relatedField": ("str", "required"),
               "aggregation": ("enum", ("sum", "avg", "min", "max", "count", "countAll", "concat"),
                               "required")},
    "count": {"relationshipField": ("str", "required")},
    "formula": {"formula": ("formula",),
                "resultType": ("enum", ("text", "number", "integer", "boolean", "date", "datetime"), None)},
    "autonumber": {"startFrom": ("int", 1, MAX_SAFE_INTEGER, 1), "prefix": ("str", None),
                   "digits": ("int", 1, 10, None)},
    "single-attachment": {"allowedFileTypes": ("mimes",), "maxFileSize": ("int", 0, MAX_SAFE_INTEGER, None)},
    "multiple-attachments": {"allowedFileTypes": ("mimes",), "maxFileSize": ("int", 0, MAX_SAFE_INTEGER, None),
                             "maxFiles": ("int", 1, MAX_SAFE_INTEGER, None)},
    "barcode": {"format": ("enum", ("CODE-128", "CODE-39", "EAN-13", "EAN-8", "UPC-A", "UPC-E"), "CODE-128")},
    "color": {}, "geolocation": {}, "json": {"schema": _META},
    "array": {"itemType": ("enum", ("text", "number", "integer", "boolean"), "text"),
              "maxItems": ("int", 1, 1000000, 1000)},
    "user": {"allowMultiple": ("bool", False)},
    "created-by": {}, "updated-by": {}, "deleted-by": {}, "created-at": {}, "updated-at": {},
    "deleted-at": {},
    "button": {"label": ("str", "required"), "action": ("action",)},
}
FIELD_COMMON_KEYS = ("id", "name", "type", "description", "required", "unique", "indexed", "default")
TABLE_KEYS = ("id", "name", "description", "primaryField", "fields", "permissions",
              "rowLevelPermissions", "views", "indexes", "unique")
PERMISSION_ACTIONS = ("read", "comment", "create", "update", "delete", "restore", "permanentDelete")
ROW_ACTIONS = ("read", "create", "update", "delete", "write")
STRATEGY_OPTIONS = {
    "emailAndPassword": {"minPasswordLength": (6, 128, 8), "maxPasswordLength": (None, 256, 128),
                         "requireEmailVerification": False, "autoSignIn": True},
    "magicLink": {"expirationMinutes": (1, 1440, 15)},
    "emailOtp": {"expirationMinutes": (1, 60, 5), "length": (4, 10, 6)},
    "oauth": {"providers": None},
}
ARGON2_PROFILES = {"owasp": (2, 19456, 1), "rfc9106": (3, 65536, 4), "test": (1, 8, 1)}
ANALYTICS_DEFAULTS = {"enabled": True, "retentionDays": 365, "excludedPaths": [],
                      "respectDoNotTrack": True, "sessionTimeoutMinutes": 30, "allowedHosts": None}
EMAIL_TEMPLATES = ("verifyEmail", "resetPassword", "magicLink", "emailOtp", "organizationInvitation")
PROVIDER_PRESETS = ("google", "github", "microsoft", "gitlab")


def _jq(x):
    """json_quote that keeps SQL NULL as NULL (json_quote(NULL) is the text 'null')."""
    return f"nullif(json_quote({x}), 'null')"


def _join(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _num_text(x):
    return sov_num_text(x) if isinstance(x, (int, float)) else str(x)


class _Checker:
    """Collects errors, warnings and ignored key paths while walking a configuration document."""

    def __init__(self):
        self.errors, self.warnings, self.ignored = [], [], []

    def error(self, path, message):
        self.errors.append({"path": path, "message": message})

    def warn(self, path, message, **extra):
        self.warnings.append({"path": path, "message": message, **extra})

    def keys(self, obj, path, honoured, rejected=()):
        """Report typos of honoured keys as errors and remember other unknown keys as ignored."""
        for key in obj:
            if key in honoured:
                continue
            if key in rejected:
                continue
            near = closest_key(key, honoured) if isinstance(key, str) else None
            if near:
                self.error(_join(path, key), f"Unknown key '{key}' (did you mean '{near}'?)")
            else:
                self.ignored.append(_join(path, key))

    def mapping(self, value, path):
        if not isinstance(value, dict):
            self.error(path, "Expected a mapping")
            return False
        return True

    def string(self, value, path, max_len=None, allow_empty=False):
        if not isinstance(value, str):
            self.error(path, "Expected a string")
            return None
        if not value and not allow_empty:
            self.error(path, "Must not be empty")
            return None
        if max_len is not None and len(value) > max_len:
            self.error(path, f"Must be at most {max_len} characters")
            return None
        return str(value)

    def boolean(self, value, path):
        try:
            value = coerce_substituted(value, "boolean")
        except ValueError as exc:
            self.error(path, str(exc))
            return None
        if not isinstance(value, bool):
            self.error(path, "Expected a boolean")
            return None
        return value

    def integer(self, value, path, lo=None, hi=None):
        try:
            value = coerce_substituted(value, "integer")
        except ValueError as exc:
            self.error(path, str(exc))
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, "Expected an integer")
            return None
        return self._range(value, path, lo, hi)

    def number(self, value, path, lo=None, hi=None):
        try:
            value = coerce_substituted(value, "number")
        except ValueError as exc:
            self.error(path, str(exc))
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.error(path, "Expected a number")
            return None
        return self._range(normalize_number(value), path, lo, hi)

    def _range(self, value, path, lo, hi):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(path, f"Must be between {_num_text(lo if lo is not None else -MAX_SAFE_INTEGER)}"
                             f" and {_num_text(hi if hi is not None else MAX_SAFE_INTEGER)}")
            return None
        return value

    def listof(self, value, path, allow_empty=True):
        if not isinstance(value, list):
            self.error(path, "Expected a list")
            return None
        if not value and not allow_empty:
            self.error(path, "Must not be empty")
            return None
        return value

    def choice(self, value, path, allowed):
        if value not in allowed or not isinstance(value, str):
            self.error(path, "Expected one of: " + ", ".join(allowed))
            return None
        return value

    def ident(self, value, path):
        name = self.string(value, path)
        if name is None:
            return None
        if not IDENT.match(name):
            self.error(path, f"Invalid name '{name}': use lower-case letters, digits and underscores,"
                             " starting with a letter")
            return None
        return name

    def duration(self, value, path, lo, hi):
        if isinstance(value, bool):
            self.error(path, "Expected a duration")
            return None
        if isinstance(value, int):
            seconds = value
        elif isinstance(value, str) and DURATION.match(value):
            n, unit = DURATION.match(value).groups()
            seconds = int(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        else:
            self.error(path, "Expected a duration such as 30m, 12h or 7d")
            return None
        return self._range(seconds, path, lo, hi)


def _default_roles(custom):
    """Every role except viewer (CONFIG.md §7.3)."""
    return ["member", *custom]


def normalize_config(doc):
    """Validate a loaded, substituted document → (normalized or None, errors, warnings)."""
    ck = _Checker()
    if not isinstance(doc, dict):
        ck.error("", "Expected a mapping")
        return None, ck.errors, ck.warnings
    out = {}
    for key in doc:
        if key in IGNORED_TOP_LEVEL_KEYS:
            ck.ignored.append(key)
        elif key not in ("name", "version", "description", "tables", "auth", "analytics", "settings"):
            ck.error(key, f"Unknown top-level key '{key}'")
    if "name" not in doc:
        ck.error("name", "Missing required key 'name'")
    else:
        name = ck.string(doc["name"], "name", 214)
        if name is not None and not APP_NAME.match(name):
            ck.error("name", f"Invalid name '{name}': use lower-case letters, digits and -._~,"
                             " starting with a letter or digit")
        out["name"] = name
    version = doc.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    out["version"] = ck.string(version, "version", 50, allow_empty=True) if version is not None else None
    out["description"] = (ck.string(doc["description"], "description", 2000, allow_empty=True)
                          if doc.get("description") is not None else None)
    auth = doc.get("auth")
    custom_roles = []
    if auth is None or auth is False:
        out["auth"] = None
    else:
        out["auth"] = _normalize_auth(ck, auth)
        custom_roles = [r["name"] for r in (out["auth"] or {}).get("roles", [])]
    out["analytics"] = _normalize_analytics(ck, doc.get("analytics", False))
    out["settings"] = _normalize_settings(ck, doc.get("settings"))
    tables = doc.get("tables")
    out["tables"] = []
    if tables is not None and ck.listof(tables, "tables") is not None:
        names, ids = set(), set()
        for i, t in enumerate(tables):
            nt = _normalize_table(ck, t, f"tables[{i}]", out["auth"] is not None, custom_roles)
            if nt is None:
                continue
            if nt["name"] in names:
                ck.error(f"tables[{i}].name", f"Duplicate table name '{nt['name']}'")
            if nt["id"] is not None and nt["id"] in ids:
                ck.error(f"tables[{i}].id", f"Duplicate table id {nt['id']}")
            names.add(nt["name"])
            if nt["id"] is not None:
                ids.add(nt["id"])
            out["tables"].append(nt)
    _resolve_permission_inheritance(ck, out["tables"])
    if ck.ignored:
        order = _document_order(doc)
        ignored = sorted(ck.ignored, key=lambda p: order.get(p, len(order)))
        ck.warnings.insert(0, {"path": "", "message": "ignored unsupported keys: " + ", ".join(ignored)})
    return (out if not ck.errors else None), ck.errors, ck.warnings


def _document_order(doc):
    """{path: position} of every member of a document, in document (pre-)order."""
    order, stack = {}, [("", doc)]
    while stack:
        path, value = stack.pop()
        if path:
            order.setdefault(path, len(order))
        if isinstance(value, dict):
            stack.extend(reversed([(_join(path, k), v) for k, v in value.items() if isinstance(k, str)]))
        elif isinstance(value, list):
            stack.extend(reversed([(_join(path, i), v) for i, v in enumerate(value)]))
    return order


def _normalize_settings(ck, raw):
    out = dict(DEFAULT_SETTINGS, trustedOrigins=[])
    out["rateLimits"] = {"enabled": True, **{k: {"limit": v[0], "window": v[1]}
                                             for k, v in RATE_LIMIT_DEFAULTS.items()}}
    if raw is None:
        return out
    if not ck.mapping(raw, "settings"):
        return out
    ck.keys(raw, "settings", tuple(DEFAULT_SETTINGS) + ("rateLimits",))
    max_page = raw.get("maxPageSize", DEFAULT_SETTINGS["maxPageSize"])
    max_page = max_page if isinstance(max_page, int) and 1 <= max_page <= 10000 else 10000
    ranges = {"defaultPageSize": (1, max_page), "maxPageSize": (1, 10000), "batchLimit": (1, 10000),
              "maxBodyBytes": (1024, 1073741824), "queryTimeoutMs": (100, 600000),
              "historyRetentionDays": (0, 36500), "trashRetentionDays": (0, 36500)}
    for key, (lo, hi) in ranges.items():
        if key in raw:
            v = ck.integer(raw[key], f"settings.{key}", lo, hi)
            if v is not None:
                out[key] = v
    if out["defaultPageSize"] > out["maxPageSize"] and "defaultPageSize" in raw:
        ck.error("settings.defaultPageSize", f"Must be between 1 and {out['maxPageSize']}")
    if "trustedOrigins" in raw:
        out["trustedOrigins"] = _origins(ck, raw["trustedOrigins"], "settings.trustedOrigins")
    rl = raw.get("rateLimits")
    if rl is not None and ck.mapping(rl, "settings.rateLimits"):
        for key, value in rl.items():
            path = f"settings.rateLimits.{key}"
            if key == "enabled":
                v = ck.boolean(value, path)
                out["rateLimits"]["enabled"] = True if v is None else v
            elif key not in RATE_LIMIT_DEFAULTS:
                ck.error(path, f"Unknown rate limit rule '{key}'")
            elif ck.mapping(value, path):
                ck.keys(value, path, ("limit", "window"))
                rule = out["rateLimits"][key]
                if "limit" in value:
                    rule["limit"] = ck.integer(value["limit"], path + ".limit", 0, 1000000) or 0
                if "window" in value:
                    rule["window"] = ck.integer(value["window"], path + ".window", 1, 86400) or rule["window"]
    return out


def _origins(ck, raw, path):
    items = ck.listof(raw, path)
    out = []
    for i, o in enumerate(items or []):
        s = ck.string(o, f"{path}[{i}]")
        if s is not None:
            if not ORIGIN.match(s):
                ck.error(f"{path}[{i}]", f"Invalid origin '{s}': use scheme://host[:port]")
            else:
                out.append(s.lower())
    return out


def _normalize_analytics(ck, raw):
    if raw is None or raw is False:
        return dict(ANALYTICS_DEFAULTS, enabled=False)
    if raw is True:
        return dict(ANALYTICS_DEFAULTS)
    if not ck.mapping(raw, "analytics"):
        return dict(ANALYTICS_DEFAULTS, enabled=False)
    raw = dict(raw)
    if "sessionTimeout" in raw and "sessionTimeoutMinutes" not in raw:
        raw["sessionTimeoutMinutes"] = raw.pop("sessionTimeout")
    ck.keys(raw, "analytics", tuple(ANALYTICS_DEFAULTS) + ("sessionTimeout",))
    out = dict(ANALYTICS_DEFAULTS)
    for key in ("enabled", "respectDoNotTrack"):
        if key in raw:
            v = ck.boolean(raw[key], f"analytics.{key}")
            out[key] = out[key] if v is None else v
    for key, (lo, hi) in {"retentionDays": (1, 3650), "sessionTimeoutMinutes": (1, 240)}.items():
        if key in raw:
            v = ck.integer(raw[key], f"analytics.{key}", lo, hi)
            out[key] = out[key] if v is None else v
    for key in ("excludedPaths", "allowedHosts"):
        if raw.get(key) is not None:
            items = ck.listof(raw[key], f"analytics.{key}")
            vals = [ck.string(x, f"analytics.{key}[{i}]") for i, x in enumerate(items or [])]
            out[key] = [v.lower() if key == "allowedHosts" else v for v in vals if v is not None]
    return out


def _normalize_auth(ck, raw):
    if not ck.mapping(raw, "auth"):
        return None
    ck.keys(raw, "auth", ("strategies", "roles", "defaultRole", "disableSignUp", "allowSignUp",
                          "trustedOrigins", "session", "argon2", "twoFactor", "organization",
                          "emailTemplates"), rejected=("scopeTables",))
    if "scopeTables" in raw:
        ck.error("auth.scopeTables", "scopeTables is not supported")
    out = {"strategies": [], "roles": [], "defaultRole": "member", "disableSignUp": False,
           "trustedOrigins": [], "session": {"expiresIn": 604800, "updateAge": 86400},
           "argon2": {"profile": "owasp"}, "twoFactor": None, "organization": None,
           "emailTemplates": {}}
    strategies = raw.get("strategies")
    if strategies is None:
        ck.error("auth.strategies", "Missing required key 'strategies'")
    elif ck.listof(strategies, "auth.strategies", allow_empty=False) is not None:
        seen = set()
        for i, s in enumerate(strategies):
            ns = _normalize_strategy(ck, s, f"auth.strategies[{i}]")
            if ns is None:
                continue
            if ns["type"] in seen:
                ck.error(f"auth.strategies[{i}]", f"Duplicate strategy '{ns['type']}'")
            seen.add(ns["type"])
            out["strategies"].append(ns)
    for i, r in enumerate(ck.listof(raw.get("roles", []), "auth.roles") or []):
        path = f"auth.roles[{i}]"
        if isinstance(r, dict):
            ck.keys(r, path, ("name", "description"), rejected=("level", "dashboardTier"))
            name, desc = r.get("name"), r.get("description")
        else:
            name, desc = r, None
        name = ck.string(name, path if not isinstance(r, dict) else path + ".name")
        if name is None:
            continue
        if not ROLE_NAME.match(name) or name in BUILTIN_ROLES + ("all", "authenticated"):
            ck.error(path, f"Invalid role name '{name}'")
        elif name in [x["name"] for x in out["roles"]]:
            ck.error(path, f"Duplicate role '{name}'")
        else:
            out["roles"].append({"name": name, "description": desc})
    known = set(BUILTIN_ROLES) | {r["name"] for r in out["roles"]}
    if "defaultRole" in raw:
        role = ck.string(raw["defaultRole"], "auth.defaultRole")
        if role is not None and role not in known:
            ck.error("auth.defaultRole", f"Unknown role '{role}'")
        elif role is not None:
            out["defaultRole"] = role
    disable = ck.boolean(raw["disableSignUp"], "auth.disableSignUp") if "disableSignUp" in raw else None
    allow = ck.boolean(raw["allowSignUp"], "auth.allowSignUp") if "allowSignUp" in raw else None
    if disable is not None and allow is not None and disable == allow:
        ck.error("auth.allowSignUp", "allowSignUp contradicts disableSignUp")
    out["disableSignUp"] = disable if disable is not None else (not allow if allow is not None else False)
    if "trustedOrigins" in raw:
        out["trustedOrigins"] = _origins(ck, raw["trustedOrigins"], "auth.trustedOrigins")
    session = raw.get("session")
    if session is not None and ck.mapping(session, "auth.session"):
        ck.keys(session, "auth.session", ("expiresIn", "updateAge"))
        if "expiresIn" in session:
            v = ck.duration(session["expiresIn"], "auth.session.expiresIn", 300, 365 * 86400)
            out["session"]["expiresIn"] = v or out["session"]["expiresIn"]
        if "updateAge" in session:
            v = ck.duration(session["updateAge"], "auth.session.updateAge", 0, out["session"]["expiresIn"])
            out["session"]["updateAge"] = out["session"]["updateAge"] if v is None else v
        if out["session"]["updateAge"] > out["session"]["expiresIn"]:
            out["session"]["updateAge"] = out["session"]["expiresIn"]
    argon = raw.get("argon2")
    if argon is not None and ck.mapping(argon, "auth.argon2"):
        ck.keys(argon, "auth.argon2", ("profile", "timeCost", "memoryCost", "parallelism"))
        if "profile" in argon:
            out["argon2"]["profile"] = ck.choice(argon["profile"], "auth.argon2.profile",
                                                 tuple(ARGON2_PROFILES)) or "owasp"
        for key, (lo, hi) in {"timeCost": (1, 10), "memoryCost": (8, 4194304), "parallelism": (1, 16)}.items():
            if key in argon:
                v = ck.integer(argon[key], f"auth.argon2.{key}", lo, hi)
                if v is not None:
                    out["argon2"][key] = v
    tf = raw.get("twoFactor")
    if tf is not None and tf is not False:
        out["twoFactor"] = {"issuer": None, "digits": 6, "period": 30, "backupCodes": 10}
        if tf is not True and ck.mapping(tf, "auth.twoFactor"):
            ck.keys(tf, "auth.twoFactor", ("issuer", "digits", "period", "backupCodes"))
            if tf.get("issuer") is not None:
                out["twoFactor"]["issuer"] = ck.string(tf["issuer"], "auth.twoFactor.issuer")
            for key, (lo, hi) in {"digits": (6, 8), "period": (15, 120), "backupCodes": (1, 20)}.items():
                if key in tf:
                    v = ck.integer(tf[key], f"auth.twoFactor.{key}", lo, hi)
                    out["twoFactor"][key] = out["twoFactor"][key] if v is None else v
        if "emailAndPassword" not in [s["type"] for s in out["strategies"]]:
            ck.error("auth.twoFactor", "twoFactor requires the emailAndPassword strategy")
    org = raw.get("organization")
    if org is not None and org is not False:
        out["organization"] = {"allowUserToCreateOrganization": True, "membershipLimit": 100,
                               "invitationExpiresIn": 172800, "invitationUrl": None}
        if org is not True and ck.mapping(org, "auth.organization"):
            ck.keys(org, "auth.organization", tuple(out["organization"]))
            if "allowUserToCreateOrganization" in org:
                v = ck.boolean(org["allowUserToCreateOrganization"], "auth.organization.allowUserToCreateOrganization")
                out["organization"]["allowUserToCreateOrganization"] = True if v is None else v
            if "membershipLimit" in org:
                out["organization"]["membershipLimit"] = ck.integer(
                    org["membershipLimit"], "auth.organization.membershipLimit", 1, 100000) or 100
            if "invitationExpiresIn" in org:
                out["organization"]["invitationExpiresIn"] = ck.duration(
                    org["invitationExpiresIn"], "auth.organization.invitationExpiresIn", 60, 365 * 86400) or 172800
            if org.get("invitationUrl") is not None:
                url = ck.string(org["invitationUrl"], "auth.organization.invitationUrl")
                if url is not None and "{id}" not in url:
                    ck.error("auth.organization.invitationUrl", "invitationUrl must contain {id}")
                out["organization"]["invitationUrl"] = url
    templates = raw.get("emailTemplates")
    if templates is not None and ck.mapping(templates, "auth.emailTemplates"):
        ck.keys(templates, "auth.emailTemplates", EMAIL_TEMPLATES)
        for key in EMAIL_TEMPLATES:
            t = templates.get(key)
            path = f"auth.emailTemplates.{key}"
            if t is not None and ck.mapping(t, path):
                ck.keys(t, path, ("subject", "text"))
                out["emailTemplates"][key] = {
                    "subject": ck.string(t.get("subject"), path + ".subject") if "subject" in t else None,
                    "text": ck.string(t.get("text"), path + ".text") if "text" in t else None}
        if "emailOtp" in templates and "emailOtp" not in [s["type"] for s in out["strategies"]]:
            out["strategies"].append({"type": "emailOtp", "expirationMinutes": 5, "length": 6})
    return out


def _normalize_strategy(ck, raw, path):
    aliases = {"emailPassword": "emailAndPassword"}
    if isinstance(raw, str):
        raw = {"type": raw}
    if not ck.mapping(raw, path):
        return None
    kind = aliases.get(raw.get("type"), raw.get("type"))
    if kind is None:
        ck.error(path + ".type", "Missing required key 'type'")
        return None
    if ck.choice(kind, path + ".type", tuple(STRATEGY_OPTIONS)) is None:
        return None
    spec = STRATEGY_OPTIONS[kind]
    ck.keys(raw, path, ("type",) + tuple(spec))
    out = {"type": kind}
    for key, rule in spec.items():
        if key == "providers":
            out["providers"] = _normalize_providers(ck, raw.get("providers"), path + ".providers")
        elif isinstance(rule, bool):
            v = ck.boolean(raw[key], f"{path}.{key}") if key in raw else None
            out[key] = rule if v is None else v
        else:
            lo, hi, default = rule
            if key == "maxPasswordLength":
                lo = out.get("minPasswordLength", 8)
            v = ck.integer(raw[key], f"{path}.{key}", lo, hi) if key in raw else None
            out[key] = default if v is None else v
    return out


def _normalize_providers(ck, raw, path):
    out = []
    if raw is None:
        ck.error(path, "Missing required key 'providers'")
        return out
    if ck.listof(raw, path, allow_empty=False) is None:
        return out
    for i, p in enumerate(raw):
        ppath = f"{path}[{i}]"
        if isinstance(p, str):
            p = {"id": p}
        if not ck.mapping(p, ppath):
            continue
        ck.keys(p, ppath, ("id", "type", "clientId", "clientSecret", "issuer", "authorizationUrl",
                           "tokenUrl", "userInfoUrl", "scopes", "mapping"))
        pid = ck.string(p.get("id"), ppath + ".id")
        if pid is None:
            continue
        if not re.match(r"^[a-z][a-z0-9-]{0,31}$", pid):
            ck.error(ppath + ".id", f"Invalid provider id '{pid}'")
        if pid in [x["id"] for x in out]:
            ck.error(ppath, f"Duplicate provider '{pid}'")
        kind = p.get("type", pid if pid in PROVIDER_PRESETS else None)
        if kind is None:
            ck.error(ppath + ".type", "Missing required key 'type'")
            continue
        kind = ck.choice(kind, ppath + ".type", PROVIDER_PRESETS + ("oidc", "oauth2"))
        entry = {"id": pid, "type": kind, "clientId": p.get("clientId"), "clientSecret": p.get("clientSecret"),
                 "issuer": p.get("issuer"), "authorizationUrl": p.get("authorizationUrl"),
                 "tokenUrl": p.get("tokenUrl"), "userInfoUrl": p.get("userInfoUrl"),
                 "scopes": p.get("scopes"), "mapping": p.get("mapping")}
        if kind == "oidc" and not entry["issuer"]:
            ck.error(ppath + ".issuer", "Missing required key 'issuer'")
        if kind == "oauth2":
            for key in ("authorizationUrl", "tokenUrl", "userInfoUrl"):
                if not entry[key]:
                    ck.error(f"{ppath}.{key}", f"Missing required key '{key}'")
        out.append(entry)
    return out


def _normalize_table(ck, raw, path, auth, custom_roles):
    if not ck.mapping(raw, path):
        return None
    ck.keys(raw, path, TABLE_KEYS)
    out = {"id": None, "name": None, "description": None, "primaryField": None, "fields": [],
           "permissions": {}, "rowLevelPermissions": {}, "views": [], "indexes": []}
    if "id" in raw:
        out["id"] = ck.integer(raw["id"], path + ".id", 1, MAX_SAFE_INTEGER)
    if "name" not in raw:
        ck.error(path, "Missing required key 'name'")
        return None
    out["name"] = ck.ident(raw["name"], path + ".name")
    if out["name"] is None:
        return None
    if raw.get("description") is not None:
        out["description"] = ck.string(raw["description"], path + ".description", 1000, allow_empty=True)
    fields = raw.get("fields")
    if fields is None:
        ck.error(path, "Missing required key 'fields'")
        fields = []
    elif ck.listof(fields, path + ".fields", allow_empty=False) is None:
        fields = []
    names, ids = set(), set()
    for i, f in enumerate(fields):
        nf = _normalize_field(ck, f, f"{path}.fields[{i}]", auth)
        if nf is None:
            continue
        if nf["name"] in names:
            ck.error(f"{path}.fields[{i}].name", f"Duplicate field name '{nf['name']}'")
        if nf["id"] is not None and nf["id"] in ids:
            ck.error(f"{path}.fields[{i}].id", f"Duplicate field id {nf['id']}")
        names.add(nf["name"])
        if nf["id"] is not None:
            ids.add(nf["id"])
        out["fields"].append(nf)
    by_name = {f["name"]: f for f in out["fields"]}
    if raw.get("primaryField") is not None:
        pf = ck.string(raw["primaryField"], path + ".primaryField")
        if pf is not None and pf not in by_name:
            ck.error(path + ".primaryField", f"Unknown field '{pf}'")
        out["primaryField"] = pf
    else:
        out["primaryField"] = next((f["name"] for f in out["fields"] if f["type"] != "button"), None)
    if raw.get("permissions") is not None:
        out["permissions"] = _normalize_permissions(ck, raw["permissions"], path + ".permissions",
                                                    custom_roles, by_name)
    if raw.get("rowLevelPermissions") is not None:
        out["rowLevelPermissions"] = _normalize_row_rules(ck, raw["rowLevelPermissions"],
                                                          path + ".rowLevelPermissions", by_name)
    views = raw.get("views")
    if views is not None and ck.listof(views, path + ".views") is not None:
        seen, default_seen = set(), False
        for i, v in enumerate(views):
            nv = _normalize_view(ck, v, f"{path}.views[{i}]", custom_roles)
            if nv is None:
                continue
            if str(nv["id"]) in seen:
                ck.error(f"{path}.views[{i}].id", f"Duplicate view id '{nv['id']}'")
            seen.add(str(nv["id"]))
            if nv["isDefault"]:
                if default_seen:
                    ck.error(f"{path}.views[{i}].isDefault", "Only one view can be the default")
                default_seen = True
            out["views"].append(nv)
    entries = []
    if raw.get("indexes") is not None and ck.listof(raw["indexes"], path + ".indexes") is not None:
        entries += [(f"{path}.indexes[{i}]", x, False) for i, x in enumerate(raw["indexes"])]
    if raw.get("unique") is not None and ck.listof(raw["unique"], path + ".unique") is not None:
        entries += [(f"{path}.unique[{i}]", x, True) for i, x in enumerate(raw["unique"])]
    for ipath, entry, forced_unique in entries:
        ni = _normalize_index(ck, entry, ipath, by_name, out["indexes"], forced_unique)
        if ni is not None:
            out["indexes"].append(ni)
    return out


def _normalize_index(ck, raw, path, by_name, existing, forced_unique):
    if not ck.mapping(raw, path):
        return None
    ck.keys(raw, path, ("name", "fields", "unique"))
    fields = ck.listof(raw.get("fields"), path + ".fields", allow_empty=False) if "fields" in raw else None
    if "fields" not in raw:
        ck.error(path, "Missing required key 'fields'")
    if not fields:
        return None
    if len(fields) > 8:
        ck.error(path + ".fields", "Must be between 1 and 8 fields")
        return None
    names = []
    for i, name in enumerate(fields):
        fpath = f"{path}.fields[{i}]"
        if not isinstance(name, str):
            ck.error(fpath, "Expected a string")
            return None
        f = by_name.get(name)
        if f is None:
            ck.error(fpath, f"Unknown field '{name}'")
            return None
        if name in names:
            ck.error(fpath, f"Duplicate field '{name}'")
            return None
        if not _indexable(f):
            ck.error(fpath, f"Field '{name}' cannot be indexed")
            return None
        names.append(name)
    unique = forced_unique or (ck.boolean(raw["unique"], path + ".unique") if "unique" in raw else False)
    taken = {x["name"] for x in existing}
    if raw.get("name") is not None:
        name = ck.ident(raw["name"], path + ".name")
        if name is None:
            return None
        if name in taken:
            ck.error(path + ".name", f"Duplicate index name '{name}'")
            return None
    else:
        base = "_".join(names)[:63]
        name, n = base, 1
        while name in taken:
            n += 1
            suffix = f"_{n}"
            name = base[:63 - len(suffix)] + suffix
    return {"name": name, "fields": names, "unique": bool(unique)}


def _indexable(f):
    t = f["type"]
    if t == "relationship":
        return f["relationType"] == "many-to-one" and f["relatedField"] is None
    if t == "user":
        return not f["allowMultiple"]
    return t in TEXT_TYPES + NUMBER_TYPES + CHOICE_TYPES + ("date", "datetime", "time", "checkbox")


def _normalize_field(ck, raw, path, auth):
    if not ck.mapping(raw, path):
        return None
    for key in ("name", "type"):
        if key not in raw:
            ck.error(path, f"Missing required key '{key}'")
            return None
    name = ck.ident(raw["name"], path + ".name")
    if name in ("id", "fields"):
        ck.error(path + ".name", f"Field name '{name}' is reserved")
        name = None
    ftype = raw["type"]
    if not isinstance(ftype, str):
        ck.error(path + ".type", "Expected a string")
        return None
    ftype = TYPE_ALIASES.get(ftype, ftype)
    raw = dict(raw)
    if ftype == "date" and raw.get("includeTime") is True:
        ftype = "datetime"
    if "timezone" in raw and "timeZone" not in raw:
        raw["timeZone"] = raw.pop("timezone")
    if ftype in AI_TYPES:
        ck.error(path + ".type", f"AI field types are not supported: '{ftype}'")
        return None
    if ftype not in TYPE_OPTIONS:
        ck.error(path + ".type", f"Unknown field type '{ftype}'")
        return None
    if name is None:
        return None
    if ftype in ("user",) + SYSTEM_TYPES[:3] and not auth:
        ck.error(path + ".type", f"Field type '{ftype}' requires auth")
    spec = TYPE_OPTIONS[ftype]
    extra = {"date": ("includeTime",), "datetime": ("includeTime", "timezone"),
             "relationship": ("allowMultiple",)}.get(ftype, ())
    ck.keys(raw, path, FIELD_COMMON_KEYS + tuple(spec) + extra)
    out = {"id": None, "name": name, "type": ftype, "description": None, "required": False,
           "unique": False, "indexed": False, "readOnly": False, "default": None}
    if "id" in raw:
        out["id"] = ck.integer(raw["id"], path + ".id", 1, MAX_SAFE_INTEGER)
    if raw.get("description") is not None:
        out["description"] = ck.string(raw["description"], path + ".description", 1000, allow_empty=True)
    for key in ("required", "unique", "indexed"):
        if key in raw:
            out[key] = bool(ck.boolean(raw[key], f"{path}.{key}"))
    for key, rule in spec.items():
        out[key] = _field_option(ck, raw, key, rule, f"{path}.{key}", out)
    if ftype == "relationship":
        _normalize_relationship(ck, raw, path, out)
    computed = ftype in COMPUTED_TYPES or (ftype == "relationship" and out["relatedField"] is not None)
    out["readOnly"] = computed or ftype in SYSTEM_TYPES or ftype == "button"
    if out["required"] and (out["readOnly"] or ftype == "checkbox"):
        ck.error(path + ".required", f"required is not supported for field type '{ftype}'")
    uniq_ok = ftype in UNIQUE_TYPES or (ftype == "relationship" and out["relationType"] == "many-to-one"
                                        and not computed) or (ftype == "user" and not out["allowMultiple"])
    if out["unique"] and not uniq_ok:
        ck.error(path + ".unique", f"unique is not supported for field type '{ftype}'")
    if out["indexed"] and (computed or not _indexable(out)):
        ck.error(path + ".indexed", f"indexed is not supported for field type '{ftype}'")
    if "default" in raw and raw["default"] is not None:
        no_default = computed or ftype in SYSTEM_TYPES + ("button", "relationship", "user",
                                                          "single-attachment", "multiple-attachments")
        if no_default:
            ck.error(path + ".default", f"default is not supported for field type '{ftype}'")
        elif (ftype, raw["default"]) in (("datetime", "now"), ("date", "today")):
            out["default"] = raw["default"]
        else:
            try:
                value = validate_value(out, raw["default"])
            except ValueProblem as exc:
                ck.error(path + ".default", f"Invalid default: {exc.message}")
            else:
                out["default"] = value
    elif ftype == "checkbox":
        out["default"] = False
    return out


def _field_option(ck, raw, key, rule, path, out):
    kind = rule[0]
    present = key in raw and raw[key] is not None
    if kind == "meta":
        return raw.get(key)
    if kind == "int":
        _, lo, hi, default = rule
        v = ck.integer(raw[key], path, lo, hi) if present else None
        return default if v is None else v
    if kind == "num":
        lo = rule[1]
        v = ck.number(raw[key], path, lo) if present else None
        return (lo if key == "min" and lo is not None else None) if v is None else v
    if kind in ("str", "code3"):
        if not present:
            if rule[1] == "required":
                ck.error(path.rsplit(".", 1)[0], f"Missing required key '{key}'")
            return None
        v = ck.string(raw[key], path)
        if kind == "code3" and v is not None and not re.match(r"^[A-Z]{3}$", v):
            ck.error(path, f"Invalid currency code '{v}'")
        return v
    if kind == "enum":
        _, allowed, default = rule
        if not present:
            if default == "required":
                ck.error(path.rsplit(".", 1)[0], f"Missing required key '{key}'")
                return None
            return default
        value = raw[key]
        if key == "aggregation" and value == "average":
            value = "avg"
        return ck.choice(value, path, allowed)
    if kind == "bool":
        v = ck.boolean(raw[key], path) if present else None
        return rule[1] if v is None else v
    if kind == "tz":
        if not present:
            return rule[1]
        v = ck.string(raw[key], path)
        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                ck.error(path, f"Unknown time zone '{v}'")
        return v or rule[1]
    if kind == "options":
        if not present:
            ck.error(path.rsplit(".", 1)[0], f"Missing required key '{key}'")
            return []
        return _select_options(ck, raw[key], path)
    if kind == "maxsel":
        if not present:
            return None
        return ck.integer(raw[key], path, 1, max(1, len(out.get("options") or [])))
    if kind == "formula":
        if not present:
            ck.error(path.rsplit(".", 1)[0], "Missing required key 'formula'")
            return None
        return ck.string(raw[key], path, 2000)
    if kind == "mimes":
        if not present:
            return None
        items = ck.listof(raw[key], path) or []
        vals = []
        for i, m in enumerate(items):
            s = ck.string(m, f"{path}[{i}]")
            if s is not None and not MIME_PATTERN.match(s.lower()):
                ck.error(f"{path}[{i}]", f"Invalid file type '{s}'")
            elif s is not None:
                vals.append(s.lower())
        return vals
    if kind == "action":
        if not present:
            ck.error(path.rsplit(".", 1)[0], "Missing required key 'action'")
            return None
        a = raw[key]
        if not ck.mapping(a, path):
            return None
        t = ck.choice(a.get("type"), path + ".type", ("url", "automation"))
        if t == "url":
            u = a.get("url")
            if not isinstance(u, str) or not re.match(r"^https?://[^\s/?#]+", u):
                ck.error(path + ".url", "Expected an http or https URL")
        elif t == "automation":
            ck.string(a.get("automation"), path + ".automation")
        return a
    raise AssertionError(kind)


def _select_options(ck, raw, path):
    items = ck.listof(raw, path, allow_empty=False)
    out, seen = [], set()
    for i, o in enumerate(items or []):
        opath = f"{path}[{i}]"
        if isinstance(o, dict):
            ck.keys(o, opath, ("value", "label", "color"))
            value, label, color = o.get("value"), o.get("label"), o.get("color")
        else:
            value, label, color = o, None, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = sov_num_text(value)
        value = ck.string(value, opath if not isinstance(o, dict) else opath + ".value", 255)
        if value is None:
            continue
        if value in seen:
            ck.error(opath, f"Duplicate option value '{value}'")
            continue
        seen.add(value)
        if color is not None and (not isinstance(color, str) or not re.match(r"^#[0-9A-Fa-f]{6}$", color)):
            ck.error(opath + ".color", "Expected a color in #RRGGBB format")
            color = None
        out.append({"value": value, "label": label if isinstance(label, str) else value,
                    "color": color})
    return out


def _normalize_relationship(ck, raw, path, out):
    if out["relationType"] is None and raw.get("allowMultiple") is True:
        out["relationType"] = "many-to-many"
    if out["relationType"] == "one-to-many" and out["relatedField"] is None:
        ck.error(path + ".relatedField", "one-to-many requires relatedField")
    if out["relatedField"] is not None:
        if "onDelete" in raw:
            ck.error(path + ".onDelete", "onDelete is only allowed on owning relationship fields")
        out["onDelete"] = None
    else:
        out["relationType"] = out["relationType"] or "many-to-one"
        out["onDelete"] = out["onDelete"] or "set-null"


def _normalize_permission_value(ck, value, path, custom_roles):
    known = set(BUILTIN_ROLES) | set(custom_roles)
    if value in ("all", "authenticated"):
        return value
    if isinstance(value, list):
        out = []
        for i, r in enumerate(value):
            if not isinstance(r, str):
                ck.error(f"{path}[{i}]", "Expected a string")
            elif r.startswith("group:"):
                ck.error(f"{path}[{i}]", "Group permissions are not supported")
            elif r not in known:
                ck.error(f"{path}[{i}]", f"Unknown role '{r}'")
            elif r not in out:
                out.append(r)
        return out
    ck.error(path, "Expected one of: all, authenticated, or a list of roles")
    return None


def _normalize_permissions(ck, raw, path, custom_roles, by_name):
    if not ck.mapping(raw, path):
        return {}
    ck.keys(raw, path, PERMISSION_ACTIONS + ("inherit", "override", "fields"), rejected=("public",))
    out = {}
    for action in PERMISSION_ACTIONS:
        if action in raw:
            v = _normalize_permission_value(ck, raw[action], f"{path}.{action}", custom_roles)
            if v is not None:
                out[action] = v
    if raw.get("inherit") is not None:
        out["inherit"] = ck.string(raw["inherit"], path + ".inherit")
    if raw.get("override") is not None and ck.mapping(raw["override"], path + ".override"):
        ck.keys(raw["override"], path + ".override", PERMISSION_ACTIONS)
        out["override"] = {}
        for action in PERMISSION_ACTIONS:
            if action in raw["override"]:
                v = _normalize_permission_value(ck, raw["override"][action], f"{path}.override.{action}",
                                                custom_roles)
                if v is not None:
                    out["override"][action] = v
    if raw.get("fields") is not None and ck.listof(raw["fields"], path + ".fields") is not None:
        out["fields"], seen = [], set()
        for i, fp in enumerate(raw["fields"]):
            fpath = f"{path}.fields[{i}]"
            if not ck.mapping(fp, fpath):
                continue
            ck.keys(fp, fpath, ("field", "read", "write"))
            name = fp.get("field")
            if name not in by_name:
                ck.error(fpath + ".field", f"Unknown field '{name}'")
                continue
            if name in seen:
                ck.error(fpath + ".field", f"Duplicate field permission for '{name}'")
                continue
            seen.add(name)
            entry = {"field": name}
            for key in ("read", "write"):
                if key in fp:
                    entry[key] = _normalize_permission_value(ck, fp[key], f"{fpath}.{key}", custom_roles)
            if "write" in entry and by_name[name]["readOnly"]:
                ck.error(fpath + ".write", "write is not applicable to a read-only field")
            out["fields"].append(entry)
    return out


def _resolve_permission_inheritance(ck, tables):
    by_name = {t["name"]: t for t in tables}
    for i, t in enumerate(tables):
        chain, cur, inherited = [t["name"]], t, {}
        while cur["permissions"].get("inherit"):
            parent = cur["permissions"]["inherit"]
            if parent not in by_name:
                ck.error(f"tables[{i}].permissions.inherit", f"Unknown table '{parent}'")
                break
            if parent in chain:
                ck.error(f"tables[{i}].permissions.inherit",
                         "Circular permission inheritance: " + " -> ".join(chain + [parent]))
                break
            chain.append(parent)
            cur = by_name[parent]
            for action in PERMISSION_ACTIONS:
                if action in cur["permissions"] and action not in inherited:
                    inherited[action] = cur["permissions"][action]
        t["_effective"] = {a: t["permissions"].get(a, inherited.get(a)) for a in PERMISSION_ACTIONS}
        t["_effective"].update(t["permissions"].get("override") or {})


def _normalize_row_rules(ck, raw, path, by_name):
    if not ck.mapping(raw, path):
        return {}
    ck.keys(raw, path, ROW_ACTIONS)
    out = {}
    for action in ROW_ACTIONS:
        if action in raw:
            cond = raw[action]
            cpath = f"{path}.{action}"
            if isinstance(cond, dict) and set(cond) == {"when"}:
                cond, cpath = cond["when"], cpath + ".when"
            c = _normalize_condition(ck, cond, cpath, by_name, 0)
            if c is not None:
                out[action] = c
    return out


CURRENT_USER_REFS = ("$currentUser.id", "$currentUser.email", "$currentUser.role")


def _normalize_condition(ck, raw, path, by_name, depth):
    if not ck.mapping(raw, path):
        return None
    if "conditions" in raw or "logic" in raw:
        ck.keys(raw, path, ("logic", "conditions"))
        logic = raw.get("logic", "and")
        if ck.choice(logic, path + ".logic", ("and", "or")) is None:
            return None
        conds = ck.listof(raw.get("conditions"), path + ".conditions", allow_empty=False)
        if not conds or depth > 8:
            return None
        items = [_normalize_condition(ck, c, f"{path}.conditions[{i}]", by_name, depth + 1)
                 for i, c in enumerate(conds)]
        return {"logic": logic, "conditions": [c for c in items if c is not None]}
    ck.keys(raw, path, ("field", "operator", "value"))
    name, op, value = raw.get("field"), raw.get("operator"), raw.get("value")
    if name in ("id", "createdBy", "updatedBy"):
        pass
    elif name not in by_name:
        ck.error(path + ".field", f"Unknown field '{name}'")
        return None
    else:
        f = by_name[name]
        if f["readOnly"] or f["type"] in OPAQUE_TYPES + ("button",):
            ck.error(path + ".field", f"Field '{name}' cannot be used in a row-level rule")
            return None
    if op not in ("eq", "neq", "in", "notIn"):
        ck.error(path + ".operator", f"Unknown operator '{op}'")
        return None
    if isinstance(value, str) and value.startswith("$currentUser."):
        if value not in CURRENT_USER_REFS:
            ck.error(path + ".value", f"Unknown current-user reference '{value}'")
            return None
    elif op in ("in", "notIn"):
        if not isinstance(value, list):
            ck.error(path + ".value", "Expected a list")
            return None
    elif isinstance(value, (dict, list)):
        ck.error(path + ".value", "Expected a string, number, boolean or null")
        return None
    return {"field": name, "operator": op, "value": value}


def _normalize_view(ck, raw, path, custom_roles):
    if not ck.mapping(raw, path):
        return None
    ck.keys(raw, path, ("id", "name", "isDefault", "filters", "sorts", "fields", "groupBy", "permissions"))
    vid = raw.get("id")
    if vid is None:
        ck.error(path, "Missing required key 'id'")
        return None
    if isinstance(vid, bool) or not (isinstance(vid, int) and vid >= 1 or
                                     isinstance(vid, str) and VIEW_SLUG.match(vid) and not vid.isdigit()):
        ck.error(path + ".id", "Expected an integer ≥ 1 or a slug of lower-case letters, digits, '-' and '_'")
        return None
    if "name" not in raw:
        ck.error(path, "Missing required key 'name'")
        return None
    name = ck.string(raw["name"], path + ".name", 100)
    out = {"id": vid, "name": name, "isDefault": bool(raw.get("isDefault") is True),
           "filters": raw.get("filters"), "sorts": [], "fields": None, "groupBy": None,
           "permissions": {}}
    if "isDefault" in raw:
        ck.boolean(raw["isDefault"], path + ".isDefault")
    sorts = raw.get("sorts")
    if sorts is not None and ck.listof(sorts, path + ".sorts") is not None:
        for i, s in enumerate(sorts):
            spath = f"{path}.sorts[{i}]"
            if isinstance(s, str):
                s = {"field": s}
            if not ck.mapping(s, spath):
                continue
            ck.keys(s, spath, ("field", "direction"))
            d = s.get("direction", "asc")
            if ck.choice(d, spath + ".direction", ("asc", "desc")) is None:
                continue
            out["sorts"].append({"field": s.get("field"), "direction": d})
    if raw.get("fields") is not None:
        items = ck.listof(raw["fields"], path + ".fields")
        if items is not None:
            out["fields"] = [x for i, x in enumerate(items) if ck.string(x, f"{path}.fields[{i}]")]
    gb = raw.get("groupBy")
    if gb is not None:
        if isinstance(gb, str):
            gb = {"field": gb}
        if ck.mapping(gb, path + ".groupBy"):
            ck.keys(gb, path + ".groupBy", ("field", "direction"))
            d = gb.get("direction", "asc")
            if ck.choice(d, path + ".groupBy.direction", ("asc", "desc")) is not None:
                out["groupBy"] = {"field": gb.get("field"), "direction": d}
    perms = raw.get("permissions")
    if perms is not None and ck.mapping(perms, path + ".permissions"):
        ck.keys(perms, path + ".permissions", ("read",), rejected=("public",))
        if "public" in perms:
            ck.error(path + ".permissions.public", "permissions.public is not supported on views")
        if "read" in perms:
            v = _normalize_permission_value(ck, perms["read"], path + ".permissions.read", custom_roles)
            if v is not None:
                out["permissions"]["read"] = v
    return out


class _FilterProblem(Exception):
    """A filter-tree problem; `path` is relative to the tree root (for configuration paths)."""

    def __init__(self, message, path=""):
        super().__init__(message)
        self.message, self.path = message, path


class Field:
    """A configured field with its registered id, family and SQL forms (OPERATIONS.md §7.5)."""

    def __init__(self, table, conf, path):
        self.table, self.conf, self.path = table, conf, path
        self.id, self.name, self.type = conf["id"], conf["name"], conf["type"]
        self.key = f"f{self.id}"
        self.readonly = conf["readOnly"]
        self.relation = None          # 'm2o', 'm2m', 'inv-m2o', 'inv-m2m' for relationships
        self.target = None            # related Table (relationship) or the relationship Field (lookups)
        self.related = None           # looked-up / rolled-up Field, or the owning field of an inverse
        self.family = None
        self.result = None            # formula/rollup result type, lookup element kind
        self._sql_cache = {}
        self.deps = ()
        if self.type == "relationship":
            rt = conf["relationType"]
            if conf["relatedField"] is None:
                self.relation = "m2m" if rt == "many-to-many" else "m2o"
            else:
                self.relation = "inv-m2m" if rt == "many-to-many" else "inv-m2o"

    def __repr__(self):
        return f"<Field {self.table.name}.{self.name} #{self.id} {self.type}>"

    @property
    def stored(self):
        return not self.readonly or self.type == "autonumber"

    @property
    def computed(self):
        return self.type in ("formula", "lookup", "rollup", "count") or (self.relation or "").startswith("inv")

    @property
    def to_many(self):
        """True when the value is an array of links (owning m2m, inverse, multiple users)."""
        return self.relation in ("m2m", "inv-m2o", "inv-m2m") or (
            self.type == "user" and self.conf["allowMultiple"])

    @property
    def linked(self):
        """True for owning to-many fields indexed in the `links` table."""
        return self.relation == "m2m" or (self.type == "user" and self.conf["allowMultiple"])

    @property
    def sortable(self):
        return self.family in SORTABLE_FAMILIES and self.type != "button"

    @property
    def searchable(self):
        return self.type in SEARCHABLE_TYPES

    @property
    def date_kind(self):
        """'date', 'datetime' or 'time' for Date-family fields."""
        if self.type in ("date", "datetime", "time"):
            return self.type
        if self.type in ("formula", "rollup") and self.result in ("date", "datetime"):
            return self.result
        if self.type == "rollup" and self.related is not None and self.related.date_kind == "time":
            return "time"
        if self.type == "lookup":
            return self.related.date_kind
        return "datetime"

    @property
    def user_valued(self):
        """True when Link/Multi values are user ids rather than record ids."""
        if self.type in ("user", "created-by", "updated-by", "deleted-by"):
            return True
        if self.type == "lookup":
            return self.related.user_valued
        return False

    @property
    def integer_valued(self):
        if self.type in INTEGER_TYPES or self.type == "count":
            return True
        if self.type == "formula":
            return self.conf["resultType"] == "integer"
        if self.type == "lookup":
            return self.related.integer_valued
        if self.type == "rollup":
            agg = self.conf["aggregation"]
            return agg in ("count", "countAll") or (agg in ("sum", "min", "max")
                                                  and self.related.integer_valued)
        return False

    def option_rank_sql(self, x):
        opts = self.choice_options()
        return "CASE " + x + "".join(f" WHEN {sql_str(o['value'])} THEN {i}" for i, o in enumerate(opts)) + " END"

    def choice_options(self):
        return self.conf["options"] if self.type in CHOICE_TYPES + ("multi-select",) else self.related.choice_options()

    # -- SQL forms ------------------------------------------------------------------------------
    def value_sql(self, a="r"):
        """The SQL value of this field on the record aliased `a` (filters, formulas, sorting)."""
        key = ("v", a)
        if key not in self._sql_cache:
            self._sql_cache[key] = self._value_sql(a)
        return self._sql_cache[key]

    def _value_sql(self, a):
        if self.type in SYSTEM_COLUMNS:
            return f"{a}.{SYSTEM_COLUMNS[self.type]}"
        if self.stored:
            x = f"json_extract({a}.data, '$.{self.key}')"
            return f"coalesce({x}, 0)" if self.type == "checkbox" else x
        return self.table.schema.compute_sql(self, a, "value")

    def json_sql(self, a="r"):
        """SQL producing the API value: JSON-subtyped text or a plain SQL scalar (for json_object)."""
        key = ("j", a)
        if key not in self._sql_cache:
            self._sql_cache[key] = self._json_sql(a)
        return self._sql_cache[key]

    def _json_sql(self, a):
        if self.type in SYSTEM_COLUMNS:
            return f"{a}.{SYSTEM_COLUMNS[self.type]}"
        if self.type == "checkbox":
            return f"json(CASE WHEN json_extract({a}.data, '$.{self.key}') THEN 'true' ELSE 'false' END)"
        if self.stored:
            return f"{a}.data -> '$.{self.key}'"
        return f"json({self.table.schema.compute_sql(self, a, 'jtext')})"

    def jtext_sql(self, a):
        """SQL producing this field's API value as JSON text (or NULL)."""
        if self.type in SYSTEM_COLUMNS:
            return f"json_quote({a}.{SYSTEM_COLUMNS[self.type]})"
        if self.type == "checkbox":
            return f"(CASE WHEN json_extract({a}.data, '$.{self.key}') THEN 'true' ELSE 'false' END)"
        if self.stored:
            return f"({a}.data -> '$.{self.key}')"
        return self.table.schema.compute_sql(self, a, "jtext")

    def sort_sql(self, a="r"):
        """The ordering form: NOCASE text, option rank, coalesced checkbox, or the value."""
        x = self.value_sql(a)
        if self.family == "Text":
            return f"{x} COLLATE NOCASE"
        if self.family == "Choice":
            return self.option_rank_sql(x)
        return x


class PseudoField:
    """Record metadata usable in filters and sorts: id, createdAt, updatedBy, ..."""

    stored = False
    computed = False
    to_many = False
    linked = False
    readonly = True
    sortable = True
    searchable = False
    integer_valued = False
    result = None

    def __init__(self, name):
        self.name, self.column = name, PSEUDO_FIELDS[name]
        self.type = "pseudo"
        if name == "id":
            self.family = "Number"
            self.integer_valued = True
        elif name.endswith("At"):
            self.family = "Date"
        else:
            self.family = "Link"
        self.user_valued = self.family == "Link"
        self.date_kind = "datetime"

    def value_sql(self, a="r"):
        return f"{a}.{self.column}"

    sort_sql = value_sql


class View:
    """A configured view: its filter tree and sorts are checked at load time."""

    def __init__(self, table, conf):
        self.table, self.conf, self.id = table, conf, conf["id"]
        self.filter = None       # parsed filter tree (all fields visible)
        self.sorts = []          # [(Field, desc)]
        self.group = None        # (Field, desc)

    def public(self, visible_names):
        """The view object of API.md §9 for a caller who can see `visible_names` (clarification 18)."""
        c = self.conf
        ok = lambda name: name in visible_names or name in PSEUDO_FIELDS
        fields = c["fields"]
        if fields is not None:
            fields = [n for n in fields if n in visible_names]
        filters = c["filters"]
        if self.filter is not None and not all(ok(leaf[1].name) for leaf in _filter_leaves(self.filter)):
            filters = None
        group = c["groupBy"] if c["groupBy"] is None or ok(c["groupBy"]["field"]) else None
        return {"id": c["id"], "name": c["name"], "isDefault": c["isDefault"], "filters": filters,
                "sorts": [x for x in c["sorts"] if ok(x["field"])], "fields": fields, "groupBy": group}


class Table:
    """A configured table with its fields, views, indexes and permission rules."""

    def __init__(self, schema, conf, path):
        self.schema, self.conf, self.path = schema, conf, path
        self.id, self.name = conf["id"], conf["name"]
        self.fields = [Field(self, f, f"{path}.fields[{i}]") for i, f in enumerate(conf["fields"])]
        self.by_name = {f.name: f for f in self.fields}
        self.by_key = {f.key: f for f in self.fields}
        self.pseudo = {n: PseudoField(n) for n in PSEUDO_FIELDS}
        self.views = [View(self, v) for v in conf["views"]]
        self.permissions = conf.get("_effective") or {}
        self.field_permissions = {fp["field"]: fp for fp in conf["permissions"].get("fields", [])}
        self.row_rules = conf["rowLevelPermissions"]
        self.record_sql_cache = {}
        self.access_cache = {}    # (actor kind, role) → field access; rules never change in a Schema
        self._data_fields = None
        self._write_groups = None

    def __repr__(self):
        return f"<Table {self.name} #{self.id}>"

    def field(self, name, visible=None, pseudo=True, trash=False):
        """A field or pseudo-field by name, if visible; None otherwise."""
        f = self.by_name.get(name)
        if f is not None and f.type != "button" and (visible is None or name in visible):
            return f
        if pseudo and name in self.pseudo and (trash or not name.startswith("deleted")):
            return self.pseudo[name]
        return None

    def write_groups(self):
        """The fields each write check visits (computed once per table)."""
        if self._write_groups is None:
            data = self.data_fields
            self._write_groups = {
                "defaults": [f for f in data if f.stored and f.conf["default"] is not None
                             and f.type != "autonumber"],
                "required": [f for f in data if f.conf["required"]],
                "links": [f for f in data if f.relation in ("m2o", "m2m") or f.type == "user"],
                "unique": any(f.conf["unique"] for f in data) or any(ix["unique"] for ix in self.conf["indexes"]),
            }
        return self._write_groups

    @property
    def data_fields(self):
        """Fields that appear in record `fields` (every field but buttons)."""
        if self._data_fields is None:
            self._data_fields = [f for f in self.fields if f.type != "button"]
        return self._data_fields


FORMULA_TYPES = {"Text": "text", "Choice": "text", "Number": "number", "Boolean": "boolean"}


class Schema:
    """The runtime model of one normalized configuration with resolved ids."""

    def __init__(self, conf, checksum=None):
        self.conf = conf
        self.checksum = checksum
        self.name, self.version = conf["name"], conf["version"]
        self.settings, self.auth, self.analytics = conf["settings"], conf["auth"], conf["analytics"]
        self.tables = [Table(self, t, f"tables[{i}]") for i, t in enumerate(conf["tables"])]
        self.by_name = {t.name: t for t in self.tables}
        self.by_id = {t.id: t for t in self.tables}
        self.roles = list(BUILTIN_ROLES) + [r["name"] for r in (self.auth or {}).get("roles", [])]
        self._stack = []

    def table(self, ref):
        """A table by name or by its decimal id text (API.md §1.14)."""
        if isinstance(ref, int):
            return self.by_id.get(ref)
        if re.fullmatch(r"[1-9][0-9]{0,15}", ref):
            return self.by_id.get(int(ref))
        return self.by_name.get(ref)

    # -- computed fields ---------------------------------------------------------------------------
    def compute_sql(self, field, a, form):
        """SQL of a computed field as a value ('value') or as JSON text ('jtext')."""
        key = (form, a)
        if key in field._sql_cache:
            return field._sql_cache[key]
        if field in self._stack:
            cycle = self._stack[self._stack.index(field):]
            first = min(cycle, key=self.position)
            k = cycle.index(first)
            chain = cycle[k:] + cycle[:k] + [first]
            exc = _FieldProblem(first, "Circular computed field reference: " +
                                " -> ".join(f"{f.table.name}.{f.name}" for f in chain), at_field=True)
            exc.members = cycle
            raise exc
        self._stack.append(field)
        try:
            sql = getattr(self, "_sql_" + field.type.replace("-", "_"))(field, a, form)
        finally:
            self._stack.pop()
        if len(sql) > 65536:
            raise _FieldProblem(field, "Formula is too complex", at_field=True)
        field._sql_cache[key] = sql
        return sql

    def position(self, field):
        """(table index, field index): configuration order, for reporting."""
        t = self.tables.index(field.table)
        return t, field.table.fields.index(field)

    def _related_from(self, rel, a, b):
        """FROM/WHERE selecting the live records linked through relationship `rel` of record `a`.

        The outer id is written `+a.id`: compared bare, SQLite's planner scans instead of using the
        many-to-one expression index (a rowid-alias quirk, checked in tests/test_storage.py).
        """
        t = rel.target
        if rel.relation == "m2o":
            return (f"FROM records {b} WHERE {b}.id = json_extract({a}.data, '$.{rel.key}') "
                    f"AND {b}.table_id = {t.id} AND {b}.deleted_at IS NULL")
        if rel.relation == "m2m":
            return (f"FROM links l{b} JOIN records {b} ON {b}.id = l{b}.target_id "
                    f"WHERE l{b}.table_id = {rel.table.id} AND l{b}.field_key = '{rel.key}' "
                    f"AND l{b}.source_id = +{a}.id AND {b}.deleted_at IS NULL")
        owner = rel.related
        if rel.relation == "inv-m2o":
            return (f"FROM records {b} WHERE {b}.table_id = {t.id} "
                    f"AND json_extract({b}.data, '$.{owner.key}') = +{a}.id AND {b}.deleted_at IS NULL")
        return (f"FROM links l{b} JOIN records {b} ON {b}.id = l{b}.source_id "
                f"WHERE l{b}.table_id = {t.id} AND l{b}.field_key = '{owner.key}' "
                f"AND l{b}.target_id = +{a}.id AND {b}.deleted_at IS NULL")

    def _sql_relationship(self, field, a, form):
        b = a + "r"
        return (f"(SELECT json_group_array(x) FROM (SELECT {b}.id AS x "
                f"{self._related_from(field, a, b)} ORDER BY {b}.id))")

    def _sql_count(self, field, a, form):
        b = a + "r"
        return f"(SELECT count(*) {self._related_from(field.target, a, b)})"

    def _sql_lookup(self, field, a, form):
        rel, rf, b = field.target, field.related, a + "r"
        frm = self._related_from(rel, a, b)
        if rel.relation == "m2o":
            inner = rf.value_sql(b) if form == "value" and not rf.to_many else rf.jtext_sql(b)
            return f"(SELECT {inner} {frm})"
        j = rf.jtext_sql(b)
        if rf.to_many or rf.family == "Multi":
            return (f"(SELECT json_group_array(json(x)) FROM (SELECT ({j}) -> je.fullkey AS x "
                    f"{frm.replace(' WHERE ', f', json_each({j}) je WHERE ', 1)} "
                    f"ORDER BY {b}.id, je.id))")
        return (f"(SELECT json_group_array(json(x)) FROM (SELECT {j} AS x {frm} AND {j} IS NOT NULL "
                f"ORDER BY {b}.id))")

    def _sql_rollup(self, field, a, form):
        rel, rf, b = field.target, field.related, a + "r"
        agg = field.conf["aggregation"]
        frm = self._related_from(rel, a, b)
        v = rf.value_sql(b)
        if agg == "countAll":
            sql = f"(SELECT count(*) {frm})"
        elif agg == "count":
            sql = (f"(SELECT count(*) {frm} AND json_type({b}.data, '$.{rf.key}') IS NOT NULL)"
                   if rf.stored else f"(SELECT count({v}) {frm})")
        elif agg == "concat":
            t = f"sov_num_text({v})" if rf.family == "Number" else v
            sql = f"(SELECT group_concat({t}, ', ' ORDER BY {b}.id) {frm})"
        elif agg == "sum":
            sql = f"(SELECT coalesce(sum({v}), 0) {frm})"
        else:
            sql = f"(SELECT {agg}({v}) {frm})"
        if form == "value":
            return sql
        if field.result == "number":
            return f"CAST({sql} AS INTEGER)" if field.integer_valued else f"sov_num_text({sql})"
        return _jq(sql)

    def _sql_formula(self, field, a, form):
        deps = []

        def resolve(name):
            f = field.table.field(name, pseudo=False)
            if f is None:
                if name in ("id", "createdAt", "updatedAt"):
                    p = field.table.pseudo[name]
                    return ("number" if name == "id" else "datetime"), p.value_sql(a)
                raise FormulaError("Unknown field '%s'" % name, None, f"Unknown field '{name}'")
            sql = f.value_sql(a)   # first, so a cycle is reported as one
            ftype = formula_type(f)
            if ftype is None:
                raise FormulaError("cannot be used", None, f"Field '{name}' cannot be used in a formula")
            deps.append(f)
            return ftype, sql

        try:
            node = parse_formula(field.conf["formula"])
            sql, rtype, uses_now = compile_formula(node, resolve, field.conf["resultType"])
        except FormulaError as exc:
            raise _FieldProblem(field, exc.message, option="formula") from None
        if a == "r":
            field.deps = tuple(deps)
            field.uses_now = uses_now
        if form == "value":
            return sql
        if rtype in ("number",):
            return f"sov_num_text({sql})"
        if rtype == "integer":
            return sql
        if rtype == "boolean":
            return f"(CASE WHEN ({sql}) IS NULL THEN NULL WHEN ({sql}) THEN 'true' ELSE 'false' END)"
        return _jq(sql)


class _FieldProblem(Exception):
    def __init__(self, field, message, option=None, at_field=False):
        super().__init__(message)
        self.field, self.message, self.option, self.at_field = field, message, option, at_field


def formula_type(f):
    """The formula-language type of a referenced field, or None when it cannot be referenced."""
    if f.type in ("time",):
        return "text"
    if f.type in ("date",):
        return "date"
    if f.type in ("datetime", "created-at", "updated-at"):
        return "datetime"
    if f.type in ("deleted-at", "deleted-by", "button") or f.family in ("Multi", "Opaque", None):
        return None
    if f.type in ("formula", "rollup"):
        return {"integer": "number"}.get(f.result, f.result)
    if f.type == "lookup":
        return formula_type(f.related)
    if f.family == "Link":
        return "text" if f.user_valued else "number"
    return FORMULA_TYPES.get(f.family)


def _analyze_schema(schema, ck):
    """Cross-reference checks: relationships, lookups, rollups, counts, formulas, views, rules."""
    # 1. relationships
    for t in schema.tables:
        for f in t.fields:
            if f.type != "relationship":
                continue
            target = schema.by_name.get(f.conf["relatedTable"])
            if target is None:
                ck.error(f.path + ".relatedTable", f"Unknown table '{f.conf['relatedTable']}'")
                continue
            f.target = target
            if f.relation.startswith("inv"):
                owner = target.by_name.get(f.conf["relatedField"])
                if owner is None or owner.type != "relationship" or owner.conf["relatedTable"] != t.name \
                        or owner.relation.startswith("inv"):
                    ck.error(f.path + ".relatedField", f"Field '{f.conf['relatedField']}' of table "
                                                       f"'{target.name}' is not a relationship to '{t.name}'")
                    f.target = None
                    continue
                f.related = owner
                given = f.conf["relationType"]
                expected = "one-to-many" if owner.relation == "m2o" else "many-to-many"
                if given is None:
                    f.conf["relationType"] = given = expected
                if given != expected:
                    ck.error(f.path + ".relationType", "relationType does not match the related field")
                    f.target = None
                    continue
                f.relation = "inv-m2o" if owner.relation == "m2o" else "inv-m2m"
    # 2. families (stored first, then computed through a small fixpoint)
    for t in schema.tables:
        for f in t.fields:
            f.family = _stored_family(f)
    pending = [f for t in schema.tables for f in t.fields if f.family is None]
    for _ in range(8):
        for f in list(pending):
            if _computed_family(f, ck):
                pending.remove(f)
    for f in pending:
        f.family = f.family or "Text"
    for f in pending:
        try:
            f.value_sql("r")
        except _FieldProblem as exc:
            _report_field_problem(ck, exc)
        if not getattr(f, "_reported", False):
            f._reported = True
            ck.error(f.path, f"Circular computed field reference: {f.table.name}.{f.name} -> "
                             f"{f.table.name}.{f.name}")
    # 3. SQL of every computed field (formula syntax and types, cycles, depth, size)
    for t in schema.tables:
        for f in t.fields:
            if f.computed and f.family is not None and not getattr(f, "_reported", False):
                try:
                    f.value_sql("r")
                    f.json_sql("r")
                except _FieldProblem as exc:
                    _report_field_problem(ck, exc)
    for t in schema.tables:
        for f in t.fields:
            if f.computed and f.family is not None and _depth(f, []) > 5:
                ck.error(f.path, f"Computed field '{f.name}' is nested more than 5 levels deep")
    # 4. views, and field-level read warnings of formulas
    for t in schema.tables:
        for i, v in enumerate(t.views):
            _analyze_view(ck, t, v, f"{t.path}.views[{i}]")
        for f in t.fields:
            if f.type == "formula" and f.deps:
                fp = t.field_permissions
                own = fp.get(f.name, {}).get("read", t.permissions.get("read") or "authenticated")
                for d in _formula_closure(f):
                    dread = fp.get(d.name, {}).get("read")
                    if dread is not None and not _rule_within(own, dread):
                        ck.warn(f.path, f"Formula '{f.name}' is hidden from callers who cannot read '{d.name}'")
                        break


def _rule_within(outer, inner):
    """True when every caller admitted by `outer` is also admitted by `inner` (conservative)."""
    if inner == "all" or outer == inner:
        return True
    if inner == "authenticated":
        return outer != "all"
    if isinstance(outer, list) and isinstance(inner, list):
        return all(r in inner or r == "admin" for r in outer)
    return False


def _formula_closure(f):
    seen, stack = [], list(f.deps)
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.append(d)
        if d.type == "formula":
            stack.extend(d.deps)
    return seen


def _report_field_problem(ck, exc):
    f = exc.field
    if getattr(f, "_reported", False):
        return
    for member in getattr(exc, "members", ()):
        member._reported = True
    f._reported = True
    path = f.path if exc.at_field or not exc.option else f"{f.path}.{exc.option}"
    ck.error(path, exc.message)


def _depth(f, seen):
    if f in seen or not f.computed:
        return 0
    deps = list(f.deps)
    if f.type in ("lookup", "rollup"):
        deps.append(f.related)
    return 1 + max([_depth(d, seen + [f]) for d in deps if d is not None and d.computed] or [0])


def _stored_family(f):
    t = f.type
    if t in TEXT_TYPES:
        return "Text"
    if t in NUMBER_TYPES:
        return "Number"
    if t in CHOICE_TYPES:
        return "Choice"
    if t in ("date", "datetime", "time", "created-at", "updated-at", "deleted-at"):
        return "Date"
    if t == "checkbox":
        return "Boolean"
    if t in ("created-by", "updated-by", "deleted-by"):
        return "Link"
    if t == "user":
        return "Multi" if f.conf["allowMultiple"] else "Link"
    if t in ("multi-select", "array"):
        return "Multi"
    if t in OPAQUE_TYPES:
        return "Opaque"
    if t == "relationship" and f.target is not None:
        return "Link" if f.relation == "m2o" else "Multi"
    if t == "button":
        return "Button"
    return None


RESULT_FAMILIES = {"text": "Text", "number": "Number", "integer": "Number", "boolean": "Boolean",
                   "date": "Date", "datetime": "Date"}


def _computed_family(f, ck):
    """Resolve the family of a lookup/rollup/count/formula; False while its inputs are unknown."""
    t = f.table
    if f.type == "formula":
        try:
            node = parse_formula(f.conf["formula"])
        except FormulaError as exc:
            ck.error(f.path + ".formula", exc.message)
            f._reported = True
            f.family = "Text"
            return True
        f.result = _formula_result_type(f, node)
        if getattr(f, "_type_error", None):
            ck.error(f.path + ".formula", f._type_error)
        if f.result is None:
            return False
        f.family = RESULT_FAMILIES[f.result]
        return True
    if f.type in ("lookup", "rollup", "count"):
        rel = t.by_name.get(f.conf["relationshipField"])
        if rel is None or rel.type != "relationship":
            ck.error(f.path + ".relationshipField", f"Unknown field '{f.conf['relationshipField']}'")
            f._reported = True
            return True
        if rel.target is None:
            f._reported = True
            return True
        f.target = rel
        if f.type == "count":
            if not rel.to_many:
                ck.error(f.path + ".relationshipField", f"Field '{rel.name}' is not a to-many relationship")
                f._reported = True
                return True
            f.family, f.result = "Number", "integer"
            return True
        rf = rel.target.by_name.get(f.conf["relatedField"])
        if rf is None or rf.type == "button":
            ck.error(f.path + ".relatedField", f"Unknown field '{f.conf['relatedField']}'")
            f._reported = True
            return True
        f.related = rf
        if rf.family is None:
            return False
        if f.type == "lookup":
            f.family = "Multi" if rel.to_many else rf.family
            f.result = formula_type(rf)
            return True
        agg = f.conf["aggregation"]
        allowed = {"sum": ("Number",), "avg": ("Number",), "min": ("Number", "Date"),
                   "max": ("Number", "Date"), "concat": ("Text", "Choice", "Number", "Date")}.get(agg)
        if allowed and rf.family not in allowed:
            ck.error(f.path + ".aggregation", f"Aggregation '{agg}' is not supported for field '{rf.name}'")
            f._reported = True
            return True
        if agg in ("count", "countAll"):
            f.result = "integer"
        elif agg == "concat":
            f.result = "text"
        elif agg in ("min", "max") and rf.family == "Date":
            f.result = rf.date_kind if rf.date_kind != "time" else "text"
        else:
            f.result = "integer" if agg != "avg" and rf.integer_valued else "number"
        f.family = RESULT_FAMILIES[f.result] if f.result != "text" or agg == "concat" else "Text"
        if agg in ("min", "max") and rf.date_kind == "time":
            f.family = "Date"
        return True
    return True


def _formula_result_type(f, node):
    """Type-check a formula against the families known so far; None when a reference is pending."""
    pending = []

    def resolve(name):
        g = f.table.field(name, pseudo=False)
        if g is None:
            if name in ("id", "createdAt", "updatedAt"):
                return ("number" if name == "id" else "datetime"), "NULL"
            raise FormulaError("unknown", None, f"Unknown field '{name}'")
        if g.family is None:
            if g is f:
                raise FormulaError("cycle", None, f"Circular computed field reference: "
                                                  f"{f.table.name}.{f.name} -> {f.table.name}.{f.name}")
            pending.append(g)
            return "number", "NULL"
        ftype = formula_type(g)
        if ftype is None:
            raise FormulaError("cannot", None, f"Field '{name}' cannot be used in a formula")
        return ftype, "NULL"

    try:
        _, rtype, _ = compile_formula(node, resolve, f.conf["resultType"])
    except FormulaError as exc:
        if pending:
            return None
        f._reported = True
        f._type_error = exc.message
        return f.conf["resultType"] or "text"
    return None if pending else rtype


def _analyze_view(ck, t, v, path):
    c = v.conf
    every = {f.name for f in t.data_fields}
    if c["filters"] is not None:
        try:
            v.filter = parse_filter_tree(c["filters"], t, every)
        except _FilterProblem as exc:
            ck.error(path + ".filters" + exc.path, exc.message)
        else:
            for leaf in _filter_leaves(v.filter):
                f, op, value = leaf[1], leaf[2], leaf[3]
                if f.family == "Choice":
                    opts = [o["value"] for o in f.choice_options()]
                    for x in (value if isinstance(value, list) else [value]):
                        if isinstance(x, str) and x not in opts:
                            ck.warn(path + ".filters", f"Value '{x}' is not an option of field "
                                                       f"'{f.name}'; the filter matches nothing")
    for i, s in enumerate(c["sorts"]):
        f = t.field(s["field"]) if isinstance(s["field"], str) else None
        if f is None:
            ck.error(f"{path}.sorts[{i}].field", f"Unknown field '{s['field']}'")
        elif not f.sortable:
            ck.error(f"{path}.sorts[{i}].field", f"Field '{f.name}' cannot be sorted")
        else:
            v.sorts.append((f, s["direction"] == "desc"))
    for i, name in enumerate(c["fields"] or []):
        if name not in every:
            ck.error(f"{path}.fields[{i}]", f"Unknown field '{name}'")
    if c["groupBy"] is not None:
        name = c["groupBy"]["field"]
        f = t.field(name, pseudo=False) if isinstance(name, str) else None
        if f is None:
            ck.error(path + ".groupBy.field", f"Unknown field '{name}'")
        elif not f.sortable:
            ck.error(path + ".groupBy.field", f"Field '{name}' cannot be grouped")
        else:
            v.group = (f, c["groupBy"]["direction"] == "desc")


def _filter_leaves(node):
    if node[0] == "leaf":
        yield node
    elif node[0] == "not":
        yield from _filter_leaves(node[1])
    else:
        for n in node[1]:
            yield from _filter_leaves(n)


# -- Filter trees (API.md §4.8, §4.9) -------------------------------------------------------------

FILTER_MAX_DEPTH = 8
FILTER_MAX_LEAVES = 100
FILTER_MAX_CHARS = 8192
NUMBER_PATTERN = re.compile(r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


def parse_filter_param(text, table, visible, trash=False):
    """The `filter` query parameter: JSON tree or `field:value` shorthand → parsed tree."""
    if len(text) > FILTER_MAX_CHARS:
        raise _FilterProblem(f"Invalid filter: too long (at most {FILTER_MAX_CHARS} characters)")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            tree = parse_json_text(stripped)
        except (ValueError, RecursionError):
            raise _FilterProblem("Invalid filter: not valid JSON") from None
        return parse_filter_tree(tree, table, visible, trash)
    if ":" not in text:
        raise _FilterProblem("Invalid filter: expected field:value")
    name, raw = text.split(":", 1)
    f = table.field(name, visible, trash=trash)
    if f is None:
        raise _FilterProblem(f"Unknown field '{name}'")
    if f.family == "Multi":
        return ("leaf", f, "contains", _convert_shorthand(f, raw, element=True))
    return _parse_leaf({"field": name, "operator": "equals", "value": _convert_shorthand(f, raw)},
                       table, visible, trash, "")


def _convert_shorthand(f, raw, element=False):
    family = _element_family(f) if element else f.family
    if family in ("Number",) or (family == "Link" and not f.user_valued):
        value = sov_parse_number(raw) if NUMBER_PATTERN.fullmatch(raw) else None
        integral = re.fullmatch(r"-?[0-9]+", raw) is not None
        if value is None or integral and (len(raw.lstrip("-")) > 16 or abs(value) > MAX_SAFE_INTEGER):
            raise _FilterProblem(f"Invalid filter value for field '{f.name}'")
        return value
    if family == "Boolean":
        if raw in ("true", "false"):
            return raw == "true"
        raise _FilterProblem(f"Invalid filter value for field '{f.name}'")
    return raw


def _element_family(f):
    """The family of one element of a Multi value."""
    if f.type == "multi-select":
        return "Text"
    if f.type == "array":
        return {"text": "Text", "number": "Number", "integer": "Number", "boolean": "Boolean"}[f.conf["itemType"]]
    if f.type == "user":
        return "Link"
    if f.type == "relationship":
        return "Link"
    if f.type == "lookup":
        rf = f.related
        return _element_family(rf) if rf.family == "Multi" else rf.family
    return "Text"


def parse_filter_tree(tree, table, visible, trash=False):
    """Validate a filter tree (dict) → ('and'|'or', [nodes]) / ('not', node) / ('leaf', f, op, v)."""
    counter = [0]
    return _parse_node(tree, table, visible, trash, "", 0, counter)


def _parse_node(node, table, visible, trash, path, depth, counter):
    if not isinstance(node, dict):
        raise _FilterProblem("Invalid filter: expected a group or a leaf", path)
    keys = set(node)
    if len(keys) == 1 and keys & {"and", "or", "not"}:
        if depth + 1 > FILTER_MAX_DEPTH:
            raise _FilterProblem("Invalid filter: too deeply nested", path)
        (kind,) = keys
        if kind == "not":
            return ("not", _parse_node(node["not"], table, visible, trash, path + ".not", depth + 1, counter))
        items = node[kind]
        if not isinstance(items, list):
            raise _FilterProblem("Invalid filter: expected a group or a leaf", path)
        return (kind, [_parse_node(n, table, visible, trash, f"{path}.{kind}[{i}]", depth + 1, counter)
                       for i, n in enumerate(items)])
    counter[0] += 1
    if counter[0] > FILTER_MAX_LEAVES:
        raise _FilterProblem("Invalid filter: too many conditions", path)
    return _parse_leaf(node, table, visible, trash, path)


def _parse_leaf(node, table, visible, trash, path):
    op = node.get("operator")
    if "field" not in node or "operator" not in node or not isinstance(node["field"], str) \
            or not isinstance(op, str) or not set(node) <= {"field", "operator", "value"}:
        raise _FilterProblem("Invalid filter: expected a group or a leaf", path)
    if op not in ALL_OPERATORS:
        raise _FilterProblem(f"Unknown operator '{op}'", path + ".operator")
    if op not in UNARY_OPERATORS and "value" not in node:
        raise _FilterProblem("Invalid filter: expected a group or a leaf", path)
    f = table.field(node["field"], visible, trash=trash)
    if f is None:
        raise _FilterProblem(f"Unknown field '{node['field']}'", path + ".field")
    if op not in FAMILY_OPERATORS.get(f.family, ()):
        raise _FilterProblem(f"Operator '{op}' is not supported for field '{f.name}'", path + ".operator")
    if op in UNARY_OPERATORS:
        return ("leaf", f, op, None)
    value = node["value"]
    if value is None and op in ("equals", "notEquals"):
        if f.family == "Boolean":
            raise _FilterProblem(f"Invalid filter value for field '{f.name}'", path + ".value")
        return ("leaf", f, "isNull" if op == "equals" else "isNotNull", None)
    return ("leaf", f, op, _filter_value(f, op, value, path))


def _filter_value(f, op, value, path):
    bad = _FilterProblem(f"Invalid filter value for field '{f.name}'", path + ".value")
    family = f.family
    if op in ("in", "notIn") or (family == "Multi" and op in ("equals", "notEquals")):
        if not isinstance(value, list) or len(value) > 500:
            raise bad
        fam = _element_family(f) if family == "Multi" else family
        return [_scalar_filter_value(f, fam, x, bad, op) for x in value]
    if family == "Multi":
        return _scalar_filter_value(f, _element_family(f), value, bad, op)
    return _scalar_filter_value(f, family, value, bad, op)


def _scalar_filter_value(f, family, x, bad, op):
    if family in ("Text", "Choice"):
        if not isinstance(x, str):
            raise bad
        return x.strip().lower() if f.type == "email" and op in ("equals", "notEquals", "in", "notIn") else x
    if family == "Number":
        if isinstance(x, str) and NUMBER_PATTERN.fullmatch(x.strip()):
            x = sov_parse_number(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise bad
        if isinstance(x, int) and abs(x) > MAX_SAFE_INTEGER:
            raise bad
        return normalize_number(x)
    if family == "Date":
        if not isinstance(x, str):
            raise bad
        kind = f.date_kind
        if kind == "time":
            v = parse_time(x)
        elif kind == "date":
            v = parse_date(x)
        else:
            d = parse_date(x)
            if d is not None:
                return ("day", d)
            tz = f.conf.get("timeZone", "UTC") if isinstance(f, Field) and f.type == "datetime" else "UTC"
            v = parse_datetime(x, tz or "UTC")
        if v is None:
            raise bad
        return v
    if family == "Boolean":
        if not isinstance(x, bool):
            raise bad
        return x
    if family == "Link":
        if f.user_valued:
            if not isinstance(x, str) or not USER_ID_RE.fullmatch(x):
                raise bad
            return x
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_SAFE_INTEGER:
            raise bad
        return x
    raise bad


# -- Identity (CONFIG.md §3, §4) and building the model ------------------------------------------

def _assign_ids(entries, registry, what, path_of):
    """Assign ids per CONFIG.md §3: explicit ids, then live names, then fresh ids.

    `entries`: list of normalized dicts (with "id" and "name"); `registry`: {id: (name, live)}.
    Returns a list of identity errors.
    """
    errors = []
    live_by_name = {name: i for i, (name, live) in registry.items() if live}
    explicit = {e["id"] for e in entries if e["id"] is not None}
    for idx, e in enumerate(entries):
        if e["id"] is not None:
            other = live_by_name.get(e["name"])
            if other is not None and other != e["id"] and other not in explicit:
                errors.append({"path": path_of(idx) + ".id",
                               "message": f"{what} '{e['name']}' is registered with id {other}; "
                                          f"it cannot change to {e['id']}"})
    taken = set(explicit)
    for e in entries:
        if e["id"] is None:
            rid = live_by_name.get(e["name"])
            if rid is not None and rid not in taken:
                e["id"] = rid
                taken.add(rid)
    top = max(list(registry) + list(taken) + [0])
    for e in entries:
        if e["id"] is None:
            top += 1
            e["id"] = top
    return errors


def resolve_ids(conf, registry):
    """Fill table and field ids in a normalized configuration from the database registry."""
    tables = registry.get("tables", {})
    errors = _assign_ids(conf["tables"], tables, "Table", lambda i: f"tables[{i}]")
    for i, t in enumerate(conf["tables"]):
        freg = registry.get("fields", {}).get(t["id"], {})
        errors += _assign_ids(t["fields"], {k: (v[0], v[2]) for k, v in freg.items()}, "Field",
                              lambda j, i=i: f"tables[{i}].fields[{j}]")
    return errors


def _apply_resolved(conf, resolved):
    """Reuse the ids a stored version resolved to (restores, stored versions)."""
    for t in conf["tables"]:
        entry = resolved.get(t["name"])
        if entry:
            t["id"] = entry["id"]
            for f in t["fields"]:
                f["id"] = entry["fields"].get(f["name"], f["id"])


def resolved_ids_of(conf):
    """{table name: {"id", "fields": {field name: id}}} of a resolved configuration."""
    return {t["name"]: {"id": t["id"], "fields": {f["name"]: f["id"] for f in t["fields"]}}
            for t in conf["tables"]}


def compile_config(doc, env=None, registry=None, resolved=None):
    """Substitute, validate, normalize, resolve ids and analyze → (Schema | None, errors, warnings)."""
    env = os.environ if env is None else env
    sub, sub_errors = substitute_env(doc, env)
    norm, errors, warnings = normalize_config(sub)
    errors = sub_errors + errors
    if errors or norm is None:
        return None, errors, warnings
    if resolved:
        _apply_resolved(norm, resolved)
    errors = resolve_ids(norm, registry or {})
    if errors:
        return None, errors, warnings
    schema = Schema(norm)
    ck = _Checker()
    _analyze_schema(schema, ck)
    if not ck.errors:
        _prepare_selects(schema, ck)
    warnings = [{**w, "dataLoss": w.get("dataLoss", False)} for w in warnings + ck.warnings]
    return (None if ck.errors else schema), ck.errors, warnings


class _AnyEnv(dict):
    """An environment where every variable is set: for rebuilding a stored version's tables."""

    def get(self, key, default=None):
        return "0"

    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return "0"


def stored_schema(active, registry):
    """The schema model of a stored version, for comparing stored data with a new configuration.

    Only its tables matter, and tables never contain ${VAR} placeholders (CONFIG.md §1.3), so the
    settings, analytics and auth details are left out: a variable unset today cannot hide the
    previous version, and with it the data-loss guard.
    """
    _, snapshot, _, resolved = active
    doc = {k: v for k, v in snapshot.items() if k not in ("settings", "analytics", "auth")}
    if snapshot.get("auth") not in (None, False):
        roles = snapshot["auth"].get("roles") if isinstance(snapshot["auth"], dict) else None
        doc["auth"] = {"strategies": ["emailAndPassword"], **({"roles": roles} if roles else {})}
    schema, errors, _ = compile_config(doc, _AnyEnv(), registry, resolved=resolved)
    if schema is None:
        raise StartupError(f"the active configuration version {active[0]} cannot be read: "
                           + "; ".join(f"{e['path']}: {e['message']}" for e in errors[:3]), 1)
    return schema


def validate_config(config, env=None):
    """Validate a configuration (dict or path) without a database → (errors, warnings)."""
    if not isinstance(config, dict):
        try:
            config = load_config(config)
        except ConfigError as exc:
            return exc.errors, exc.warnings
    _, errors, warnings = compile_config(config, env)
    return errors, warnings


def public_field(f):
    """The normalized field definition of API.md §3.2."""
    return {k: v for k, v in f.conf.items() if not k.startswith("_")}

###############################################################################
# 8. Storage ##################################################################
###############################################################################

SQL_FUNCTIONS = (("sov_num_text", 1), ("sov_parse_number", 1), ("sov_parse_date", 1),
                 ("sov_parse_datetime", 2), ("sov_parse_time", 1), ("sov_local_date", 2))
PROGRESS_STEPS = 100000
MIGRATIONS = {}   # {from_version: sql}: step k upgrades an internal schema from k to k + 1


def schema_sql_text():
    """The static schema: schema.sql (checkout) or sovrium_schema.sql (wheel) next to this module."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("schema.sql", "sovrium_schema.sql"):
        path = os.path.join(here, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return fh.read()
    raise StartupError("database schema file not found next to sovrium.py", 3)


def configure_connection(conn, deadline_box=None):
    """The one place that configures a connection (OPERATIONS.md §7.1)."""
    conn.setbusytimeout(5000)
    conn.execute("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL")
    funcs = globals()
    for name, nargs in SQL_FUNCTIONS:
        conn.createscalarfunction(name, funcs[name], nargs, deterministic=True)
    if deadline_box is not None:
        def progress():
            deadline = getattr(deadline_box, "deadline", None)
            return deadline is not None and time.monotonic() > deadline
        conn.setprogresshandler(progress, PROGRESS_STEPS)
    return conn


def translate_db_error(exc):
    """Map an apsw error to the API error it means (busy → 503, timeout → 503, else 500)."""
    if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
        return ServiceUnavailableError()
    if isinstance(exc, apsw.InterruptError):
        return ServiceUnavailableError("The query took too long")
    if isinstance(exc, apsw.ConstraintError):
        return ConflictError("The change conflicts with stored data")
    return None


class WriteTxn:
    """An open write transaction: its connection and its single transaction time."""

    def __init__(self, conn, now):
        self.conn, self.now = conn, now

    def execute(self, sql, params=()):
        return self.conn.execute(sql, params)

    def bump(self, latest):
        """Raise the transaction time above `latest` (a stored updated_at) by at least 1 ms."""
        if latest is not None and latest >= self.now:
            self.now = format_ts(parse_ts(latest) + datetime.timedelta(milliseconds=1))
            self.conn.execute("UPDATE write_context SET now = ? WHERE id = 1", (self.now,))


class _Job:
    """A write submitted to the group-commit writer: the function and its outcome."""

    __slots__ = ("fn", "actor_id", "request_id", "now", "timeout_ms", "started", "done", "result", "error")

    def __init__(self, fn, actor_id, request_id, now, timeout_ms):
        self.fn, self.actor_id, self.request_id, self.now, self.timeout_ms = fn, actor_id, request_id, now, timeout_ms
        self.started, self.done = threading.Event(), threading.Event()
        self.result = self.error = None


GROUP_COMMIT_MAX = 64


class Database:
    """One SQLite file (or private in-memory database): per-thread connections, the write lock."""

    def __init__(self, path, clock, create=True):
        self.path, self.clock = path, clock
        self.memory = path == ":memory:"
        self.uri = f"file:/sovrium-{uuid.uuid4()}?vfs=memdb" if self.memory else path
        self.write_lock = threading.Lock()
        self._local = threading.local()
        self._all = []
        self._all_lock = threading.Lock()
        self.closed = False
        self.keeper = None
        self._jobs = collections.deque()
        self._jobs_cv = threading.Condition()
        self._writer = None
        self._open(create)

    # -- opening ----------------------------------------------------------------------------------
    def _raw_connection(self):
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
        if self.memory:
            return apsw.Connection(self.uri, flags=flags)
        return apsw.Connection(self.path, flags=flags)

    def _open(self, create):
        if not self.memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise StartupError(f"cannot open database {self.path}: directory {parent} does not exist")
            exists = os.path.exists(self.path)
            if not exists and not create:
                raise StartupError(f"database not found: {self.path}")
            if exists and not os.access(self.path, os.R_OK | os.W_OK):
                raise StartupError(f"cannot open database {self.path}: file is not writable")
        try:
            conn = self._raw_connection()
            conn.setbusytimeout(5000)
            app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
            version = conn.execute("PRAGMA user_version").fetchall()[0][0]
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchall()[0][0]
        except apsw.NotADBError:
            raise StartupError(f"{self.path} is not a Sovrium database") from None
        except apsw.Error as exc:
            raise StartupError(f"cannot open database {self.path}: {exc}") from None
        try:
            if objects == 0 and app_id == 0 and version == 0:
                self._create(conn)
            elif app_id != APPLICATION_ID:
                raise StartupError(f"{self.path} is not a Sovrium database")
            elif version > SCHEMA_VERSION:
                raise StartupError(f"the database was created by a newer Sovrium (schema {version}; "
                                   f"this version supports up to {SCHEMA_VERSION})")
            elif version < SCHEMA_VERSION:
                self._migrate(conn, version)
            if not self.memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
                if mode != "wal":
                    raise StartupError(f"cannot open database {self.path}: WAL mode is not available")
        except apsw.Error as exc:
            conn.close()
            if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
                raise StartupError(f"cannot open database {self.path}: the database is locked") from None
            if isinstance(exc, apsw.ReadOnlyError):
                raise StartupError(f"cannot open database {self.path}: file is not writable") from None
            raise StartupError(f"cannot open database {self.path}: {exc}") from None
        except StartupError:
            conn.close()
            raise
        if self.memory:
            self.keeper = conn      # the in-memory database lives as long as this connection
        else:
            conn.close()

    def _create(self, conn):
        sql = schema_sql_text()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate(self, conn, version):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in range(version, SCHEMA_VERSION):
                conn.execute(MIGRATIONS[step])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- connections ------------------------------------------------------------------------------
    def conn(self):
        """This thread's connection, created and configured on first use."""
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.closed:
                raise ServiceUnavailableError("Database unavailable")
            c = configure_connection(self._raw_connection(), self._local)
            self._local.conn = c
            with self._all_lock:
                self._all.append(c)
        return c

    def rearm(self, timeout_ms):
        """Restart this thread's query time limit (each statement has its own budget)."""
        self._local.deadline = time.monotonic() + timeout_ms / 1000.0

    @contextlib.contextmanager
    def read(self, timeout_ms=None, single=False):
        """A read transaction (one snapshot for every statement inside), optionally time-limited.

        `single=True` is for exactly one statement, which is its own snapshot: no BEGIN/COMMIT, two
        fewer SQLite calls on hot paths (each gives the GIL away under load).
        """
        conn = self.conn()
        if timeout_ms:
            self._local.deadline = time.monotonic() + timeout_ms / 1000.0
        if single:
            try:
                yield conn
            except apsw.Error as exc:
                api = translate_db_error(exc)
                if api is not None:
                    raise api from None
                raise
            finally:
                self._local.deadline = None
            return
        try:
            try:
                conn.execute("BEGIN DEFERRED")
            except apsw.Error as exc:
                raise translate_db_error(exc) or exc
            try:
                yield conn
            except apsw.Error as exc:
                self._rollback(conn)
                api = translate_db_error(exc)
                if api is not None:
                    raise api from None
                raise
            except BaseException:
                self._rollback(conn)
                raise
            else:
                conn.execute("COMMIT")
        finally:
            self._local.deadline = None

    @contextlib.contextmanager
    def write(self, actor_id=None, request_id=None, now=None, timeout_ms=None):
        """A write transaction: the App's write lock, BEGIN IMMEDIATE, write_context set and reset."""
        deadline = time.monotonic() + BUSY_BUDGET_SECONDS
        if not self.write_lock.acquire(timeout=BUSY_BUDGET_SECONDS):
            raise ServiceUnavailableError()
        try:
            conn = self.conn()
            if timeout_ms:
                self._local.deadline = time.monotonic() + timeout_ms / 1000.0
            conn.setbusytimeout(max(1, int((deadline - time.monotonic()) * 1000)))
            txn = WriteTxn(conn, now or format_ts(self.clock()))
            # Few apsw calls while the lock is held: each one gives the GIL away and must win it back.
            try:
                conn.execute("BEGIN IMMEDIATE; UPDATE write_context SET actor_id = ?, now = ?, request_id = ? "
                             "WHERE id = 1", (actor_id, txn.now, request_id))
            except apsw.Error as exc:
                self._rollback(conn)
                raise translate_db_error(exc) or exc
            finally:
                conn.setbusytimeout(5000)
            try:
                yield txn
                conn.execute("UPDATE write_context SET actor_id = NULL, now = NULL, request_id = NULL "
                             "WHERE id = 1; COMMIT")
            except apsw.Error as exc:
                self._rollback(conn)
                api = translate_db_error(exc)
                if api is not None:
                    raise api from None
                raise
            except BaseException:
                self._rollback(conn)
                raise
        finally:
            self._local.deadline = None
            self.write_lock.release()

    # -- group commit ---------------------------------------------------------------------------------
    def submit(self, fn, actor_id=None, request_id=None, now=None, timeout_ms=None):
        """Run fn(txn) atomically in a write transaction and return its result.

        API writes come here. One writer thread takes every job waiting at that moment and runs
        them in one transaction, each inside its own savepoint (so a failing job rolls back alone),
        then commits once; every caller gets its answer only after that COMMIT. Under concurrent
        writes this turns many small commits, each paying for SQLite's page writes and for winning
        the GIL back after every SQLite call, into one.
        """
        job = _Job(fn, actor_id, request_id, now, timeout_ms)
        with self._jobs_cv:
            if self.closed:
                raise ServiceUnavailableError("Database unavailable")
            self._jobs.append(job)
            if self._writer is None:
                self._writer = threading.Thread(target=self._writer_loop, name="sovrium-writer", daemon=True)
                self._writer.start()
            self._jobs_cv.notify()
        if not job.started.wait(BUSY_BUDGET_SECONDS):
            with self._jobs_cv:
                if job in self._jobs:
                    self._jobs.remove(job)
                    raise ServiceUnavailableError()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _writer_loop(self):
        while True:
            with self._jobs_cv:
                while not self._jobs and not self.closed:
                    self._jobs_cv.wait()
                if not self._jobs:
                    return
                batch = [self._jobs.popleft() for _ in range(min(len(self._jobs), GROUP_COMMIT_MAX))]
            self._run_group(batch)

    def _run_group(self, batch):
        deadline = time.monotonic() + BUSY_BUDGET_SECONDS
        if not self.write_lock.acquire(timeout=BUSY_BUDGET_SECONDS):
            return self._fail(batch, ServiceUnavailableError())
        try:
            conn = self.conn()
            conn.setbusytimeout(max(1, int((deadline - time.monotonic()) * 1000)))
            try:
                conn.execute("BEGIN IMMEDIATE")
            except apsw.Error as exc:
                self._rollback(conn)
                return self._fail(batch, translate_db_error(exc) or InternalError())
            finally:
                conn.setbusytimeout(5000)
            ok, retry = [], []
            for index, job in enumerate(batch):
                job.started.set()
                txn = WriteTxn(conn, job.now or format_ts(self.clock()))
                conn.execute("SAVEPOINT job; UPDATE write_context SET actor_id = ?, now = ?, request_id = ? "
                             "WHERE id = 1", (job.actor_id, txn.now, job.request_id))
                if job.timeout_ms:
                    self._local.deadline = time.monotonic() + job.timeout_ms / 1000.0
                try:
                    job.result = job.fn(txn)
                    conn.execute("RELEASE job")
                    ok.append(job)
                except BaseException as exc:  # the job's own failure: undo only its savepoint
                    job.result = None
                    job.error = (translate_db_error(exc) or InternalError()) if isinstance(exc, apsw.Error) else exc
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO job; RELEASE job")
                    else:
                        # SQLite rolled the whole transaction back (an interrupted statement can):
                        # the other writes of this group never happened; run them again.
                        retry = ok + batch[index + 1:]
                        break
                finally:
                    self._local.deadline = None
            if retry:
                for job in retry:
                    job.result = job.error = None
                with self._jobs_cv:
                    self._jobs.extendleft(reversed(retry))
                    self._jobs_cv.notify()
                batch = [j for j in batch if j not in retry]
                return
            try:
                conn.execute("UPDATE write_context SET actor_id = NULL, now = NULL, request_id = NULL "
                             "WHERE id = 1; COMMIT")
            except apsw.Error as exc:
                self._rollback(conn)
                for job in ok:
                    job.result, job.error = None, translate_db_error(exc) or InternalError()
        except BaseException as exc:
            self._rollback(self.conn())
            error = (translate_db_error(exc) or InternalError()) if isinstance(exc, apsw.Error) else exc
            for job in batch:
                if job.error is None:
                    job.result, job.error = None, error
        finally:
            self.write_lock.release()
            for job in batch:
                job.started.set()
                job.done.set()

    @staticmethod
    def _fail(batch, error):
        for job in batch:
            job.error = error
            job.started.set()
            job.done.set()

    @staticmethod
    def _rollback(conn):
        try:
            conn.execute("ROLLBACK")
        except apsw.Error:
            pass

    def close(self, checkpoint=False):
        """Close every connection; optionally optimize and truncate the WAL first."""
        with self._jobs_cv:
            self.closed = True
            self._jobs_cv.notify_all()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(BUSY_BUDGET_SECONDS)
        with self._all_lock:
            conns, self._all = self._all, []
            self.closed = True
        if checkpoint and not self.memory:
            try:
                c = self._raw_connection()
                c.setbusytimeout(2000)
                c.execute("PRAGMA optimize")
                for other in conns:
                    other.close()
                conns = []
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                c.close()
            except apsw.Error:
                pass
        for c in conns:
            try:
                c.close()
            except apsw.Error:
                pass
        if self.keeper is not None:
            self.keeper.close()
            self.keeper = None

    # -- registries and versions ----------------------------------------------------------------
    def registry(self, conn):
        """The table and field registries: {"tables": {id: (name, live)}, "fields": {...}}."""
        tables = {r[0]: (r[1], r[2] is None) for r in conn.execute(
            "SELECT id, name, removed_at FROM app_tables")}
        fields = {}
        for tid, fid, name, ftype, removed in conn.execute(
                "SELECT table_id, id, name, type, removed_at FROM app_fields"):
            fields.setdefault(tid, {})[fid] = (name, ftype, removed is None)
        return {"tables": tables, "fields": fields}

    def active_version(self, conn):
        """(number, snapshot dict, checksum, resolved dict) of the active version, or None."""
        rows = conn.execute("SELECT number, snapshot, checksum, resolved FROM schema_versions "
                            "WHERE active = 1 ORDER BY number DESC LIMIT 1").fetchall()
        if not rows:
            return None
        n, snap, checksum, resolved = rows[0]
        return n, json.loads(snap), checksum, json.loads(resolved)


class ServerLease:
    """The exclusive OS lock on `<database>.lock` held by a serving process (OPERATIONS.md §7.1)."""

    def __init__(self, db_path):
        self.path = db_path + ".lock"
        self.fh = None

    def holder(self):
        """The pid of the process holding the lease, or None when it is free."""
        try:
            fh = open(self.path, "a+")
        except OSError:
            return None
        try:
            if _try_lock(fh):
                _unlock(fh)
                return None
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text.isdigit() else 0
        finally:
            fh.close()

    def acquire(self):
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise StartupError(f"cannot open {self.path}: {exc.strerror}") from None
        if not _try_lock(fh):
            fh.seek(0)
            text = fh.read().strip()
            fh.close()
            raise StartupError(f"the database is in use by another Sovrium server (pid {text or '?'})")
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh

    def release(self):
        if self.fh is not None:
            try:
                self.fh.seek(0)
                self.fh.truncate()
                _unlock(self.fh)
            finally:
                self.fh.close()
                self.fh = None


def _try_lock(fh):
    if os.name == "nt":   # pragma: no cover - Windows
        import msvcrt
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(fh):
    if os.name == "nt":   # pragma: no cover - Windows
        import msvcrt
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- Field indexes (OPERATIONS.md §7.3) ------------------------------------------------------------

def _index_expr(f):
    """The indexed expression of a field: its sort form over the unaliased `data` column."""
    return f.sort_sql("records").replace("records.data", "data")


def desired_indexes(schema):
    """{index name: CREATE INDEX statement} that the configuration requires."""
    out = {}
    for t in schema.tables:
        live = f"table_id = {t.id} AND deleted_at IS NULL"
        for f in t.fields:
            if not f.stored or f.family is None:
                continue
            raw = f"json_extract(data, '$.{f.key}')"
            if f.conf["unique"]:
                name = f"ux_t{t.id}_f{f.id}"
                out[name] = (f"CREATE UNIQUE INDEX {name} ON records({raw}) "
                             f"WHERE {live} AND {raw} IS NOT NULL")
            if f.conf["indexed"] or f.relation == "m2o":
                name = f"ix_t{t.id}_f{f.id}"
                out[name] = f"CREATE INDEX {name} ON records({_index_expr(f)}) WHERE {live}"
        for ix in t.conf["indexes"]:
            fields = [t.by_name[n] for n in ix["fields"]]
            if ix["unique"]:
                name = f"ux_t{t.id}_i_{ix['name']}"
                raws = [f"json_extract(data, '$.{f.key}')" for f in fields]
                out[name] = (f"CREATE UNIQUE INDEX {name} ON records({', '.join(raws)}) WHERE {live}"
                             + "".join(f" AND {r} IS NOT NULL" for r in raws))
            else:
                name = f"ix_t{t.id}_i_{ix['name']}"
                out[name] = (f"CREATE INDEX {name} ON records({', '.join(_index_expr(f) for f in fields)})"
                             f" WHERE {live}")
    return out


def sync_indexes(conn, schema):
    """Create missing field indexes, rebuild changed ones, drop the ones no longer required."""
    want = desired_indexes(schema)
    have = {name: sql for name, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' "
        "AND (name LIKE 'ix\\_t%' ESCAPE '\\' OR name LIKE 'ux\\_t%' ESCAPE '\\')")}
    for name, sql in have.items():
        if want.get(name) != sql:
            conn.execute(f'DROP INDEX "{name}"')
    for name, sql in want.items():
        if have.get(name) != sql:
            conn.execute(sql)


# -- Applying a configuration version (CONFIG.md §13) -----------------------------------------

def _cat(ftype, conf=None):
    """Conversion category of a stored type."""
    if ftype in TEXT_TYPES:
        return "text"
    if ftype in NUMBER_TYPES:
        return "number"
    if ftype in CHOICE_TYPES:
        return "choice"
    if ftype == "relationship":
        return "m2m" if conf and conf.get("relationType") == "many-to-many" else "m2o"
    if ftype == "user":
        return "users" if conf and conf.get("allowMultiple") else "user"
    return {"multi-select": "multi", "array": "array", "date": "date", "datetime": "datetime",
            "time": "time", "checkbox": "bool", "json": "json"}.get(ftype, ftype)


def _barcode_sql(v, fmt):
    """SQL that is true when text `v` is a valid barcode of `fmt` (CONFIG.md §5.9), check digits included."""
    if fmt == "CODE-128":
        return f"(length({v}) BETWEEN 1 AND 80 AND {v} NOT GLOB '*[^ -~]*')"
    if fmt == "CODE-39":
        return f"(length({v}) BETWEEN 1 AND 80 AND {v} NOT GLOB '*[^0-9A-Z .$/+%-]*')"
    if fmt == "UPC-E":
        return f"(length({v}) = 8 AND {v} NOT GLOB '*[^0-9]*' AND substr({v}, 1, 1) IN ('0', '1'))"
    n = {"EAN-13": 13, "EAN-8": 8, "UPC-A": 12}[fmt]
    # Weights 3, 1, 3, ... from the digit left of the check digit going left.
    total = " + ".join(f"substr({v}, {i}, 1) * {3 if (n - 1 - i) % 2 == 0 else 1}" for i in range(1, n))
    return (f"(length({v}) = {n} AND {v} NOT GLOB '*[^0-9]*' AND "
            f"(10 - ({total}) % 10) % 10 = CAST(substr({v}, {n}, 1) AS INTEGER))")


def _opts_sql(values):
    return "(" + ", ".join(sql_str(v) for v in values) + ")" if values else "(NULL)"


def conversion_sql(old_type, old_conf, f, v, raw):
    """conv(v) of CONFIG.md §13.3 as one SQL expression producing JSON-ready values, or None to keep.

    `v` is the stored SQL value, `raw` its JSON text; the result is JSON text (wrapped in json())
    or NULL for "cleared".
    """
    new, oc, nc = f.type, _cat(old_type, old_conf), _cat(f.type, f.conf)
    opts = [o["value"] for o in f.conf.get("options") or []]
    if new == "json":
        return None if old_type == "json" else f"json({raw})"
    if nc == "text":
        if oc in ("text", "choice", "date", "datetime", "time"):
            base = v
        elif oc == "number":
            base = f"sov_num_text({v})"
        elif oc == "bool":
            base = f"(CASE WHEN {v} THEN 'true' ELSE 'false' END)"
        elif oc in ("multi", "array"):
            base = f"(SELECT nullif(group_concat(CAST(value AS TEXT), ', '), '') FROM json_each({raw}))"
        else:
            return "NULL"
        if new == "single-line-text":
            base = f"replace(replace(replace({base}, char(13) || char(10), ' '), char(13), ' '), char(10), ' ')"
        elif new == "email":
            base = (f"(CASE WHEN lower(trim({base})) GLOB '?*@?*.?*' AND lower(trim({base})) NOT GLOB "
                    f"'*[ \t\n]*' AND lower(trim({base})) NOT GLOB '*@*@*' THEN lower(trim({base})) END)")
        elif new == "url":
            base = (f"(CASE WHEN (lower({base}) GLOB 'http://?*' OR lower({base}) GLOB 'https://?*') "
                    f"AND {base} NOT GLOB '*[ \t\n]*' THEN {base} END)")
        elif new == "color":
            base = f"(CASE WHEN {base} GLOB '#{'[0-9A-Fa-f]' * 6}' THEN upper({base}) END)"
        elif new == "phone-number":
            base = (f"(CASE WHEN length({base}) BETWEEN 3 AND 32 AND {base} NOT GLOB '*[^0-9 ().+-]*' "
                    f"THEN {base} END)")
        elif new == "barcode":
            base = f"(CASE WHEN {_barcode_sql(base, f.conf['format'])} THEN {base} END)"
        elif new == "rich-text":
            bad = " OR ".join(f"lower({base}) LIKE '%{m}%'" for m in
                              ("<script", "<style", "<iframe", "<object", "<embed", "javascript:"))
            base = (f"(CASE WHEN NOT ({bad} OR {base} GLOB '*<*[ /\"'']on*=*>*' "
                    f"OR {base} GLOB '*<*[ /\"'']ON*=*>*') THEN {base} END)")
        return _jq(base) if base != "NULL" else "NULL"
    if nc == "number":
        if oc == "number":
            base = v
        elif oc == "text":
            base = f"sov_parse_number({v})"
        elif oc == "bool":
            base = f"(CASE WHEN {v} THEN 1 ELSE 0 END)"
        else:
            return "NULL"
        if new in INTEGER_TYPES:
            base = f"(CASE WHEN {base} = CAST({base} AS INTEGER) THEN CAST({base} AS INTEGER) END)"
        return f"sov_num_text({base})"
    if nc == "bool":
        if oc == "text":
            return (f"(CASE WHEN lower(trim({v})) IN ('true', 'yes', '1') THEN 'true' "
                    f"WHEN {v} IS NOT NULL THEN 'false' END)")
        if oc == "number":
            return f"(CASE WHEN {v} = 0 THEN 'false' WHEN {v} IS NOT NULL THEN 'true' END)"
        return "NULL" if oc != "bool" else None
    if nc == "choice":
        if oc in ("text", "choice"):
            return f"(CASE WHEN {v} IN {_opts_sql(opts)} THEN {_jq(v)} END)"
        if oc == "multi":
            return (f"(CASE WHEN json_array_length({raw}) = 1 AND ({raw} ->> '$[0]') IN {_opts_sql(opts)} "
                    f"THEN {_jq(raw + ' ->> ' + sql_str('$[0]'))} END)")
        return "NULL"
    if nc == "multi":
        ranked = " UNION ALL ".join(f"SELECT {sql_str(o)} AS x, {i} AS k" for i, o in enumerate(opts))
        if oc == "multi":
            src = f"SELECT value AS p FROM json_each({raw})"
        elif oc == "choice":
            src = f"SELECT {v} AS p"
        elif oc == "text":
            src = (f"WITH RECURSIVE s(p, rest) AS (SELECT NULL, {v} || ',' UNION ALL SELECT "
                   f"trim(substr(rest, 1, instr(rest, ',') - 1)), substr(rest, instr(rest, ',') + 1) "
                   f"FROM s WHERE rest <> '') SELECT p FROM s WHERE p IS NOT NULL")
        else:
            return "NULL"
        return (f"(SELECT CASE WHEN count(*) > 0 THEN json_group_array(x) END FROM (SELECT DISTINCT o.x, o.k "
                f"FROM ({ranked}) o WHERE o.x IN ({src}) ORDER BY o.k))")
    if nc == "array":
        item = f.conf["itemType"]
        if oc == "array":
            return None
        if oc == "multi" and item == "text":
            return None
        return "NULL"
    if nc == "date":
        if oc == "date":
            return None
        if oc == "datetime":
            return _jq(f"sov_local_date({v}, {sql_str((old_conf or {}).get('timeZone') or 'UTC')})")
        return _jq(f"sov_parse_date({v})") if oc == "text" else "NULL"
    if nc == "datetime":
        tz = sql_str(f.conf["timeZone"])
        if oc == "datetime":
            return None
        if oc in ("date", "text"):
            return _jq(f"sov_parse_datetime({v}, {tz})")
        return "NULL"
    if nc == "time":
        if oc == "time":
            return None
        return _jq(f"sov_parse_time({v})") if oc == "text" else "NULL"
    if nc in ("m2o", "user"):
        if oc == nc:
            return None
        if (oc, nc) in (("m2m", "m2o"), ("users", "user")):
            return f"(CASE WHEN json_array_length({raw}) = 1 THEN {raw} -> '$[0]' END)"
        return "NULL"
    if nc in ("m2m", "users"):
        if oc == nc:
            return None
        if (oc, nc) in (("m2o", "m2m"), ("user", "users")):
            return f"json_array({v})"
        return "NULL"
    return None if oc == nc else "NULL"


class ConfigPlan:
    """What applying a new configuration would change, measured read-only (CONFIG.md §13)."""

    def __init__(self):
        self.errors, self.warnings = [], []
        self.updates = []         # (table_id, field key, conv SQL or None for delete, where)
        self.autonumbers = []     # (table_id, field)

    @property
    def data_loss(self):
        return [w for w in self.warnings if w.get("dataLoss")]


def plan_config(conn, old, new, registry):
    """Compare the active schema `old` (or None) with `new` over stored data; read-only."""
    plan = ConfigPlan()
    count = lambda sql, p=(): conn.execute(sql, p).fetchall()[0][0]
    old_tables = {t.id: t for t in (old.tables if old else [])}
    freg = registry.get("fields", {})
    new_ids = {t.id for t in new.tables}
    for tid, (name, live) in sorted(registry.get("tables", {}).items()):
        if live and tid not in new_ids:
            n = count("SELECT count(*) FROM records WHERE table_id = ?", (tid,))
            plan.warnings.append({"path": "", "message": f"Table '{name}' is no longer configured; its {n} "
                                  "records become dormant (keep its id to rename it)", "dataLoss": False,
                                  "records": n})
    for t in new.tables:
        ot = old_tables.get(t.id)
        treg = freg.get(t.id, {})
        new_fids = {f.id for f in t.fields}
        for fid, (fname, ftype, live) in sorted(treg.items()):
            if live and fid not in new_fids and registry["tables"].get(t.id, ("", False))[1]:
                n = count(f"SELECT count(*) FROM records WHERE table_id = {t.id} AND "
                          f"json_type(data, '$.f{fid}') IS NOT NULL")
                plan.warnings.append({"path": t.path, "message": f"Field '{fname}' is no longer configured; its "
                                      f"{n} values become dormant (keep its id to rename it)", "dataLoss": False,
                                      "records": n})
        for f in t.fields:
            _plan_field(plan, conn, t, f, ot.by_key.get(f.key) if ot else None, treg.get(f.id), count)
        _plan_unique(plan, conn, t, ot, count)
    return plan


def _plan_field(plan, conn, t, f, of, reg, count):
    if reg is None:
        if f.type == "autonumber":
            plan.autonumbers.append((t.id, f))
        return
    old_type, old_conf = reg[1], (of.conf if of else None)
    key, tid = f.key, t.id
    v, raw = f"json_extract(data, '$.{key}')", f"(data -> '$.{key}')"
    where = f"table_id = {tid} AND json_type(data, '$.{key}') IS NOT NULL"
    path = f.path + ".type"
    if f.type == "autonumber" and old_type != "autonumber":
        n = count(f"SELECT count(*) FROM records WHERE {where}")
        if n:
            plan.warnings.append({"path": path, "message": f"Changing '{f.name}' from {old_type} to autonumber "
                                  f"clears {n} values", "dataLoss": True, "records": n})
        plan.autonumbers.append((tid, f))
        return
    if not f.stored:
        if old_type in TYPE_OPTIONS and _stored_type(old_type, old_conf):
            n = count(f"SELECT count(*) FROM records WHERE {where}")
            if n:
                plan.warnings.append({"path": path, "message": f"Changing '{f.name}' from {old_type} to "
                                      f"{f.type} clears {n} values", "dataLoss": True, "records": n})
                plan.updates.append((tid, key, None, where))
        return
    if old_type == f.type and f.type == "relationship" and old_conf and \
            old_conf.get("relatedTable") != f.conf["relatedTable"]:
        n = count(f"SELECT count(*) FROM records WHERE {where}")
        if n:
            plan.warnings.append({"path": f.path + ".relatedTable", "message": f"Changing the related table of "
                                  f"'{f.name}' clears {n} values", "dataLoss": True, "records": n})
            plan.updates.append((tid, key, None, where))
        return
    regrade = f.type == "barcode" and (old_conf is None or old_conf.get("format") != f.conf["format"])
    conv = conversion_sql(old_type, old_conf, f, v, raw) \
        if (old_type != f.type or _cat(old_type, old_conf) != _cat(f.type, f.conf)) else None
    if regrade and conv is None:
        conv = conversion_sql("single-line-text", None, f, v, raw)
    if conv is not None:
        n = count(f"SELECT count(*) FROM records WHERE {where} AND ({conv}) IS NULL")
        if f.type == "checkbox" and _cat(old_type) == "text":
            n = count(f"SELECT count(*) FROM records WHERE {where} AND lower(trim({v})) NOT IN "
                      f"('true', 'yes', '1', 'false', 'no', '0')")
        if n:
            plan.warnings.append({"path": path, "message": f"Changing '{f.name}' from {old_type} to {f.type} "
                                  f"clears {n} values", "dataLoss": True, "records": n})
        plan.updates.append((tid, key, conv, where))
        return
    if f.type in CHOICE_TYPES + ("multi-select",):
        kept = [o["value"] for o in f.conf["options"]]
        if old_conf:
            removed = [o["value"] for o in old_conf.get("options", []) if o["value"] not in kept]
        else:   # a field brought back from dormancy: its old options are unknown, its values are not
            elems = f"json_each(data, '$.{key}')" if f.type == "multi-select" else None
            sql = (f"SELECT DISTINCT value FROM records, {elems} WHERE {where}" if elems else
                   f"SELECT DISTINCT {v} FROM records WHERE {where}")
            removed = sorted(r[0] for r in conn.execute(sql) if r[0] not in kept)
        for value in removed:
            if f.type == "multi-select":
                n = count(f"SELECT count(*) FROM records WHERE {where} AND EXISTS (SELECT 1 FROM "
                          f"json_each(data, '$.{key}') WHERE value = ?)", (value,))
            else:
                n = count(f"SELECT count(*) FROM records WHERE {where} AND {v} = ?", (value,))
            if n:
                plan.warnings.append({"path": f.path + ".options", "message": f"Removing option '{value}' "
                                      f"from '{f.name}' clears {n} values", "dataLoss": True, "records": n})
        if removed:
            if f.type == "multi-select":
                conv = conversion_sql("multi-select", None, f, v, raw)
            else:
                conv = f"(CASE WHEN {v} IN {_opts_sql(kept)} THEN {_jq(v)} END)"
            plan.updates.append((tid, key, conv, where))
    if old_conf:
        _plan_tightened(plan, t, f, old_conf, count, v, where)


def _stored_type(ftype, conf):
    if ftype in COMPUTED_TYPES[:-1] or ftype in SYSTEM_TYPES or ftype == "button":
        return False
    return not (ftype == "relationship" and conf and conf.get("relatedField"))


def _plan_tightened(plan, t, f, oc, count, v, where):
    live = f"table_id = {t.id} AND deleted_at IS NULL"
    checks = []
    nc = f.conf
    if nc["required"] and not oc.get("required"):
        checks.append(f"json_type(data, '$.{f.key}') IS NULL")
    if nc.get("maxLength") and (oc.get("maxLength") or 10 ** 9) > nc["maxLength"]:
        checks.append(f"length({v}) > {nc['maxLength']}")
    for key, op in (("min", "<"), ("max", ">")):
        if nc.get(key) is not None and nc.get(key) != oc.get(key) and f.family == "Number":
            checks.append(f"{v} {op} {nc[key]!r}")
    if nc.get("maxSelections") and (oc.get("maxSelections") or 10 ** 9) > nc["maxSelections"]:
        checks.append(f"json_array_length(data, '$.{f.key}') > {nc['maxSelections']}")
    if checks:
        n = count(f"SELECT count(*) FROM records WHERE {live} AND (" + " OR ".join(checks) + ")")
        if n:
            plan.warnings.append({"path": f.path, "message": f"{n} records do not satisfy the new rules of "
                                  f"'{f.name}'", "dataLoss": False, "records": n})


def _plan_unique(plan, conn, t, ot, count):
    convs = {key: conv for tid, key, conv, _ in plan.updates if tid == t.id}
    groups = [([f], f.name) for f in t.fields if f.conf["unique"] and f.stored]
    groups += [([t.by_name[n] for n in ix["fields"]], ", ".join(ix["fields"]))
               for ix in t.conf["indexes"] if ix["unique"]]
    for fields, label in groups:
        exprs = []
        for f in fields:
            if f.key in convs:
                exprs.append(convs[f.key] or "NULL")
            else:
                exprs.append(f"(data -> '$.{f.key}')")
        cond = " AND ".join(f"({e}) IS NOT NULL" for e in exprs)
        n = count(f"SELECT coalesce(sum(c), 0) FROM (SELECT count(*) AS c FROM records WHERE table_id = {t.id} "
                  f"AND deleted_at IS NULL AND {cond} GROUP BY {', '.join(exprs)} HAVING count(*) > 1)")
        if n:
            path = fields[0].path if len(fields) == 1 else t.path + ".indexes"
            plan.errors.append({"path": path, "message": f"{n} live records share a value in '{label}'; "
                                                         "it cannot be made unique"})


def _migrate_values(conn, plan):
    """Rewrite stored values: one UPDATE per table, so each record gets at most one history entry."""
    per_table = {}
    for tid, key, conv, where in plan.updates:
        per_table.setdefault(tid, ([], []))[0].append((key, conv))
    for tid, f in plan.autonumbers:
        per_table.setdefault(tid, ([], []))[1].append(f)
    for tid, (convs, numbers) in per_table.items():
        expr, conds = "data", []
        for key, conv in convs:
            present = f"json_type(data, '$.{key}') IS NOT NULL"
            if conv is None:
                expr = f"json_remove({expr}, '$.{key}')"
                conds.append(present)
            else:
                expr = (f"CASE WHEN ({conv}) IS NULL THEN json_remove({expr}, '$.{key}') "
                        f"ELSE json_set({expr}, '$.{key}', json({conv})) END")
                conds.append(f"({present} AND ({conv}) IS NOT (data -> '$.{key}'))")
        if numbers:
            for f in numbers:
                expr = f"json_set({expr}, '$.{f.key}', {f.conf['startFrom']} - 1 + n.num)"
            conn.execute(f"UPDATE records SET data = {expr} FROM (SELECT id, row_number() OVER (ORDER BY id) "
                         f"AS num FROM records WHERE table_id = {tid}) AS n WHERE records.id = n.id")
            for f in numbers:
                last = conn.execute(f"SELECT max(json_extract(data, '$.{f.key}')) FROM records "
                                    f"WHERE table_id = {tid}").fetchall()[0][0]
                conn.execute("INSERT OR REPLACE INTO sequences (table_id, field_id, last_value) VALUES (?, ?, ?)",
                             (tid, f.id, last if last is not None else f.conf["startFrom"] - 1))
        else:
            conn.execute(f"UPDATE records SET data = {expr} WHERE table_id = {tid} AND ({' OR '.join(conds)})")


def apply_config(txn, old, new, registry, plan, snapshot, checksum, source, actor_id=None,
                 message=None, restored_from=None):
    """Apply a planned configuration in the open write transaction; returns the version number."""
    conn, now = txn.conn, txn.now
    # Mark everything removed first so renames and swaps never collide on the live-name indexes.
    conn.execute("UPDATE app_tables SET removed_at = ? WHERE removed_at IS NULL", (now,))
    for t in new.tables:
        conn.execute("INSERT INTO app_tables (id, name, removed_at) VALUES (?, ?, NULL) "
                     "ON CONFLICT(id) DO UPDATE SET name = excluded.name, removed_at = NULL", (t.id, t.name))
        conn.execute("UPDATE app_fields SET removed_at = ? WHERE table_id = ? AND removed_at IS NULL",
                     (now, t.id))
        for f in t.fields:
            conn.execute("INSERT INTO app_fields (table_id, id, name, type, removed_at) VALUES (?, ?, ?, ?, NULL) "
                         "ON CONFLICT(table_id, id) DO UPDATE SET name = excluded.name, type = excluded.type, "
                         "removed_at = NULL", (t.id, f.id, f.name, f.type))
    old_pairs = set(conn.execute("SELECT table_id, field_key FROM link_fields").fetchall())
    conn.execute("DELETE FROM link_fields")
    new_pairs = {(t.id, f.key) for t in new.tables for f in t.fields if f.linked}
    for pair in new_pairs:
        conn.execute("INSERT INTO link_fields (table_id, field_key) VALUES (?, ?)", pair)
    _migrate_values(conn, plan)
    for pair in old_pairs - new_pairs:
        conn.execute("DELETE FROM links WHERE table_id = ? AND field_key = ?", pair)
    for tid, key in new_pairs - old_pairs:
        conn.execute("DELETE FROM links WHERE table_id = ? AND field_key = ?", (tid, key))
        conn.execute(f"INSERT OR IGNORE INTO links (table_id, field_key, source_id, target_id) "
                     f"SELECT {tid}, '{key}', r.id, j.value FROM records r, json_each(r.data, '$.{key}') j "
                     f"WHERE r.table_id = {tid} AND j.value IS NOT NULL")
    sync_indexes(conn, new)
    number = (conn.execute("SELECT coalesce(max(number), 0) + 1 FROM schema_versions").fetchall()[0][0])
    conn.execute("UPDATE schema_versions SET active = 0 WHERE active = 1")
    conn.execute("INSERT INTO schema_versions (number, snapshot, checksum, resolved, source, message, created_at, "
                 "created_by, restored_from, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                 (number, dumps(snapshot), checksum, dumps(resolved_ids_of(new.conf)), source, message, now,
                  actor_id, restored_from))
    return number

###############################################################################
# 9. Authentication ###########################################################
###############################################################################

SESSION_COOKIE = "better-auth.session_token"
SECURE_SESSION_COOKIE = "__Secure-better-auth.session_token"
ADMIN_SESSION_COOKIE = "better-auth.admin_session"
CLEARED_COOKIES = (SESSION_COOKIE, ADMIN_SESSION_COOKIE)
RESET_TOKEN_SECONDS = 3600
VERIFY_TOKEN_SECONDS = 86400
IMPERSONATION_SECONDS = 3600
HASH_CONCURRENCY = max(1, min(2, (os.cpu_count() or 2) - 1))
TOKEN_RE = re.compile(r"[A-Za-z0-9]{32}")
USER_COLUMNS = ("id, name, email, email_verified, image, created_at, updated_at, role, banned, ban_reason, "
                "ban_expires, two_factor_enabled")
SESSION_COLUMNS = ("id, token, user_id, expires_at, created_at, updated_at, ip_address, user_agent, "
                   "impersonated_by, active_organization_id")
DEFAULT_TEMPLATES = {
    "verifyEmail": ("Verify your email address for {appName}",
                    "Hello {name},\n\nplease confirm your email address for {appName} by opening this link:\n\n"
                    "{url}\n\nThe link expires in {expiresMinutes} minutes. If you did not sign up, ignore this "
                    "message.\n"),
    "resetPassword": ("Reset your password for {appName}",
                      "Hello {name},\n\nsomeone asked to reset the password of your {appName} account. To choose "
                      "a new password, open this link:\n\n{url}\n\nThe link expires in {expiresMinutes} minutes. "
                      "If you did not ask for it, ignore this message.\n"),
}


def password_limits(auth):
    """(min, max) password length of the emailAndPassword strategy (default 8..128)."""
    for s in (auth or {}).get("strategies", []):
        if s["type"] == "emailAndPassword":
            return s["minPasswordLength"], s["maxPasswordLength"]
    return 8, 128


def check_admin_variables(env, auth):
    """Startup step 2: AUTH_ADMIN_EMAIL / AUTH_ADMIN_PASSWORD must be usable (exit 2 otherwise)."""
    email = env["AUTH_ADMIN_EMAIL"].strip().lower()
    if len(email) > 254 or not EMAIL_RE.fullmatch(email):
        raise UsageError("AUTH_ADMIN_EMAIL must be a valid e-mail address")
    lo, hi = password_limits(auth)
    if not lo <= len(env["AUTH_ADMIN_PASSWORD"]) <= hi:
        raise UsageError(f"AUTH_ADMIN_PASSWORD must be between {lo} and {hi} characters")


def user_object(row):
    """The user object of API.md §13.1 from a users row (USER_COLUMNS order)."""
    uid, name, email, verified, image, created, updated, role, banned, reason, expires, tfa = row
    return {"id": uid, "name": name, "email": email, "emailVerified": bool(verified), "image": image,
            "createdAt": created, "updatedAt": updated, "role": role, "banned": bool(banned),
            "banReason": reason, "banExpires": expires, "twoFactorEnabled": bool(tfa)}


def session_object(row):
    """The session object of API.md §13.1 from a sessions row (SESSION_COLUMNS order)."""
    sid, token, uid, expires, created, updated, ip, agent, imp, org = row
    return {"id": sid, "token": token, "userId": uid, "expiresAt": expires, "createdAt": created,
            "updatedAt": updated, "ipAddress": ip, "userAgent": agent, "impersonatedBy": imp,
            "activeOrganizationId": org}


def sign_token(secret, token):
    """`<token>.<base64 HMAC-SHA256(secret, token)>` (API.md §1.5)."""
    mac = hmac.new(secret.encode("utf-8"), token.encode("utf-8"), hashlib.sha256).digest()
    return f"{token}.{base64.b64encode(mac).decode('ascii')}"


def unsign_token(secret, value):
    """The token of a signed value, or None when the signature does not verify."""
    token, _, sig = value.partition(".")
    if not sig or not TOKEN_RE.fullmatch(token):
        return None
    return token if hmac.compare_digest(sign_token(secret, token), value) else None


def hash_secret(text):
    """SHA-256 hex of a one-time secret: verification tokens are never stored in clear."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Passwords:
    """argon2id hashing with the configured profile; at most HASH_CONCURRENCY hashes at once."""

    def __init__(self, auth, env):
        profile = env.get("SOVRIUM_ARGON2_PROFILE")
        conf = (auth or {}).get("argon2") or {"profile": "owasp"}
        t, m, p = ARGON2_PROFILES[profile or conf.get("profile", "owasp")]
        if not profile:
            t, m, p = conf.get("timeCost", t), conf.get("memoryCost", m), conf.get("parallelism", p)
        self.profile = profile or conf.get("profile", "owasp")
        self.hasher = argon2.PasswordHasher(time_cost=t, memory_cost=m, parallelism=p, hash_len=32,
                                            salt_len=16, type=argon2.Type.ID)
        self.gate = threading.BoundedSemaphore(HASH_CONCURRENCY)
        self._dummy = None

    def hash(self, password):
        with self.gate:
            return self.hasher.hash(password)

    def verify(self, stored, password):
        """(matches, upgraded hash or None)."""
        with self.gate:
            try:
                self.hasher.verify(stored, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False, None
            return True, (self.hasher.hash(password) if self.hasher.check_needs_rehash(stored) else None)

    def burn(self, password):
        """Verify against a dummy hash, so an unknown e-mail costs what a wrong password costs."""
        if self._dummy is None:
            self._dummy = self.hash(secrets.token_hex(16))
        self.verify(self._dummy, password)


class RateLimiter:
    """In-memory fixed windows per (rule, key) (API.md §14); counters belong to one App."""

    def __init__(self, settings, env, clock):
        conf = settings["rateLimits"]
        self.enabled = conf["enabled"] and parse_bool_text(env.get("SOVRIUM_RATE_LIMITS", "on")) is not False
        self.rules = {k: (v["limit"], v["window"]) for k, v in conf.items() if k != "enabled"}
        self.clock = clock
        self.windows = {}
        self.lock = threading.Lock()
        self.calls = 0

    def active(self, rule):
        return self.enabled and self.rules.get(rule, (0, 0))[0] > 0

    def peek(self, rule, key):
        """(allowed, limit, remaining, reset seconds) without counting."""
        return self._check(rule, key, count=False)

    def hit(self, rule, key):
        """Count one request; (allowed, limit, remaining, reset seconds). Refused requests are not counted."""
        return self._check(rule, key, count=True)

    def _check(self, rule, key, count):
        limit, window = self.rules[rule]
        now = self.clock().timestamp()
        with self.lock:
            self.calls += 1
            if self.calls % 1000 == 0:
                self.windows = {k: w for k, w in self.windows.items() if w[0] + self.rules[k[0]][1] > now}
            w = self.windows.get((rule, key))
            if w is None or w[0] + window <= now:
                w = self.windows[(rule, key)] = [now, 0]
            reset = max(1, math.ceil(w[0] + window - now))
            if w[1] >= limit:
                return False, limit, 0, reset
            if count:
                w[1] += 1
            return True, limit, limit - w[1], reset


def rate_limited_headers(limit, reset):
    """Headers of a 429 (API.md §14.2)."""
    return {"Retry-After": str(reset), "RateLimit-Limit": str(limit), "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(reset)}


class Mailer:
    """E-mail: stored in mail_outbox; sent by SMTP from a background queue when SMTP_URL is set."""

    def __init__(self, app):
        self.app = app
        self.url = app.env.get("SMTP_URL")
        self.queue = collections.deque()
        self.cv = threading.Condition()
        self.thread = None
        self.closed = False
        host = re.match(r"^https?://([^/:]+)", app.base_url)
        self.sender = app.env.get("SMTP_FROM") or f"{app.schema.name} <no-reply@{host.group(1) if host else 'localhost'}>"

    def render(self, template, **values):
        """(subject, text) of a template with {placeholders} filled (unknown ones stay as written)."""
        custom = ((self.app.schema.auth or {}).get("emailTemplates") or {}).get(template) or {}
        subject, text = DEFAULT_TEMPLATES[template]
        subject, text = custom.get("subject") or subject, custom.get("text") or text
        values = {"appName": self.app.schema.name, **{k: "" if v is None else str(v) for k, v in values.items()}}
        fill = lambda s: re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), s)
        return fill(subject), fill(text)

    def store(self, txn, to, subject, body):
        """Record a message in the open transaction; it is announced or sent after the commit."""
        txn.execute("INSERT INTO mail_outbox (to_addr, subject, body, status, created_at) VALUES (?, ?, ?, 'queued', ?)",
                    (to, subject, body, txn.now))
        return txn.conn.last_insert_rowid()

    def dispatch(self, ids):
        """After the commit: log the outbox line (outbox mode) or hand the messages to the sender thread."""
        if not ids:
            return
        if not self.url:
            with self.app.db.read() as conn:
                rows = conn.execute(f"SELECT to_addr, subject, body FROM mail_outbox WHERE id IN "
                                    f"({', '.join('?' * len(ids))})", ids).fetchall()
            for to, subject, body in rows:
                link = re.search(r"https?://\S+", body)
                code = re.search(r"\b\d{4,10}\b", body) if not link else None
                fields = {"to": to, "subject": subject}
                if link:
                    fields["link"] = link.group(0)
                elif code:
                    fields["code"] = code.group(0)
                self.app.log("mail", **fields)
            return
        with self.cv:
            self.queue.extend(ids)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="sovrium-mail", daemon=True)
                self.thread.start()
            self.cv.notify()

    def _run(self):
        while True:
            with self.cv:
                while not self.queue and not self.closed:
                    self.cv.wait()
                if not self.queue:
                    return
                mid = self.queue.popleft()
            self._deliver(mid)

    def _deliver(self, mid):
        with self.app.db.read() as conn:
            rows = conn.execute("SELECT to_addr, subject, body FROM mail_outbox WHERE id = ?", (mid,)).fetchall()
        if not rows:
            return
        to, subject, body = rows[0]
        error = None
        try:
            send_smtp(self.url, self.sender, to, subject, body)
        except Exception as exc:   # delivery failures are recorded, never raised to a request
            error = f"{type(exc).__name__}: {exc}"
            self.app.log("mail-failed", "error", to=to, subject=subject, error=error)
        now = format_ts(self.app.clock())
        self.app.db.submit(lambda txn: txn.execute(
            "UPDATE mail_outbox SET status = ?, error = ?, sent_at = ? WHERE id = ?",
            ("failed" if error else "sent", error, None if error else now, mid)))

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        if self.thread is not None:
            self.thread.join(5)


def send_smtp(url, sender, to, subject, body):
    """Send one plain-text UTF-8 message through the server named by SMTP_URL (OPERATIONS.md §10)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid()
    msg.set_content(body, charset="utf-8")
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with cls(parts.hostname, port, timeout=30) as smtp:
        if parts.scheme == "smtp" and query.get("starttls", ["false"])[0] == "true":
            smtp.starttls()
        if parts.username:
            smtp.login(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        smtp.send_message(msg)


def ensure_auth_secret(app):
    """AUTH_SECRET from the environment, or generated once and stored in `meta` (OPERATIONS.md §3)."""
    secret = app.env.get("AUTH_SECRET")
    if secret:
        if len(secret) < 32:
            app.warnings.append({"path": "", "message": "AUTH_SECRET is shorter than 32 characters",
                                 "dataLoss": False})
        return secret
    with app.db.read() as conn:
        rows = conn.execute("SELECT value FROM meta WHERE key = 'auth_secret'").fetchall()
    if rows:
        return rows[0][0]
    secret = secrets.token_urlsafe(32)

    def store(txn):
        txn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('auth_secret', ?)", (secret,))
        return txn.execute("SELECT value FROM meta WHERE key = 'auth_secret'").fetchall()[0][0]
    with app.db.write() as txn:
        secret = store(txn)
    app.warnings.append({"path": "", "message": "AUTH_SECRET is not set; a generated secret is stored in the "
                                                "database (set AUTH_SECRET in production)", "dataLoss": False})
    return secret


def request_cookies(environ):
    """The request's cookies as a dict (last value wins; unparseable pairs are ignored)."""
    out = {}
    for part in environ.get("HTTP_COOKIE", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out[name] = urllib.parse.unquote(value.strip().strip('"'))
    return out


def credential(environ, cookies, secret):
    """(token, via) from `Authorization: Bearer` (wins) or the session cookie; (None, None) otherwise."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:7].lower() == "bearer ":
        value = auth[7:].strip()
        if TOKEN_RE.fullmatch(value):
            return value, "bearer"
        return unsign_token(secret, value), "bearer"
    for name in (SESSION_COOKIE, SECURE_SESSION_COOKIE):
        if name in cookies:
            return unsign_token(secret, cookies[name]), "cookie"
    return None, None


SESSION_LOOKUP_SQL = (f"SELECT {', '.join('s.' + c.strip() for c in SESSION_COLUMNS.split(','))}, "
                      f"{', '.join('u.' + c.strip() for c in USER_COLUMNS.split(','))} "
                      f"FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token = ?")


def load_session(conn, token, now):
    """(session dict, user dict) of a live session token, or None (expired, banned, unknown)."""
    rows = conn.execute(SESSION_LOOKUP_SQL, (token,)).fetchall()
    if not rows:
        return None
    row = rows[0]
    session, user = session_object(row[:10]), user_object(row[10:])
    if session["expiresAt"] <= now:
        return None
    if is_banned(user, now):
        return None
    return session, user


def is_banned(user, now):
    """A ban in force (an expired ban is lifted on the next sign-in)."""
    return user["banned"] and (user["banExpires"] is None or user["banExpires"] > now)


def actor_of(schema, user):
    """The Actor of a signed-in user; a stored role that is not configured counts as viewer."""
    role = user["role"] if user["role"] in schema.roles else "viewer"
    return Actor("user", user, role)

###############################################################################
# 10. Permissions #############################################################
###############################################################################


class Actor:
    """Who is calling: the system (embedding), the local user (no-auth mode), anonymous or a user."""

    def __init__(self, kind, user=None, role=None):
        self.kind, self.user, self.role = kind, user, role

    @property
    def id(self):
        return self.user["id"] if self.user else None

    @property
    def all_powerful(self):
        """System and no-auth callers pass every check; admins pass permission checks."""
        return self.kind in ("system", "local")

    @property
    def is_admin(self):
        return self.all_powerful or self.role == "admin"

    @property
    def anonymous(self):
        return self.kind == "anonymous"


SYSTEM = Actor("system")
LOCAL = Actor("local")
ANONYMOUS = Actor("anonymous")


def allowed(actor, rule):
    """The one permission decision: does `actor` pass `rule` ('all', 'authenticated', [roles])?"""
    if actor.all_powerful or rule == "all":
        return True
    if actor.anonymous:
        return False
    if actor.role == "admin" or rule == "authenticated":
        return True
    return actor.role in rule


def table_rule(table, action):
    """The effective rule of a table action with the defaults of CONFIG.md §7.3."""
    rule = table.permissions.get(action)
    if rule is not None:
        return rule
    if action == "read":
        return "authenticated"
    if action == "comment":
        read = table_rule(table, "read")
        return "authenticated" if read == "all" else read
    if action == "restore":
        return table_rule(table, "delete")
    if action == "permanentDelete":
        return []
    return _default_roles([r for r in table.schema.roles if r not in BUILTIN_ROLES])


def can(actor, table, action):
    """True when the actor passes the table-level permission `action`."""
    if action == "comment" and actor.anonymous and table.permissions.get("comment") != "all":
        return False
    return allowed(actor, table_rule(table, action))


def deny(actor, message=None):
    """The refusal for a visible resource: anonymous 401, signed-in 403 (API.md §1.13)."""
    if actor.anonymous:
        return UnauthorizedError()
    return ForbiddenError(message)


def require_table(actor, schema, ref, action=None):
    """The table named by `ref` if the actor may read it (and perform `action`), else 401/403/404."""
    table = schema.table(ref) if isinstance(ref, str) else ref
    if table is None or not can(actor, table, "read"):
        raise UnauthorizedError() if actor.anonymous else NotFoundError()
    if action and action != "read" and not can(actor, table, action):
        raise deny(actor)
    return table


def field_access(actor, table):
    """{field name: (readable, writable)} of the fields visible to the actor (read or write)."""
    key = (actor.kind, actor.role)
    cached = table.access_cache.get(key)
    if cached is None:
        cached = table.access_cache[key] = _field_access(actor, table)
    return cached


def readable_names(actor, table):
    """Names of the fields whose values the actor may receive and query."""
    key = (actor.kind, actor.role, "r")
    cached = table.access_cache.get(key)
    if cached is None:
        cached = table.access_cache[key] = frozenset(n for n, (r, _) in field_access(actor, table).items() if r)
    return cached


def _field_access(actor, table):
    out = {}
    for f in table.data_fields:
        if actor.all_powerful or actor.role == "admin":
            out[f.name] = (True, not f.readonly)
            continue
        fp = table.field_permissions.get(f.name, {})
        readable = allowed(actor, fp.get("read", table_rule(table, "read")))
        writable = not f.readonly and ("write" not in fp or allowed(actor, fp["write"]))
        if f.type == "formula" and readable:
            readable = all(allowed(actor, table.field_permissions.get(d.name, {}).get(
                "read", table_rule(table, "read"))) for d in _formula_closure(f))
        if readable or writable:
            out[f.name] = (readable, writable)
    return out


def row_predicate(actor, table, action, a="r"):
    """The row-level rule of `action` as SQL over record alias `a` → (sql, params); '1' when none."""
    if actor.all_powerful or actor.role == "admin":
        return "1", []
    rules = table.row_rules
    rule = rules.get(action)
    if rule is None and action in ("update", "delete"):
        rule = rules.get("write")
    if rule is None:
        return "1", []
    params = []
    return _condition_sql(rule, actor, table, a, params), params


def _condition_sql(cond, actor, table, a, params):
    if "logic" in cond:
        parts = [_condition_sql(c, actor, table, a, params) for c in cond["conditions"]]
        return "(" + f" {cond['logic'].upper()} ".join(parts) + ")"
    f = table.field(cond["field"])
    value, op = cond["value"], cond["operator"]
    if isinstance(value, str) and value.startswith("$currentUser."):
        if actor.anonymous or actor.user is None:
            return "0"
        value = {"$currentUser.id": actor.id, "$currentUser.email": actor.user.get("email"),
                 "$currentUser.role": actor.role}[value]
    x = f.value_sql(a)
    values = value if isinstance(value, list) else [value]
    if f.family == "Multi":
        elem = (f"EXISTS (SELECT 1 FROM json_each({x}) WHERE value IN ({', '.join('?' * len(values))}))"
                if values else "0")
        params.extend(values)
        if op in ("eq", "in"):
            return "(" + (elem if values != [None] else f"{x} IS NULL") + ")"
        return "(" + (f"NOT {elem}" if values != [None] else f"{x} IS NOT NULL") + ")"
    if value is None and op in ("eq", "neq"):
        return f"({x} IS {'NOT ' if op == 'neq' else ''}NULL)"
    if isinstance(value, bool):
        values = [1 if v else 0 for v in values]
    if op in ("eq", "neq"):
        params.append(values[0])
        return f"({x} = ?)" if op == "eq" else f"({x} IS NOT ?)"
    if not values:
        return "0" if op == "in" else "1"
    params.extend(values)
    marks = ", ".join("?" * len(values))
    return f"({x} IN ({marks}))" if op == "in" else f"({x} IS NULL OR {x} NOT IN ({marks}))"


def permissions_report(actor, table):
    """GET /api/tables/{t}/permissions: exactly what is enforced for this caller (API.md §3.3)."""
    power = actor.all_powerful or actor.role == "admin"
    return {
        "table": {a: can(actor, table, a) for a in PERMISSION_ACTIONS},
        "fields": {n: {"read": r, "write": w} for n, (r, w) in field_access(actor, table).items()},
        "rowLevel": {a: (not power and (a in table.row_rules or (a in ("update", "delete")
                                                                   and "write" in table.row_rules)))
                     for a in ("read", "create", "update", "delete")},
    }

###############################################################################
# 11. Query compiler ##########################################################
###############################################################################

CTX_PREFIX = "WITH _ctx(now) AS (SELECT ?) "
MAX_SORT_KEYS = 8
JSON_OBJECT_CHUNK = 400


def _raw_safe(text):
    """True when `text` appears verbatim in stored JSON wherever a value contains it."""
    return not any(c in '"\\' or ord(c) < 0x20 for c in text)


def _like_escape(text):
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqlBuilder:
    """Compiles parsed filter trees, searches and sorts into SQL over the record alias `r`."""

    def __init__(self, table):
        self.table = table
        self.params = []

    def node(self, node):
        kind = node[0]
        if kind == "leaf":
            return self.leaf(node[1], node[2], node[3])
        if kind == "not":
            return f"NOT ({self.node(node[1])})"
        parts = [self.node(n) for n in node[1]]
        if not parts:
            return "1" if kind == "and" else "0"
        return "(" + f" {kind.upper()} ".join(f"({p})" for p in parts) + ")"

    def leaf(self, f, op, v):
        x = f.value_sql("r")
        fam = f.family
        P = self.params
        if op in ("isNull", "isEmpty", "isNotNull", "isNotEmpty"):
            neg = op in ("isNotNull", "isNotEmpty")
            if fam == "Opaque" and f.stored:
                e = f"json_type(r.data, '$.{f.key}') IS NULL"
            elif fam == "Multi" and not f.stored:
                e = f"coalesce(json_array_length({x}), 0) = 0"
            else:
                e = f"{x} IS NULL"
            return f"NOT ({e})" if neg else e
        if fam == "Boolean":
            b = x if f.type == "checkbox" else f"coalesce({x}, 0)"
            if op in ("isTrue", "isFalse"):
                return f"{b} = {1 if op == 'isTrue' else 0}"
            P.append(1 if v else 0)
            return f"{b} = ?" if op == "equals" else f"{b} <> ?"
        if fam == "Multi":
            return self.multi(f, x, op, v)
        if fam == "Choice":
            return self.choice(f, x, op, v)
        if fam == "Date" and f.date_kind == "datetime":
            return self.datetime(x, op, v)
        if op == "equals":
            if fam == "Text":
                P.extend([v, v])
                return f"({x} = ? COLLATE NOCASE AND {x} = ?)"
            P.append(v)
            return f"{x} = ?"
        if op == "notEquals":
            P.append(v)
            return f"({x} IS NULL OR {x} <> ?)"
        if op in ("greaterThan", "lessThan", "greaterThanOrEqual", "lessThanOrEqual"):
            sym = {"greaterThan": ">", "lessThan": "<", "greaterThanOrEqual": ">=", "lessThanOrEqual": "<="}[op]
            P.append(v)
            return f"{x} COLLATE NOCASE {sym} ?" if fam == "Text" else f"{x} {sym} ?"
        if op in ("in", "notIn"):
            if fam == "Text" and v:
                # The equals form for each element, so the NOCASE index serves it.
                marks = ", ".join("?" * len(v))
                P.extend([*v, *v])
                e = f"({x} COLLATE NOCASE IN ({marks}) AND {x} IN ({marks}))"
                return e if op == "in" else f"({x} IS NULL OR NOT {e})"
            return self.in_list(x, op, v)
        return self.text_match(x, op, v, f)

    def in_list(self, x, op, values):
        if not values:
            return "0" if op == "in" else "1"
        self.params.extend(values)
        marks = ", ".join("?" * len(values))
        return f"{x} IN ({marks})" if op == "in" else f"({x} IS NULL OR {x} NOT IN ({marks}))"

    def text_match(self, x, op, v, f=None):
        esc = _like_escape(v)
        if f is not None and f.stored and op in ("contains", "startsWith", "endsWith") and _raw_safe(v):
            # Necessary condition on the raw JSON text, far cheaper than json_extract for every row.
            self.params.append(f"%{esc}%")
            return f"(r.data LIKE ? ESCAPE '\\' AND {self.text_match(x, op, v)})"
        if op in ("contains", "notContains"):
            self.params.append(f"%{esc}%")
            return f"{x} LIKE ? ESCAPE '\\'" if op == "contains" else f"({x} IS NULL OR {x} NOT LIKE ? ESCAPE '\\')"
        if op == "startsWith":
            self.params.extend([esc + "%", v, v + "\U0010ffff"])
            return f"({x} LIKE ? ESCAPE '\\' AND {x} COLLATE NOCASE >= ? AND {x} COLLATE NOCASE < ?)"
        self.params.append("%" + esc)
        return f"{x} LIKE ? ESCAPE '\\'"

    def choice(self, f, x, op, v):
        if op in ("contains", "notContains", "startsWith", "endsWith"):
            return self.text_match(x, op, v, f)
        rank = f.option_rank_sql(x)
        opts = [o["value"] for o in f.choice_options()]
        if op in ("in", "notIn"):
            idx = sorted({opts.index(s) for s in v if s in opts})
            if not idx:
                return "0" if op == "in" else "1"
            marks = ", ".join(str(i) for i in idx)
            return f"{rank} IN ({marks})" if op == "in" else f"({rank} IS NULL OR {rank} NOT IN ({marks}))"
        if v not in opts:
            return "0" if op == "equals" else "1"
        i = opts.index(v)
        return f"{rank} = {i}" if op == "equals" else f"({rank} IS NULL OR {rank} <> {i})"

    def datetime(self, x, op, v):
        P = self.params
        if op in ("in", "notIn"):
            if not v:
                return "0" if op == "in" else "1"
            parts = [self.datetime(x, "equals", item) for item in v]
            any_sql = "(" + " OR ".join(parts) + ")"
            return any_sql if op == "in" else f"({x} IS NULL OR NOT {any_sql})"
        if isinstance(v, tuple):
            start, end = v[1] + "T00:00:00.000Z", v[1] + "T23:59:59.999Z"
            if op == "equals":
                P.extend([start, end])
                return f"({x} >= ? AND {x} <= ?)"
            if op == "notEquals":
                P.extend([start, end])
                return f"({x} IS NULL OR {x} < ? OR {x} > ?)"
            bound = {"greaterThan": end, "lessThanOrEqual": end}.get(op, start)
            sym = {"greaterThan": ">", "lessThan": "<", "greaterThanOrEqual": ">=", "lessThanOrEqual": "<="}[op]
            P.append(bound)
            return f"{x} {sym} ?"
        if op == "equals":
            P.append(v)
            return f"{x} = ?"
        if op == "notEquals":
            P.append(v)
            return f"({x} IS NULL OR {x} <> ?)"
        sym = {"greaterThan": ">", "lessThan": "<", "greaterThanOrEqual": ">=", "lessThanOrEqual": "<="}[op]
        P.append(v)
        return f"{x} {sym} ?"

    def multi(self, f, x, op, v):
        P = self.params
        scalar = lambda e: (1 if e else 0) if isinstance(e, bool) else e
        if f.linked and op in ("contains", "notContains", "in", "notIn"):
            values = v if isinstance(v, list) else [v]
            if not values:
                return "0" if op == "in" else "1"
            P.extend(values)
            marks = ", ".join("?" * len(values))
            sub = (f"r.id IN (SELECT source_id FROM links WHERE table_id = {f.table.id} "
                   f"AND field_key = '{f.key}' AND target_id IN ({marks}))")
            return sub if op in ("contains", "in") else f"NOT ({sub})"
        if op in ("contains", "notContains"):
            P.append(scalar(v))
            e = f"EXISTS (SELECT 1 FROM json_each({x}) WHERE value = ?)"
            return e if op == "contains" else f"NOT {e}"
        if op in ("in", "notIn"):
            if not v:
                return "0" if op == "in" else "1"
            P.extend(scalar(e) for e in v)
            e = f"EXISTS (SELECT 1 FROM json_each({x}) WHERE value IN ({', '.join('?' * len(v))}))"
            return e if op == "in" else f"NOT {e}"
        distinct = []
        for e in v:
            if scalar(e) not in distinct:
                distinct.append(scalar(e))
        if not distinct:
            e = f"coalesce(json_array_length({x}), 0) = 0"
        else:
            P.extend(distinct)
            marks = ", ".join("?" * len(distinct))
            e = (f"((SELECT count(DISTINCT value) FROM json_each({x})) = {len(distinct)} AND NOT EXISTS "
                 f"(SELECT 1 FROM json_each({x}) WHERE value NOT IN ({marks})))")
        return e if op == "equals" else f"NOT {e}"

    def search(self, fields, text):
        pattern = f"%{_like_escape(text)}%"
        parts = []
        prefilter = _raw_safe(text) and all(f.stored for f in fields)
        for f in fields:
            x = f.value_sql("r")
            if f.family == "Multi":
                parts.append(f"EXISTS (SELECT 1 FROM json_each({x}) WHERE value LIKE ? ESCAPE '\\')")
            else:
                parts.append(f"{x} LIKE ? ESCAPE '\\'")
            self.params.append(pattern)
        if not parts:
            return "0"
        if prefilter:
            self.params.insert(len(self.params) - len(parts), pattern)
            return "(r.data LIKE ? ESCAPE '\\' AND (" + " OR ".join(parts) + "))"
        return "(" + " OR ".join(parts) + ")"


def parse_sort(text, table, visible, trash=False):
    """`a:asc,b:desc,-c` → [(field, desc)] (API.md §4.11)."""
    keys, seen = [], set()
    items = text.split(",")
    if len(items) > MAX_SORT_KEYS:
        raise field_error("sort", f"Too many sort fields (at most {MAX_SORT_KEYS})")
    for item in items:
        item = item.strip()
        desc = False
        if item.startswith("-"):
            name, desc = item[1:], True
        elif ":" in item:
            name, direction = item.split(":", 1)
            if direction not in ("asc", "desc"):
                raise field_error("sort", f"Invalid sort direction '{direction}'")
            desc = direction == "desc"
        else:
            name = item
        f = table.field(name, visible, trash=trash)
        if f is None:
            raise field_error("sort", f"Unknown field '{name}'")
        if name in seen:
            raise field_error("sort", f"Duplicate sort field '{name}'")
        if not f.sortable:
            raise field_error("sort", f"Field '{name}' cannot be sorted")
        seen.add(name)
        keys.append((f, desc))
    return keys


def order_sql(keys, tie_desc=False):
    """ORDER BY text for sort keys plus the id tie-breaker."""
    parts = [f.sort_sql("r") + (" DESC" if desc else "") for f, desc in keys]
    parts.append("r.id DESC" if tie_desc else "r.id")
    return ", ".join(parts)


def record_json_sql(table, names, deleted=False):
    """The SQL expression producing one record object of API.md §4.1 as JSON text."""
    key = (tuple(names), deleted)
    cached = table.record_sql_cache.get(key)
    if cached:
        return cached
    pairs = [(n, table.by_name[n].json_sql("r")) for n in names]
    chunks = [pairs[i:i + JSON_OBJECT_CHUNK] for i in range(0, len(pairs), JSON_OBJECT_CHUNK)] or [[]]
    fields = "json_object(" + ", ".join(f"'{n}', {e}" for n, e in chunks[0]) + ")"
    for chunk in chunks[1:]:
        fields = f"json_insert({fields}, " + ", ".join(f"'$.{n}', {e}" for n, e in chunk) + ")"
    extra = ", 'deletedAt', r.deleted_at, 'deletedBy', r.deleted_by" if deleted else ""
    sql = (f"json_object('id', r.id, 'fields', {fields}, 'createdAt', r.created_at, 'updatedAt', "
           f"r.updated_at, 'createdBy', r.created_by, 'updatedBy', r.updated_by{extra})")
    table.record_sql_cache[key] = sql
    return sql


def sort_index(table, keys, tree):
    """The field index that serves the first sort key, unless an equality filter may serve better."""
    if not keys or not isinstance(keys[0][0], Field):
        return None
    first = keys[0][0]
    name = None
    if first.conf["indexed"] or first.relation == "m2o":
        name = f"ix_t{table.id}_f{first.id}"
    else:
        for ix in table.conf["indexes"]:
            if not ix["unique"] and ix["fields"][0] == first.name:
                name = f"ix_t{table.id}_i_{ix['name']}"
                break
    tops = [] if tree is None else tree[1] if tree[0] == "and" else [tree]
    equal = {leaf[1].name for leaf in tops if leaf[0] == "leaf" and leaf[2] == "equals"}
    for ix in table.conf["indexes"]:
        # A composite index (a, b, ...) serves "a equals ... ORDER BY b" without a sort step.
        if not ix["unique"] and len(ix["fields"]) > 1 and ix["fields"][0] in equal \
                and ix["fields"][1] == first.name:
            return f"ix_t{table.id}_i_{ix['name']}"
    if name is None or tree is None:
        return name
    for leaf in tops:
        if leaf[0] == "leaf" and leaf[1] is not first and leaf[2] in ("equals", "in") and \
                isinstance(leaf[1], Field) and (leaf[1].conf["indexed"] or leaf[1].conf["unique"]
                                                or leaf[1].relation == "m2o"):
            return None
    return name


INDEXABLE_OPS = ("equals", "in", "greaterThan", "lessThan", "greaterThanOrEqual", "lessThanOrEqual",
                 "startsWith", "isTrue", "isFalse")


def filter_index(table, tree, equality_only=False):
    """An index that serves a top-level condition of the filter (for counts; for unsorted pages,
    only an equals/in condition, which is selective enough to beat walking the table in id order)."""
    if tree is None:
        return None
    tops = tree[1] if tree[0] == "and" else [tree]
    best = None
    for leaf in tops:
        if leaf[0] != "leaf" or leaf[2] not in INDEXABLE_OPS or not isinstance(leaf[1], Field):
            continue
        if equality_only and leaf[2] not in ("equals", "in"):
            continue
        f = leaf[1]
        if f.family == "Date" and f.date_kind == "datetime" and isinstance(leaf[3], tuple) and leaf[2] == "in":
            continue
        name = None
        if f.conf["indexed"] or f.relation == "m2o":
            name = f"ix_t{table.id}_f{f.id}"
        elif leaf[2] in ("equals", "in"):
            name = next((f"ix_t{table.id}_i_{ix['name']}" for ix in table.conf["indexes"]
                         if not ix["unique"] and ix["fields"][0] == f.name), None)
        if name and (best is None or leaf[2] in ("equals", "in")):
            best = name
            if leaf[2] in ("equals", "in"):
                break
    return best


def _prepare_selects(schema, ck):
    """Build and compile every table's full record SELECT once, so no request meets a bad one."""
    conn = apsw.Connection(":memory:")
    try:
        configure_connection(conn)
        conn.execute(schema_sql_text())
        for t in schema.tables:
            sql = (CTX_PREFIX + f"SELECT {record_json_sql(t, [f.name for f in t.data_fields], True)} "
                   f"FROM records r WHERE r.table_id = {t.id}")
            try:
                conn.execute("EXPLAIN " + sql, (None,)).fetchall()
            except apsw.Error:
                ck.error(t.path, "Formula is too complex")
    finally:
        conn.close()

###############################################################################
# 12. Records #################################################################
###############################################################################

READONLY_KEYS = ("id", "createdAt", "updatedAt", "createdBy", "updatedBy", "deletedAt", "deletedBy")
ROW_RULE_MESSAGE = "The record does not satisfy the row-level rule for this action"


class RawJson:
    """JSON text produced by SQLite, passed to HTTP untouched and parsed only for Python callers."""

    __slots__ = ("text", "_value", "id")

    def __init__(self, text, id=None):
        self.text, self._value, self.id = text, None, id

    def value(self):
        if self._value is None:
            self._value = json.loads(self.text)
        return self._value


class Ctx:
    """One call: the App's state as of its start, the caller, the request id and the clock reading."""

    def __init__(self, app, actor, request_id=None):
        self.app, self.actor, self.request_id = app, actor, request_id
        self.schema = app.schema
        self.db = app.db
        self.settings = self.schema.settings
        self.now = format_ts(app.clock())
        self.session = self.ip = self.user_agent = self.admin_session_token = None
        self.trusted_origins = app.static_origins
        self.effects = {}

    def read(self, single=False):
        """A time-limited read transaction (`single`: exactly one statement follows)."""
        return self.db.read(self.settings["queryTimeoutMs"], single)

    def next_query(self):
        """Give the next statement of this read its own full time limit (settings.queryTimeoutMs)."""
        self.db.rearm(self.settings["queryTimeoutMs"])

    def transact(self, fn):
        """Run fn(txn) in a time-limited write transaction crediting this call's actor and request."""
        return self.db.submit(fn, self.actor.id, self.request_id, self.now, self.settings["queryTimeoutMs"])


def _record_names(ctx, table, params, visible):
    """The field names to include in `fields` (API.md §4.12 `fields=`)."""
    raw = params.get("fields")
    if not raw:
        return [f.name for f in table.data_fields if f.name in visible]
    wanted = set()
    for name in raw.split(","):
        name = name.strip()
        if name in PSEUDO_FIELDS:
            continue
        if name not in visible:
            raise field_error("fields", f"Unknown field '{name}'")
        wanted.add(name)
    return [f.name for f in table.data_fields if f.name in wanted]


def _fetch(conn, ctx, table, names, where, params, deleted=False):
    """Record JSON texts for a WHERE clause (already including table and row predicates)."""
    sql = f"{CTX_PREFIX}SELECT {record_json_sql(table, names, deleted)} FROM records r WHERE {where}"
    return [row[0] for row in conn.execute(sql, [ctx.now, *params])]


def records_get(ctx, table_ref, record_id, params=None):
    """GET one record (API.md §4.4) → RawJson."""
    params = params or {}
    actor = ctx.actor
    table = require_table(actor, ctx.schema, table_ref)
    include_deleted = query_bool(params, "includeDeleted")
    if include_deleted and not can(actor, table, "delete"):
        raise deny(actor)
    visible = readable_names(actor, table)
    names = _record_names(ctx, table, params, visible)
    rid = _path_id(record_id)
    row_sql, row_params = row_predicate(actor, table, "read")
    where = f"r.id = ? AND r.table_id = {table.id} AND ({row_sql})"
    if not include_deleted:
        where += " AND r.deleted_at IS NULL"
    with ctx.read(single=True) as conn:
        rows = _fetch(conn, ctx, table, names, where, [rid, *row_params], include_deleted)
    if not rows:
        raise NotFoundError()
    return RawJson(rows[0])


def _path_id(text):
    """An integer id from a path segment (API.md §1.14); anything else names nothing."""
    if isinstance(text, int) and not isinstance(text, bool):
        if 1 <= text <= MAX_SAFE_INTEGER:
            return text
        raise NotFoundError()
    if isinstance(text, str) and re.fullmatch(r"[1-9][0-9]{0,15}", text):
        return int(text)
    raise NotFoundError()


def records_list(ctx, table_ref, params, trash=False, view=None, after_id=None):
    """GET the list of records (API.md §4.7), the trash (§6.1) or a view's records (§9.3) → RawJson.

    `after_id` (embedding `iterate`) restricts to ids above it, in id order (keyset pagination).
    """
    actor = ctx.actor
    table = require_table(actor, ctx.schema, table_ref, "delete" if trash else None)
    settings = ctx.settings
    include_deleted = False if (trash or view) else query_bool(params, "includeDeleted")
    if include_deleted and not can(actor, table, "delete"):
        raise deny(actor)
    skip_total = query_bool(params, "skipTotal")
    limit, offset = paginate_params(params, settings["defaultPageSize"], settings["maxPageSize"])
    visible = readable_names(actor, table)
    names = _record_names(ctx, table, params, visible)
    b = SqlBuilder(table)
    where = [f"r.table_id = {table.id}"]
    if trash:
        where.append("r.deleted_at IS NOT NULL")
    elif not include_deleted:
        where.append("r.deleted_at IS NULL")
    row_sql, row_params = row_predicate(actor, table, "read")
    if row_sql != "1":
        where.append(f"({row_sql})")
        b.params.extend(row_params)
    tree = None
    if params.get("filter"):
        try:
            tree = parse_filter_param(params["filter"], table, visible, trash)
        except _FilterProblem as exc:
            raise field_error("filter", exc.message) from None
        where.append(b.node(tree))
    if params.get("filterByFormula"):
        text = params["filterByFormula"]
        try:
            ftree = formula_to_filter(text, lambda n: _formula_filter_family(table, visible, n, trash))
            parsed = parse_filter_tree(ftree, table, visible, trash)
        except FormulaError as exc:
            raise field_error("filterByFormula", exc.message) from None
        except _FilterProblem as exc:
            raise field_error("filterByFormula", exc.message) from None
        where.append(b.node(parsed))
        tree = tree if tree is not None else parsed
    if after_id is not None:
        where.append("r.id > ?")
        b.params.append(after_id)
    search = params.get("search")
    if search:
        if len(search) > 200:
            raise field_error("search", "Parameter 'search' must be between 1 and 200 characters")
        fields = [f for f in table.data_fields if f.searchable and f.name in visible]
        where.append(b.search(fields, search))
    keys = parse_sort(params["sort"], table, visible, trash) if params.get("sort") else []
    if view is not None:
        if view.filter is not None:
            vb = SqlBuilder(table)
            where.append(vb.node(view.filter))
            b.params.extend(vb.params)
        if not params.get("sort"):
            keys = list(view.sorts)
        if view.group:
            keys = [view.group] + [k for k in keys if k[0] is not view.group[0]]
    if trash and not params.get("sort"):
        keys = [(table.pseudo["deletedAt"], True)]
    tie_desc = trash and not params.get("sort")
    where_sql = " AND ".join(where)
    index = None
    if not (trash or include_deleted):
        index = sort_index(table, keys, tree) if keys else filter_index(table, tree, equality_only=True)
    indexed_by = f" INDEXED BY {index}" if index else ""
    # The page comes back as one row: one SQLite step instead of one per record, so a busy server
    # does not make this thread win the GIL back fifty times. The aggregate reads the ordered,
    # limited subquery as a co-routine, in its order.
    page_sql = (f"{CTX_PREFIX}SELECT count(*), group_concat(rec, ',') FROM (SELECT "
                f"{record_json_sql(table, names, trash or include_deleted)} AS rec FROM records r{indexed_by} "
                f"WHERE {where_sql} ORDER BY {order_sql(keys, tie_desc)} LIMIT ? OFFSET ?)")
    with ctx.read() as conn:
        n, joined = conn.execute(page_sql, [ctx.now, *b.params, limit, offset]).fetchall()[0]
        has_next = None
        if skip_total:
            # Is there any record past this page? Order does not matter for that question.
            has_next = bool(conn.execute(
                f"{CTX_PREFIX}SELECT count(*) FROM (SELECT 1 FROM records r WHERE {where_sql} LIMIT 1 OFFSET ?)",
                [ctx.now, *b.params, offset + limit]).fetchall()[0][0])
        total = None
        ctx.next_query()
        if not skip_total and len(where) == (1 if include_deleted else 2):
            # No filter, search or row rule: the trigger-kept counters answer at once.
            counts = conn.execute("SELECT live, trashed FROM record_counts WHERE table_id = ?",
                                  (table.id,)).fetchall()
            live, trashed = counts[0] if counts else (0, 0)
            total = trashed if trash else live + trashed if include_deleted else live
        elif not skip_total:
            count_index = None if (trash or include_deleted) else filter_index(table, tree)
            hint = f" INDEXED BY {count_index}" if count_index else ""
            total = conn.execute(f"{CTX_PREFIX}SELECT count(*) FROM records r{hint} WHERE {where_sql}",
                                 [ctx.now, *b.params]).fetchall()[0][0]
        groups = None
        if view is not None and view.group and view.group[0].name in visible:
            ctx.next_query()
            groups = _view_groups(conn, ctx, view, where_sql, b.params)
    pag = pagination(limit, offset, n, total)
    if skip_total:
        pag["hasNextPage"] = has_next
    text = '{"records":[' + (joined or "") + '],"pagination":' + dumps(pag)
    if groups is not None:
        text += ',"groups":' + dumps(groups)
    return RawJson(text + "}")


def _view_groups(conn, ctx, view, where_sql, params):
    f, desc = view.group
    direction = " DESC" if desc else ""
    sql = (f"{CTX_PREFIX}SELECT g, n FROM (SELECT {f.jtext_sql('r')} AS g, min({f.sort_sql('r')}) AS k, "
           f"count(*) AS n FROM records r WHERE {where_sql} GROUP BY g) ORDER BY k{direction}, g{direction}")
    return [{"value": json.loads(g) if g is not None else None, "count": n}
            for g, n in conn.execute(sql, [ctx.now, *params])]


def _formula_filter_family(table, visible, name, trash):
    f = table.field(name, visible, trash=trash)
    if f is None:
        raise FormulaError("unknown", None, f"Unknown field '{name}'")
    return f.family


# -- writes ----------------------------------------------------------------------------------------

def split_body(body, allow_updated_at=False):
    """A record write body (wrapped or flat) → (values, updatedAt or None) (API.md §4.2)."""
    if body is None:
        raise field_error("body", "Request body is required")
    if not isinstance(body, dict):
        raise field_error("body", "Request body must be a JSON object")
    body = dict(body)
    updated_at = body.pop("updatedAt", None) if allow_updated_at else None
    if isinstance(body.get("fields"), dict):
        extra = [k for k in body if k != "fields"]
        if extra:
            raise field_error(extra[0], f"Unknown member '{extra[0]}'")
        return dict(body["fields"]), updated_at
    return body, updated_at


def _check_updated_at(value, field="updatedAt", message="updatedAt must be an ISO 8601 date-time"):
    if value is None:
        return None
    parsed = parse_datetime(value, "UTC") if isinstance(value, str) else None
    if parsed is None:
        raise field_error(field, message)
    return parsed


class _Writer:
    """Validation of record writes shared by create and update (API.md §4.2)."""

    def __init__(self, ctx, conn, table):
        self.ctx, self.conn, self.table = ctx, conn, table
        self.access = field_access(ctx.actor, table)

    def check_keys(self, values, prefix="", permissions=True):
        errors = []
        for key in values:
            f = self.table.by_name.get(key)
            if key in READONLY_KEYS:
                errors.append({"field": prefix + key, "message": f"Cannot write to readonly field '{key}'"})
            elif f is None or key not in self.access:
                errors.append({"field": prefix + key, "message": f"Unknown field '{key}'"})
            elif f.readonly:
                errors.append({"field": prefix + key, "message": f"Cannot write to readonly field '{key}'"})
        if errors:
            raise ValidationError("One or more fields failed validation", errors)
        for key in values if permissions else ():
            if not self.access[key][1]:
                raise deny(self.ctx.actor, f"You do not have permission to write field '{key}'")

    def validate(self, values, stored=None, record_id=None, prefix="", batch_seen=None):
        """Validate values; returns {field key: stored value or None}; raises 400 with every error."""
        errors, out = [], {}
        creating = stored is None
        table = self.table
        for name, value in values.items():
            f = table.by_name[name]
            try:
                v = validate_value(f.conf, value)
            except ValueProblem as exc:
                errors.append({"field": prefix + name, "message": exc.message})
                continue
            out[f.key] = v
        groups = table.write_groups()
        if creating:
            for f in groups["defaults"]:
                if f.name not in values:
                    d = f.conf["default"]
                    out[f.key] = (self.ctx.now if d == "now" and f.type == "datetime" else
                                  self.ctx.now[:10] if d == "today" and f.type == "date" else d)
        failed = {e["field"][len(prefix):] for e in errors}
        for f in groups["required"]:
            if f.name in failed:
                continue
            if creating and out.get(f.key) is None or not creating and f.key in out and out[f.key] is None:
                errors.append({"field": prefix + f.name, "message": f"Field '{f.name}' is required"})
                failed.add(f.name)
        for f in groups["links"]:
            if f.key in out and out[f.key] is not None and f.name not in failed:
                msg = self.check_links(f, out[f.key], (stored or {}).get(f.key))
                if msg:
                    errors.append({"field": prefix + f.name, "message": msg})
                    failed.add(f.name)
        if groups["unique"]:
            errors += self.check_unique(out, stored, record_id, prefix, failed, batch_seen)
        if errors:
            order = {f.name: i for i, f in enumerate(table.fields)}
            errors.sort(key=lambda e: order.get(e["field"][len(prefix):], -1))
            raise ValidationError("One or more fields failed validation", errors)
        return out

    def check_links(self, f, value, old):
        if f.type == "relationship" and f.relation in ("m2o", "m2m"):
            ids = value if isinstance(value, list) else [value]
            kept = set(old if isinstance(old, list) else [old] if old is not None else [])
            new = [i for i in ids if i not in kept]
            if not new:
                return None
            target = f.target
            actor = self.ctx.actor
            if not can(actor, target, "read"):
                return f"Field '{f.name}' references a record that does not exist: {new[0]}"
            row_sql, row_params = row_predicate(actor, target, "read")
            marks = ", ".join("?" * len(new))
            found = {r[0] for r in self.conn.execute(
                f"{CTX_PREFIX}SELECT r.id FROM records r WHERE r.id IN ({marks}) AND r.table_id = {target.id} "
                f"AND r.deleted_at IS NULL AND ({row_sql})", [self.ctx.now, *new, *row_params])}
            for i in new:
                if i not in found:
                    return f"Field '{f.name}' references a record that does not exist: {i}"
        if f.type == "user":
            ids = value if isinstance(value, list) else [value]
            kept = set(old if isinstance(old, list) else [old] if old is not None else [])
            new = [i for i in ids if i not in kept]
            if new:
                marks = ", ".join("?" * len(new))
                found = {r[0] for r in self.conn.execute(f"SELECT id FROM users WHERE id IN ({marks})", new)}
                for i in new:
                    if i not in found:
                        return f"Field '{f.name}' references an unknown user '{i}'"
        return None

    def check_unique(self, out, stored, record_id, prefix, failed, batch_seen):
        errors = []
        table = self.table
        merged = dict(stored or {})
        merged.update(out)
        not_self = "AND id <> ?" if record_id else ""
        self_p = [record_id] if record_id else []
        for f in table.data_fields:
            if not f.conf["unique"] or f.key not in out or out[f.key] is None or f.name in failed:
                continue
            v = out[f.key]
            taken = self.conn.execute(
                f"SELECT 1 FROM records WHERE table_id = {table.id} AND deleted_at IS NULL AND "
                f"json_extract(data, '$.{f.key}') = ? {not_self} LIMIT 1", [v, *self_p]).fetchall()
            key = ("f", f.key, dumps(v))
            if taken or (batch_seen is not None and key in batch_seen):
                errors.append({"field": prefix + f.name, "message": f"Field '{f.name}' must be unique"})
                failed.add(f.name)
            elif batch_seen is not None:
                batch_seen.add(key)
        for ix in table.conf["indexes"]:
            if not ix["unique"]:
                continue
            fields = [table.by_name[n] for n in ix["fields"]]
            if not any(f.key in out for f in fields) or any(f.name in failed for f in fields):
                continue
            values = [merged.get(f.key) for f in fields]
            if any(v is None for v in values):
                continue
            cond = " AND ".join(f"json_extract(data, '$.{f.key}') = ?" for f in fields)
            taken = self.conn.execute(f"SELECT 1 FROM records WHERE table_id = {table.id} AND deleted_at IS NULL "
                                      f"AND {cond} {not_self} LIMIT 1", [*values, *self_p]).fetchall()
            key = ("i", ix["name"], dumps(values))
            if taken or (batch_seen is not None and key in batch_seen):
                label = ", ".join(f"'{n}'" for n in ix["fields"])
                for f in fields:
                    errors.append({"field": prefix + f.name, "message": f"Fields {label} must be unique together"})
                    failed.add(f.name)
            elif batch_seen is not None:
                batch_seen.add(key)
        return errors

    def check_row_rule(self, action, data, meta):
        """Evaluate a row-level rule against a record that may not be stored yet."""
        row_sql, row_params = row_predicate(self.ctx.actor, self.table, action)
        if row_sql == "1":
            return
        ok = self.conn.execute(
            f"{CTX_PREFIX}SELECT ({row_sql}) FROM (SELECT ? AS data, ? AS id, ? AS created_by, "
            f"? AS updated_by, ? AS created_at, ? AS updated_at, NULL AS deleted_at, NULL AS deleted_by) r",
            [self.ctx.now, *row_params, data, meta.get("id"), meta.get("created_by"), meta.get("updated_by"),
             meta.get("created_at"), meta.get("updated_at")]).fetchall()[0][0]
        if not ok:
            raise deny(self.ctx.actor, ROW_RULE_MESSAGE)


def _encode_data(table, values):
    """Stored data JSON with keys in configuration order (absent = no value)."""
    order = {f.key: i for i, f in enumerate(table.fields)}
    return dumps({k: values[k] for k in sorted(values, key=lambda k: order.get(k, 1 << 30))
                  if values[k] is not None})


def _next_autonumbers(txn, table, data):
    for f in table.fields:
        if f.type == "autonumber":
            start = f.conf["startFrom"]
            n = txn.execute("INSERT INTO sequences (table_id, field_id, last_value) VALUES (?, ?, ?) "
                            "ON CONFLICT(table_id, field_id) DO UPDATE SET last_value = max(last_value + 1, ?) "
                            "RETURNING last_value", (table.id, f.id, start, start)).fetchall()[0][0]
            data[f.key] = n


def insert_record(ctx, txn, table, values, prefix="", batch_seen=None):
    """Validate and insert one record in an open write transaction → new id."""
    w = _Writer(ctx, txn.conn, table)
    w.check_keys(values, prefix)
    data = w.validate(values, None, None, prefix, batch_seen)
    _next_autonumbers(txn, table, data)
    text = _encode_data(table, data)
    actor_id = ctx.actor.id
    w.check_row_rule("create", text, {"created_by": actor_id, "updated_by": actor_id,
                                      "created_at": txn.now, "updated_at": txn.now})
    txn.execute("INSERT INTO records (table_id, data, created_at, updated_at, created_by, updated_by) "
                "VALUES (?, ?, ?, ?, ?, ?)", (table.id, text, txn.now, txn.now, actor_id, actor_id))
    return txn.conn.last_insert_rowid()


def records_create(ctx, table_ref, body):
    """POST a record (API.md §4.3) → RawJson of the new record (`.id` is its id)."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "create")
    values, _ = split_body(body)
    visible = readable_names(ctx.actor, table)
    names = [f.name for f in table.data_fields if f.name in visible]
    def write(txn):
        rid = insert_record(ctx, txn, table, values)
        ctx.now = txn.now
        return RawJson(_fetch(txn.conn, ctx, table, names, "r.id = ?", [rid])[0], rid)
    return ctx.transact(write)


def _load_stored(conn, ctx, table, rid, action_rules=("read",), deleted=False):
    """(data dict, meta) of a record the caller can read, or 404."""
    row_sql, row_params = row_predicate(ctx.actor, table, "read")
    cond = "" if deleted is None else ("AND r.deleted_at IS NOT NULL" if deleted else "AND r.deleted_at IS NULL")
    rows = conn.execute(
        f"{CTX_PREFIX}SELECT r.data, r.created_by, r.updated_by, r.created_at, r.updated_at, r.deleted_at "
        f"FROM records r WHERE r.id = ? AND r.table_id = {table.id} {cond} AND ({row_sql})",
        [ctx.now, rid, *row_params]).fetchall()
    if not rows:
        raise NotFoundError()
    data, cb, ub, ca, ua, da = rows[0]
    return json.loads(data), {"id": rid, "created_by": cb, "updated_by": ub, "created_at": ca,
                              "updated_at": ua, "deleted_at": da, "text": data}


def _row_rule_holds(ctx, conn, table, action, rid):
    row_sql, row_params = row_predicate(ctx.actor, table, action)
    if row_sql == "1":
        return True
    return bool(conn.execute(f"{CTX_PREFIX}SELECT ({row_sql}) FROM records r WHERE r.id = ?",
                             [ctx.now, *row_params, rid]).fetchall()[0][0])


def update_record(ctx, txn, table, rid, values, updated_at, prefix="", conflict_message=None):
    """Validate and apply a PATCH in an open write transaction; returns True when data changed."""
    stored, meta = _load_stored(txn.conn, ctx, table, rid)
    if not _row_rule_holds(ctx, txn.conn, table, "update", rid):
        raise deny(ctx.actor, ROW_RULE_MESSAGE)
    if updated_at is not None and updated_at != meta["updated_at"]:
        raise ConflictError(conflict_message or "Record has been modified since the supplied updatedAt")
    w = _Writer(ctx, txn.conn, table)
    w.check_keys(values, prefix)
    changes = w.validate(values, stored, rid, prefix)
    new = dict(stored)
    for k, v in changes.items():
        f = table.by_key.get(k)
        if v is None or (v is False and k not in stored and f is not None and f.type == "checkbox"):
            new.pop(k, None)     # an unset checkbox already reads as false
        else:
            new[k] = v
    text = _encode_data(table, new)
    if text == _encode_data(table, stored):
        return False
    w.check_row_rule("update", text, {**meta, "updated_by": ctx.actor.id})
    txn.bump(meta["updated_at"])
    txn.execute("UPDATE records SET data = ?, updated_at = ?, updated_by = ? WHERE id = ?",
                (text, txn.now, ctx.actor.id, rid))
    return True


def records_update(ctx, table_ref, record_id, body):
    """PATCH a record (API.md §4.5) → RawJson of the record."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "update")
    values, updated_at = split_body(body, allow_updated_at=True)
    updated_at = _check_updated_at(updated_at)
    rid = _path_id(record_id)
    visible = readable_names(ctx.actor, table)
    names = [f.name for f in table.data_fields if f.name in visible]
    def write(txn):
        update_record(ctx, txn, table, rid, values, updated_at)
        ctx.now = txn.now
        return RawJson(_fetch(txn.conn, ctx, table, names, "r.id = ?", [rid])[0], rid)
    return ctx.transact(write)


def delete_effect(ctx, conn, table, ids, purge):
    """The whole effect of deleting `ids` of `table` (CONFIG.md §6.5).

    Returns (ordered [(table, id)] to delete, [(table, id, field, target id)] set-null cleanups).
    Raises 409 for `restrict` and for cascades beyond settings.batchLimit.
    """
    schema = ctx.schema
    live = "" if purge else "AND r.deleted_at IS NULL"
    owners = [(t, f) for t in schema.tables for f in t.fields if f.relation in ("m2o", "m2m")]
    selected = {(table.id, i) for i in ids}
    order = [(table, i) for i in ids]
    restricts, nulls = [], []
    queue = list(order)
    limit = ctx.settings["batchLimit"]
    while queue:
        t, rid = queue.pop(0)
        for ot, f in owners:
            if f.target is not t:
                continue
            if f.relation == "m2o":
                ref_sql = (f"SELECT r.id FROM records r WHERE r.table_id = {ot.id} AND "
                           f"json_extract(r.data, '$.{f.key}') = ? AND r.deleted_at IS NULL")
                if purge:   # trashed references too, without losing the live-rows index
                    ref_sql += (f" UNION ALL SELECT r.id FROM records r WHERE r.table_id = {ot.id} AND "
                                f"r.deleted_at IS NOT NULL AND json_extract(r.data, '$.{f.key}') = ?")
                refs = conn.execute(ref_sql, (rid, rid) if purge else (rid,)).fetchall()
            else:
                refs = conn.execute(f"SELECT r.id FROM links l JOIN records r ON r.id = l.source_id WHERE "
                                    f"l.table_id = {ot.id} AND l.field_key = '{f.key}' AND l.target_id = ? {live}",
                                    (rid,)).fetchall()
            for (ref,) in refs:
                rule = f.conf["onDelete"]
                if rule == "cascade":
                    if (ot.id, ref) not in selected:
                        selected.add((ot.id, ref))
                        order.append((ot, ref))
                        queue.append((ot, ref))
                        if len(order) - len(ids) > limit:
                            raise ConflictError(f"Delete would cascade to more than {limit} records")
                elif rule == "restrict":
                    restricts.append((ot.id, ref))
                elif purge:
                    nulls.append((ot, ref, f, rid))
    if any(r not in selected for r in restricts):
        raise ConflictError("Record cannot be deleted because other records reference it")
    nulls = [n for n in nulls if (n[0].id, n[1]) not in selected]
    return order, nulls


def delete_records(ctx, txn, table, ids, purge):
    """Soft-delete or purge records (with their onDelete effect) in an open write transaction."""
    order, nulls = delete_effect(ctx, txn.conn, table, ids, purge)
    actor_id = ctx.actor.id
    if nulls:
        targets = sorted({n[1] for n in nulls})
        marks = ", ".join("?" * len(targets))
        latest = txn.execute(f"SELECT max(updated_at) FROM records WHERE id IN ({marks})", targets).fetchall()[0][0]
        txn.bump(latest)
        for ot, ref, f, target in nulls:
            data = json.loads(txn.execute("SELECT data FROM records WHERE id = ?", (ref,)).fetchall()[0][0])
            v = data.get(f.key)
            if isinstance(v, list):
                v = [x for x in v if x != target] or None
            elif v == target:
                v = None
            if v is None:
                data.pop(f.key, None)
            else:
                data[f.key] = v
            txn.execute("UPDATE records SET data = ?, updated_at = ?, updated_by = ? WHERE id = ?",
                        (_encode_data(ot, data), txn.now, actor_id, ref))
    all_ids = [i for _, i in order]
    for start in range(0, len(all_ids), 500):
        chunk = all_ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        if purge:
            txn.execute(f"DELETE FROM comments WHERE record_id IN ({marks})", chunk)
            txn.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
        else:
            txn.execute(f"UPDATE records SET deleted_at = ?, deleted_by = ? WHERE id IN ({marks}) "
                        f"AND deleted_at IS NULL", [txn.now, actor_id, *chunk])
    return len(order)


def records_delete(ctx, table_ref, record_id, params=None):
    """DELETE a record: soft delete, or purge with ?permanent=true (API.md §4.6, §6.3)."""
    params = params or {}
    permanent = query_bool(params, "permanent")
    table = require_table(ctx.actor, ctx.schema, table_ref, "permanentDelete" if permanent else "delete")
    rid = _path_id(record_id)
    def write(txn):
        _load_stored(txn.conn, ctx, table, rid, deleted=None if permanent else False)
        if not _row_rule_holds(ctx, txn.conn, table, "delete", rid):
            raise deny(ctx.actor, ROW_RULE_MESSAGE)
        delete_records(ctx, txn, table, [rid], permanent)
    ctx.transact(write)


# -- history (API.md §7) --------------------------------------------------------------------------

HISTORY_SQL = ("SELECT id, action, before, after, actor_id, created_at FROM revisions WHERE record_id = ? "
               "ORDER BY id DESC LIMIT ? OFFSET ?")


def history_entry(table, readable, rid, action, before, after, actor, created_at):
    """One history entry with before/after rebuilt and stripped to the caller's fields."""
    after_data = json.loads(after) if after is not None else None
    delta = json.loads(before) if before is not None else None
    if action == "create":
        before_data = None
    elif action == "purge":
        before_data = delta
    else:
        before_data = dict(after_data)
        for k, v in delta.items():
            if v is None:
                before_data.pop(k, None)
            else:
                before_data[k] = v
    fields = [f for f in table.data_fields if f.stored and f.name in readable]
    view = lambda data: None if data is None else {f.name: data.get(f.key) for f in fields}
    b, a = view(before_data), view(after_data)
    changes = {}
    for f in fields:
        old = (b or {}).get(f.name)
        new = (a or {}).get(f.name)
        if old != new or type(old) is not type(new):
            changes[f.name] = {"from": old, "to": new}
    return {"id": rid, "action": action, "changes": changes, "before": b, "after": a, "userId": actor,
            "createdAt": created_at}


def records_history(ctx, table_ref, record_id, params=None):
    """GET a record's history, newest first (API.md §7)."""
    params = params or {}
    actor = ctx.actor
    table = require_table(actor, ctx.schema, table_ref)
    rid = _path_id(record_id)
    limit, offset = paginate_params(params, 50, ctx.settings["maxPageSize"])
    readable = readable_names(actor, table)
    with ctx.read() as conn:
        _, meta = _load_stored(conn, ctx, table, rid, deleted=None)
        if meta["deleted_at"] is not None and not can(actor, table, "delete"):
            raise NotFoundError()
        rows = conn.execute(HISTORY_SQL, (rid, limit, offset)).fetchall()
        total = conn.execute("SELECT count(*) FROM revisions WHERE record_id = ?", (rid,)).fetchall()[0][0]
    entries = [history_entry(table, readable, *row) for row in rows]
    return {"history": entries, "pagination": pagination(limit, offset, len(entries), total)}


# -- batch, upsert, restore (API.md §5, §6) ---------------------------------------------------------

def _batch_items(ctx, body, key):
    """The list under `key` of a batch body, within settings.batchLimit (413 beyond)."""
    if not isinstance(body, dict):
        raise field_error("body", "Request body must be a JSON object")
    items = body.get(key)
    if not isinstance(items, list):
        raise field_error(key, f"Field '{key}' must be a list" if key in body else f"Field '{key}' is required")
    if not items:
        raise field_error(key, "At least one record is required")
    limit = ctx.settings["batchLimit"]
    if len(items) > limit:
        raise PayloadTooLargeError(f"Batch size exceeds maximum of {limit} records")
    return items


def _return_records(body):
    value = body.get("returnRecords", True)
    if not isinstance(value, bool):
        raise field_error("returnRecords", "Field 'returnRecords' must be a boolean")
    return value


def _is_record_id(value):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SAFE_INTEGER


def _record_ids(items, key="ids"):
    """Validated record ids of a batch body (`ids[i]` errors: not an id, duplicate)."""
    errors, seen, out = [], set(), []
    for i, value in enumerate(items):
        if not _is_record_id(value):
            errors.append({"field": f"{key}[{i}]", "message": "Must be a record id"})
            continue
        value = int(value)
        if value in seen:
            errors.append({"field": f"{key}[{i}]", "message": "Duplicate id"})
        seen.add(value)
        out.append(value)
    if errors:
        raise ValidationError(errors=errors)
    return out


def _fetch_many(conn, ctx, table, names, ids, deleted=False):
    """Record JSON texts of `ids`, in the order given (one aggregate statement)."""
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    rows = conn.execute(f"{CTX_PREFIX}SELECT r.id, {record_json_sql(table, names, deleted)} FROM records r "
                        f"WHERE r.id IN ({marks})", [ctx.now, *ids]).fetchall()
    by_id = dict(rows)
    return [by_id[i] for i in ids]


def _records_body(texts, count, return_records, extra=None):
    text = '{"records":[' + ",".join(texts) + '],' if return_records else "{"
    text += f'"count":{count}'
    for k, v in (extra or {}).items():
        text += f',"{k}":{dumps(v)}'
    return RawJson(text + "}")


def _collect(errors, exc, prefix):
    """Merge one item's failure into a batch's error list (400s collect; others stop the batch)."""
    if isinstance(exc, ValidationError):
        for e in exc.errors or []:
            field = e["field"] if e["field"].startswith(prefix) else prefix + e["field"]
            errors.append({"field": field, "message": e["message"]})
        return
    raise exc


def records_batch_create(ctx, table_ref, body):
    """POST …/records/batch (API.md §5.1) → RawJson {"records"?, "count"}."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "create")
    items = _batch_items(ctx, body, "records")
    return_records = _return_records(body)
    values = []
    for i, item in enumerate(items):
        try:
            values.append(split_body(item)[0])
        except ValidationError as exc:
            if exc.errors and exc.errors[0]["field"] == "body":
                raise field_error(f"records[{i}]", "Must be a JSON object") from None
            raise field_error(f"records[{i}].{exc.errors[0]['field']}", exc.errors[0]["message"]) from None
    names = [f.name for f in table.data_fields if f.name in readable_names(ctx.actor, table)]
    _check_batch_keys(ctx, table, [(i, v) for i, v in enumerate(values)])

    def write(txn):
        errors, ids = [], []
        for i, v in enumerate(values):
            try:
                ids.append(insert_record(ctx, txn, table, v, prefix=f"records[{i}]."))
            except ApiError as exc:
                _collect(errors, exc, f"records[{i}].")
        if errors:
            raise ValidationError("One or more fields failed validation", errors)
        ctx.now = txn.now
        return _fetch_many(txn.conn, ctx, table, names, ids) if return_records else ids
    out = ctx.transact(write)
    return _records_body(out if return_records else [], len(out), return_records)


def _check_batch_keys(ctx, table, items):
    """Step 1 (keys) over every item, then step 2 (write permission), before any value is checked."""
    w = _Writer(ctx, None, table)
    errors = []
    for i, values in items:
        try:
            w.check_keys(values, f"records[{i}].", permissions=False)
        except ValidationError as exc:
            errors += exc.errors
    if errors:
        raise ValidationError("One or more fields failed validation", errors)
    for _, values in items:
        w.check_keys(values, "")


def records_batch_update(ctx, table_ref, body):
    """PATCH …/records/batch (API.md §5.2) → RawJson {"records"?, "count"}."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "update")
    items = _batch_items(ctx, body, "records")
    return_records = _return_records(body)
    errors, parsed, seen = [], [], set()
    for i, item in enumerate(items):
        p = f"records[{i}]"
        if not isinstance(item, dict):
            errors.append({"field": p, "message": "Must be a JSON object"})
            continue
        item = dict(item)
        rid = item.pop("id", None)
        if rid is None:
            errors.append({"field": f"{p}.id", "message": "Field 'id' is required"})
            continue
        if not _is_record_id(rid):
            errors.append({"field": f"{p}.id", "message": "Must be a record id"})
            continue
        rid = int(rid)
        if rid in seen:
            errors.append({"field": f"{p}.id", "message": "Duplicate id"})
            continue
        seen.add(rid)
        try:
            values, stamp = split_body(item, allow_updated_at=True)
            stamp = _check_updated_at(stamp, f"{p}.updatedAt")
        except ValidationError as exc:
            _collect(errors, exc, p + ".")
            continue
        parsed.append((i, rid, values, stamp))
    if errors:
        raise ValidationError(errors=errors)
    names = [f.name for f in table.data_fields if f.name in readable_names(ctx.actor, table)]
    _check_batch_keys(ctx, table, [(i, values) for i, _, values, _ in parsed])

    def write(txn):
        errs, ids = [], []
        for i, rid, values, stamp in parsed:
            try:
                update_record(ctx, txn, table, rid, values, stamp, prefix=f"records[{i}].",
                              conflict_message=f"Record {rid} has been modified since the supplied updatedAt")
                ids.append(rid)
            except NotFoundError:
                errs.append({"field": f"records[{i}].id", "message": "Record not found"})
            except ApiError as exc:
                _collect(errs, exc, f"records[{i}].")
        if errs:
            raise ValidationError(errors=errs) if all("Record not found" == e["message"] for e in errs) else \
                ValidationError("One or more fields failed validation", errs)
        ctx.now = txn.now
        return _fetch_many(txn.conn, ctx, table, names, ids) if return_records else ids
    out = ctx.transact(write)
    return _records_body(out if return_records else [], len(out), return_records)


def records_batch_delete(ctx, table_ref, body):
    """DELETE …/records/batch (API.md §5.3) → {"count"}."""
    if not isinstance(body, dict):
        raise field_error("body", "Request body must be a JSON object")
    permanent = body.get("permanent", False)
    if not isinstance(permanent, bool):
        raise field_error("permanent", "Field 'permanent' must be a boolean")
    table = require_table(ctx.actor, ctx.schema, table_ref, "delete")
    if permanent and not can(ctx.actor, table, "permanentDelete"):
        raise deny(ctx.actor)
    ids = _record_ids(_batch_items(ctx, body, "ids"))

    def write(txn):
        _check_targets(ctx, txn, table, ids, None if permanent else False, "delete")
        return delete_records(ctx, txn, table, ids, permanent)
    ctx.transact(write)
    return {"count": len(ids)}


def _check_targets(ctx, txn, table, ids, deleted, rule):
    """Every id names a row-readable record (live, trashed or either) passing the row rule `rule`."""
    errors = []
    row_sql, row_params = row_predicate(ctx.actor, table, "read")
    marks = ", ".join("?" * len(ids))
    cond = "" if deleted is None else ("AND r.deleted_at IS NOT NULL" if deleted else "AND r.deleted_at IS NULL")
    found = {r[0]: r[1] for r in txn.execute(
        f"{CTX_PREFIX}SELECT r.id, r.deleted_at FROM records r WHERE r.id IN ({marks}) AND "
        f"r.table_id = {table.id} AND ({row_sql})", [ctx.now, *ids, *row_params])}
    for i, rid in enumerate(ids):
        if rid not in found or (deleted is False and found[rid] is not None):
            errors.append({"field": f"ids[{i}]", "message": "Record not found"})
        elif deleted is True and found[rid] is None:
            errors.append({"field": f"ids[{i}]", "message": "Record is not in the trash"})
    if errors:
        raise ValidationError(errors=errors)
    for rid in ids:
        if not _row_rule_holds(ctx, txn.conn, table, rule, rid):
            raise deny(ctx.actor, ROW_RULE_MESSAGE)


def restore_records(ctx, txn, table, ids, prefixes):
    """Restore trashed records after re-checking uniqueness; `prefixes[i]` names item i in errors."""
    errors = []
    w = _Writer(ctx, txn.conn, table)
    marks = ", ".join("?" * len(ids))
    rows = {r[0]: (json.loads(r[1]), r[2]) for r in txn.execute(
        f"SELECT id, data, updated_at FROM records WHERE id IN ({marks})", ids)}
    seen = set()
    for rid, field in zip(ids, prefixes):
        data, _ = rows[rid]
        problems = w.check_unique(data, data, rid, "", set(), seen)
        errors += [{"field": field, "message": p["message"]} for p in problems]
    if errors:
        raise ValidationError("One or more fields failed validation", errors)
    txn.bump(max(u for _, u in rows.values()))
    txn.execute(f"UPDATE records SET deleted_at = NULL, deleted_by = NULL, updated_at = ?, updated_by = ? "
                f"WHERE id IN ({marks})", [txn.now, ctx.actor.id, *ids])


def records_restore(ctx, table_ref, record_id):
    """POST …/records/{id}/restore (API.md §6.2) → RawJson of the restored record."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "restore")
    rid = _path_id(record_id)
    names = [f.name for f in table.data_fields if f.name in readable_names(ctx.actor, table)]

    def write(txn):
        _, meta = _load_stored(txn.conn, ctx, table, rid, deleted=None)
        if not _row_rule_holds(ctx, txn.conn, table, "delete", rid):
            raise deny(ctx.actor, ROW_RULE_MESSAGE)
        if meta["deleted_at"] is None:
            raise ConflictError("Record is not in the trash")
        try:
            restore_records(ctx, txn, table, [rid], ["record"])
        except ValidationError as exc:
            raise ValidationError("One or more fields failed validation", [
                {"field": _unique_field(e["message"]), "message": e["message"]} for e in exc.errors]) from None
        ctx.now = txn.now
        return RawJson(_fetch(txn.conn, ctx, table, names, "r.id = ?", [rid], deleted=True)[0], rid)
    return ctx.transact(write)


def _unique_field(message):
    m = re.match(r"Fields? '([^']+)'", message)
    return m.group(1) if m else "record"


def records_batch_restore(ctx, table_ref, body):
    """POST …/records/batch/restore (API.md §5.4) → {"count"}."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "restore")
    ids = _record_ids(_batch_items(ctx, body, "ids"))

    def write(txn):
        _check_targets(ctx, txn, table, ids, True, "delete")
        restore_records(ctx, txn, table, ids, [f"ids[{i}]" for i in range(len(ids))])
    ctx.transact(write)
    return {"count": len(ids)}


MERGEABLE_TYPES = tuple(t for t in TEXT_TYPES if t != "rich-text") + CHOICE_TYPES + (
    "integer", "decimal", "currency", "percentage", "rating", "progress", "duration", "date", "datetime")


def records_upsert(ctx, table_ref, body):
    """POST …/records/upsert (API.md §5.5) → RawJson {"records"?, "created", "updated", ...}."""
    table = require_table(ctx.actor, ctx.schema, table_ref)
    items = _batch_items(ctx, body, "records")
    return_records = _return_records(body)
    merge = body.get("fieldsToMergeOn", body.get("matchFields"))
    if "fieldsToMergeOn" in body and "matchFields" in body and body["fieldsToMergeOn"] != body["matchFields"]:
        raise field_error("fieldsToMergeOn", "fieldsToMergeOn and matchFields must be equal")
    if not isinstance(merge, list) or not 1 <= len(merge) <= 3 or not all(isinstance(m, str) for m in merge):
        raise field_error("fieldsToMergeOn", "fieldsToMergeOn must list 1 to 3 field names")
    if len(set(merge)) != len(merge):
        raise field_error("fieldsToMergeOn", "fieldsToMergeOn must list distinct fields")
    visible = readable_names(ctx.actor, table)
    fields = []
    for name in merge:
        f = table.field(name, visible, pseudo=False)
        if f is None:
            raise field_error("fieldsToMergeOn", f"Unknown field '{name}'")
        ok = f.type in MERGEABLE_TYPES or f.relation == "m2o" or (f.type == "user" and not f.conf["allowMultiple"])
        if not ok:
            raise field_error("fieldsToMergeOn", f"Field '{name}' cannot be used to merge")
        fields.append(f)
    errors, parsed, keys = [], [], {}
    for i, item in enumerate(items):
        try:
            values = split_body(item)[0]
        except ValidationError:
            errors.append({"field": f"records[{i}]", "message": "Must be a JSON object"})
            continue
        key = []
        for f in fields:
            if values.get(f.name) is None:
                errors.append({"field": f"records[{i}].{f.name}", "message": f"Merge field '{f.name}' is required"})
                key = None
                break
            try:
                key.append(dumps(validate_value(f.conf, values[f.name])))
            except ValueProblem as exc:
                errors.append({"field": f"records[{i}].{f.name}", "message": exc.message})
                key = None
                break
        if key is None:
            continue
        key = tuple(key)
        if key in keys:
            errors.append({"field": f"records[{i}]", "message": "Duplicate merge key"})
            continue
        keys[key] = i
        parsed.append((i, values, [json.loads(k) for k in key]))
    if errors:
        raise ValidationError("One or more fields failed validation", errors)
    names = [f.name for f in table.data_fields if f.name in visible]

    def write(txn):
        errs, created, updated, order = [], [], [], []
        row_sql, row_params = row_predicate(ctx.actor, table, "read")
        for i, values, key in parsed:
            b = SqlBuilder(table)
            cond = " AND ".join(b.leaf(f, "equals", v) for f, v in zip(fields, key))
            matches = [r[0] for r in txn.execute(
                f"{CTX_PREFIX}SELECT r.id FROM records r WHERE r.table_id = {table.id} AND r.deleted_at IS NULL "
                f"AND ({row_sql}) AND {cond} LIMIT 2", [ctx.now, *row_params, *b.params])]
            prefix = f"records[{i}]."
            try:
                if len(matches) > 1:
                    errs.append({"field": f"records[{i}]", "message": "More than one record matches the merge fields"})
                elif matches:
                    if not can(ctx.actor, table, "update"):
                        raise deny(ctx.actor)
                    update_record(ctx, txn, table, matches[0],
                                  {k: v for k, v in values.items() if k not in merge}, None, prefix=prefix)
                    updated.append(matches[0])
                    order.append(matches[0])
                else:
                    if not can(ctx.actor, table, "create"):
                        raise deny(ctx.actor)
                    rid = insert_record(ctx, txn, table, values, prefix=prefix)
                    created.append(rid)
                    order.append(rid)
            except ApiError as exc:
                _collect(errs, exc, prefix)
        if errs:
            raise ValidationError("One or more fields failed validation", errs)
        ctx.now = txn.now
        texts = _fetch_many(txn.conn, ctx, table, names, order) if return_records else []
        return texts, created, updated
    texts, created, updated = ctx.transact(write)
    text = '{"records":[' + ",".join(texts) + "]," if return_records else "{"
    text += (f'"created":{len(created)},"updated":{len(updated)},"createdRecords":{dumps(created)},'
             f'"updatedRecords":{dumps(updated)}}}')
    return RawJson(text)


# -- views (API.md §9) ------------------------------------------------------------------------------

def _view(ctx, table_ref, view_id):
    actor = ctx.actor
    table = require_table(actor, ctx.schema, table_ref)
    for v in table.views:
        if str(v.id) == str(view_id) and _view_readable(actor, table, v):
            return table, v
    raise NotFoundError()


def views_list(ctx, table_ref):
    """GET …/views: the readable views in configuration order."""
    table = require_table(ctx.actor, ctx.schema, table_ref)
    visible = readable_names(ctx.actor, table)
    return {"views": [v.public(visible) for v in table.views if _view_readable(ctx.actor, table, v)]}


def views_get(ctx, table_ref, view_id):
    """GET …/views/{viewId}."""
    table, view = _view(ctx, table_ref, view_id)
    return view.public(readable_names(ctx.actor, table))


def views_records(ctx, table_ref, view_id, params):
    """GET …/views/{viewId}/records: the view's filter, sorts, fields and groups (API.md §9.3)."""
    table, view = _view(ctx, table_ref, view_id)
    params = dict(params)
    params.pop("includeDeleted", None)
    allowed = view.conf["fields"]
    if allowed is not None:
        visible = readable_names(ctx.actor, table)
        if params.get("fields"):
            for name in params["fields"].split(","):
                name = name.strip()
                if name not in PSEUDO_FIELDS and name not in allowed:
                    raise field_error("fields", f"Unknown field '{name}'")
        else:
            params["fields"] = ",".join(n for n in allowed if n in visible) or "id"
    return records_list(ctx, table, params, view=view)


# -- comments (API.md §8) ---------------------------------------------------------------------------

COMMENT_SQL = ("SELECT c.id, c.table_id, c.record_id, c.user_id, u.id, u.name, c.content, c.parent_id, "
               "c.created_at, c.updated_at FROM comments c LEFT JOIN users u ON u.id = c.user_id")
COMMENT_MAX = 10000


def comment_object(row):
    cid, tid, rid, uid, user_id, name, content, parent, created, updated = row
    return {"id": cid, "tableId": tid, "recordId": rid, "userId": uid,
            "user": {"id": user_id, "name": name} if user_id else None, "content": content,
            "parentCommentId": parent, "createdAt": created, "updatedAt": updated}


def _comment_record(ctx, conn, table, record_id, writing):
    """(id, trashed) of the record a comment call is about: readable, and live for writes (409)."""
    rid = _path_id(record_id)
    _, meta = _load_stored(conn, ctx, table, rid, deleted=None)
    if meta["deleted_at"] is not None:
        if not can(ctx.actor, table, "delete"):
            raise NotFoundError()
        if writing:
            raise ConflictError("Record is in the trash")
    return rid, meta["deleted_at"] is not None


def _comment_to_change(ctx, txn, table, record_id, comment_id, override):
    """(record id, comment) for an edit or delete: the author (or `override`) on a live record."""
    rid, trashed = _comment_record(ctx, txn.conn, table, record_id, False)
    comment = _comment(txn.conn, rid, comment_id)
    if not override and (ctx.actor.anonymous or comment["userId"] != ctx.actor.id):
        raise deny(ctx.actor)
    if trashed:
        raise ConflictError("Record is in the trash")
    return rid, comment


def _content(body):
    value = body.get("content", body.get("body"))
    if value is None or (isinstance(value, str) and not value.strip()):
        raise field_error("content", "Field 'content' is required")
    if not isinstance(value, str):
        raise field_error("content", "Field 'content' must be a string")
    if len(value) > COMMENT_MAX:
        raise field_error("content", f"Field 'content' must be at most {COMMENT_MAX} characters")
    return value


def comments_list(ctx, table_ref, record_id, params):
    """GET …/comments: non-deleted comments, oldest first unless sortOrder=desc."""
    table = require_table(ctx.actor, ctx.schema, table_ref)
    limit, offset = paginate_params(params, 50, ctx.settings["maxPageSize"])
    order = (params.get("sortOrder") or "asc").lower()
    if order not in ("asc", "desc"):
        raise field_error("sortOrder", "Parameter 'sortOrder' must be asc or desc")
    with ctx.read() as conn:
        rid, _ = _comment_record(ctx, conn, table, record_id, False)
        rows = conn.execute(f"{COMMENT_SQL} WHERE c.record_id = ? AND c.deleted_at IS NULL ORDER BY c.id {order} "
                            f"LIMIT ? OFFSET ?", (rid, limit, offset)).fetchall()
        total = conn.execute("SELECT count(*) FROM comments WHERE record_id = ? AND deleted_at IS NULL",
                             (rid,)).fetchall()[0][0]
    items = [comment_object(r) for r in rows]
    return {"comments": items, "pagination": pagination(limit, offset, len(items), total)}


def comments_create(ctx, table_ref, record_id, body):
    """POST …/comments (permission `comment`)."""
    table = require_table(ctx.actor, ctx.schema, table_ref, "comment")
    content = _content(body)
    parent = body.get("parentCommentId")
    if parent is not None and not _is_record_id(parent):
        raise field_error("parentCommentId", "Parent comment not found")

    def write(txn):
        rid, _ = _comment_record(ctx, txn.conn, table, record_id, True)
        if parent is not None and not txn.execute("SELECT 1 FROM comments WHERE id = ? AND record_id = ? AND "
                                                  "deleted_at IS NULL", (int(parent), rid)).fetchall():
            raise field_error("parentCommentId", "Parent comment not found")
        txn.execute("INSERT INTO comments (table_id, record_id, user_id, parent_id, content, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (table.id, rid, ctx.actor.id,
                                                     int(parent) if parent is not None else None, content,
                                                     txn.now, txn.now))
        cid = txn.conn.last_insert_rowid()
        return comment_object(txn.execute(f"{COMMENT_SQL} WHERE c.id = ?", (cid,)).fetchall()[0])
    return ctx.transact(write)


def _comment(conn, rid, comment_id):
    cid = _path_id(comment_id)
    rows = conn.execute(f"{COMMENT_SQL} WHERE c.id = ? AND c.record_id = ? AND c.deleted_at IS NULL",
                        (cid, rid)).fetchall()
    if not rows:
        raise NotFoundError()
    return comment_object(rows[0])


def comments_get(ctx, table_ref, record_id, comment_id):
    table = require_table(ctx.actor, ctx.schema, table_ref)
    with ctx.read() as conn:
        return _comment(conn, _comment_record(ctx, conn, table, record_id, False)[0], comment_id)


def comments_update(ctx, table_ref, record_id, comment_id, body):
    """PATCH …/comments/{commentId}: the author only (anyone in no-auth mode)."""
    table = require_table(ctx.actor, ctx.schema, table_ref)
    content = _content(body)

    def write(txn):
        rid, comment = _comment_to_change(ctx, txn, table, record_id, comment_id, ctx.actor.all_powerful)
        txn.execute("UPDATE comments SET content = ?, updated_at = ? WHERE id = ?", (content, txn.now, comment["id"]))
        return _comment(txn.conn, rid, comment["id"])
    return ctx.transact(write)


def comments_delete(ctx, table_ref, record_id, comment_id):
    """DELETE …/comments/{commentId}: soft delete by the author or an admin."""
    table = require_table(ctx.actor, ctx.schema, table_ref)

    def write(txn):
        _, comment = _comment_to_change(ctx, txn, table, record_id, comment_id, ctx.actor.is_admin)
        txn.execute("UPDATE comments SET deleted_at = ? WHERE id = ?", (txn.now, comment["id"]))
    ctx.transact(write)


# -- activity (API.md §10) --------------------------------------------------------------------------

ACTIVITY_ACTIONS = ("create", "update", "delete", "restore", "purge")


def _time_bound(params, name, end):
    raw = params.get(name)
    if not raw:
        return None
    d = parse_date(raw)
    if d is not None:
        return d + ("T23:59:59.999Z" if end else "T00:00:00.000Z")
    v = parse_datetime(raw, "UTC")
    if v is None:
        raise field_error(name, f"Parameter '{name}' must be an ISO 8601 date or date-time")
    return v


def _activity_scope(ctx):
    """(SQL condition, params) of the history entries the caller may see (API.md §10.1)."""
    actor = ctx.actor
    if actor.is_admin:
        return "1", []
    parts, params = [], []
    for t in ctx.schema.tables:
        if not can(actor, t, "read"):
            continue
        row_sql, row_params = row_predicate(actor, t, "read", "rr")
        if row_sql == "1":
            parts.append(f"v.table_id = {t.id}")
        else:
            parts.append(f"(v.table_id = {t.id} AND EXISTS (SELECT 1 FROM records rr WHERE rr.id = v.record_id "
                         f"AND rr.deleted_at IS NULL AND ({row_sql})))")
            params += row_params
    return ("(" + " OR ".join(parts) + ")" if parts else "0"), params


def _activity_entry(ctx, row, detail=False):
    vid, tid, rid, action, before, after, actor_id, created = row
    table = ctx.schema.by_id.get(tid)
    readable = readable_names(ctx.actor, table) if table else set()
    if table is None:
        with ctx.read(single=True) as conn:
            name = conn.execute("SELECT name FROM app_tables WHERE id = ?", (tid,)).fetchall()
        entry = {"id": vid, "action": action, "tableId": tid, "tableName": name[0][0] if name else None,
                 "recordId": rid, "userId": actor_id, "createdAt": created, "changedFields": []}
        if detail:
            entry.update(changes={}, before=None, after=None)
        return entry
    h = history_entry(table, readable, vid, action, before, after, actor_id, created)
    entry = {"id": vid, "action": action, "tableId": tid, "tableName": table.name, "recordId": rid,
             "userId": actor_id, "createdAt": created, "changedFields": list(h["changes"])}
    if detail:
        entry.update(changes=h["changes"], before=h["before"], after=h["after"])
    return entry


def activity_list(ctx, params):
    """GET /api/activity (API.md §10.1)."""
    if ctx.actor.anonymous:
        raise UnauthorizedError()
    limit, offset = paginate_params(params, 50, ctx.settings["maxPageSize"])
    where, args = [], []
    scope, scope_params = _activity_scope(ctx)
    where.append(scope)
    args += scope_params
    if params.get("tableId"):
        tid = query_int(params, "tableId", 1, MAX_SAFE_INTEGER)
        where.append("v.table_id = ?")
        args.append(tid)
    if params.get("tableName"):
        where.append("v.table_id IN (SELECT id FROM app_tables WHERE name = ?)")
        args.append(params["tableName"])
    if params.get("recordId"):
        where.append("v.record_id = ?")
        args.append(query_int(params, "recordId", 1, MAX_SAFE_INTEGER))
    if params.get("userId"):
        where.append("v.actor_id = ?")
        args.append(params["userId"])
    if params.get("action"):
        if params["action"] not in ACTIVITY_ACTIONS:
            raise field_error("action", "Parameter 'action' must be one of: " + ", ".join(ACTIVITY_ACTIONS))
        where.append("v.action = ?")
        args.append(params["action"])
    lo, hi = _time_bound(params, "from", False), _time_bound(params, "to", True)
    if lo and hi and lo > hi:
        raise field_error("from", "from must not be later than to")
    if lo:
        where.append("v.created_at >= ?")
        args.append(lo)
    if hi:
        where.append("v.created_at <= ?")
        args.append(hi)
    clause = " AND ".join(where)
    with ctx.read() as conn:
        rows = conn.execute(f"{CTX_PREFIX}SELECT v.id, v.table_id, v.record_id, v.action, v.before, v.after, "
                            f"v.actor_id, v.created_at FROM revisions v WHERE {clause} ORDER BY v.id DESC "
                            f"LIMIT ? OFFSET ?", [ctx.now, *args, limit, offset]).fetchall()
        ctx.next_query()
        if clause == "1":   # an admin's unfiltered log: the trigger-kept total
            total = conn.execute("SELECT total FROM revision_counts WHERE id = 1").fetchall()[0][0]
        else:
            total = conn.execute(f"{CTX_PREFIX}SELECT count(*) FROM revisions v WHERE {clause}",
                                 [ctx.now, *args]).fetchall()[0][0]
    entries = [_activity_entry(ctx, r) for r in rows]
    return {"activities": entries, "pagination": pagination(limit, offset, len(entries), total)}


def activity_get(ctx, activity_id):
    """GET /api/activity/{activityId} with before, after and changes."""
    if ctx.actor.anonymous:
        raise UnauthorizedError()
    vid = _path_id(activity_id)
    scope, scope_params = _activity_scope(ctx)
    with ctx.read() as conn:
        rows = conn.execute(f"{CTX_PREFIX}SELECT v.id, v.table_id, v.record_id, v.action, v.before, v.after, "
                            f"v.actor_id, v.created_at FROM revisions v WHERE v.id = ? AND {scope}",
                            [ctx.now, vid, *scope_params]).fetchall()
    if not rows:
        raise NotFoundError()
    return _activity_entry(ctx, rows[0], detail=True)


def tables_list(ctx):
    """GET /api/tables (API.md §3.1)."""
    return {"tables": [{"id": t.id, "name": t.name, "description": t.conf["description"],
                        "primaryField": t.conf["primaryField"]}
                       for t in ctx.schema.tables if can(ctx.actor, t, "read")]}


def tables_get(ctx, table_ref):
    """GET /api/tables/{t} (API.md §3.2)."""
    table = require_table(ctx.actor, ctx.schema, table_ref)
    access = field_access(ctx.actor, table)
    readable = {n for n, (r, _) in access.items() if r}
    fields = [public_field(f) for f in table.fields
              if f.name in access or (f.type == "button" and can(ctx.actor, table, "read"))]
    views = [v.public(readable) for v in table.views if _view_readable(ctx.actor, table, v)]
    return {"id": table.id, "name": table.name, "description": table.conf["description"],
            "primaryField": table.conf["primaryField"], "fields": fields, "views": views,
            "permissions": permissions_report(ctx.actor, table)["table"]}


def _view_readable(actor, table, view):
    rule = view.conf["permissions"].get("read")
    return can(actor, table, "read") and (rule is None or allowed(actor, rule))


def tables_permissions(ctx, table_ref):
    """GET /api/tables/{t}/permissions (API.md §3.3)."""
    table = require_table(ctx.actor, ctx.schema, table_ref)
    return permissions_report(ctx.actor, table)

###############################################################################
# 13. Accounts and sessions ###################################################
###############################################################################

PASSWORD_RESET_MESSAGE = "If this email exists in our system, check your email for the reset link"
NOT_UPDATABLE = ("email", "emailVerified", "role", "banned", "password")


def _require_auth(ctx):
    if ctx.schema.auth is None:
        raise NotFoundError("Route not found")


def _strategy(ctx, kind):
    """The configured strategy of `kind` or 404 Route not found (API.md §13)."""
    _require_auth(ctx)
    for s in ctx.schema.auth["strategies"]:
        if s["type"] == kind:
            return s
    raise NotFoundError("Route not found")


def _member(body, name, kind="string", required=True):
    """A body member of the expected JSON type (API.md §13.1 messages); None when absent and optional."""
    if name not in body or body[name] is None:
        if required:
            raise field_error(name, f"Field '{name}' is required")
        return None
    value = body[name]
    ok = {"string": isinstance(value, str), "boolean": isinstance(value, bool),
          "integer": isinstance(value, int) and not isinstance(value, bool)}[kind]
    if not ok:
        article = "an" if kind == "integer" else "a"
        raise field_error(name, f"Field '{name}' must be {article} {kind}")
    return value


def _auth_error(status, reason, message, field=None):
    cls = {400: ValidationError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
           409: ConflictError}[status]
    if status == 400:
        return cls(message, [{"field": field, "message": message}], reason=reason)
    return cls(message, reason=reason)


def _email(value, field="email"):
    email_addr = value.strip().lower()
    if len(email_addr) > 254 or not EMAIL_RE.fullmatch(email_addr):
        raise _auth_error(400, "INVALID_EMAIL", "Invalid email address", field)
    return email_addr


def _password(ctx, value, field):
    lo, hi = password_limits(ctx.schema.auth)
    if len(value) < lo:
        raise _auth_error(400, "PASSWORD_TOO_SHORT", f"Password must be at least {lo} characters", field)
    if len(value) > hi:
        raise _auth_error(400, "PASSWORD_TOO_LONG", f"Password must be at most {hi} characters", field)
    return value


def _name(value, field="name"):
    name = value.strip()
    if not 1 <= len(name) <= 255:
        raise field_error(field, f"Field '{field}' must be between 1 and 255 characters")
    return name


def _image(value, field="image"):
    if value is None:
        return None
    if not isinstance(value, str):
        raise field_error(field, f"Field '{field}' must be a string")
    if not re.fullmatch(r"https?://[^\s/?#]+\S*", value, re.I) or len(value) > 2048:
        raise field_error(field, f"Field '{field}' must be an http or https URL")
    return value


def _redirect(ctx, value, field):
    """A redirect target: a relative path with one leading / or an absolute URL of a trusted origin."""
    if value is None:
        return None
    bad = _auth_error(400, "INVALID_CALLBACK_URL", "Invalid redirect URL", field)
    # Browsers and urlsplit drop tabs and newlines and read "\" as "/": "/\t/evil" would become
    # "//evil", another site. Such characters are never part of a redirect target.
    if re.search(r"[\x00-\x20\x7f\\]", value):
        raise bad
    parts = urllib.parse.urlsplit(value)
    if not parts.scheme and not parts.netloc:
        if value.startswith("/") and not value.startswith("//"):
            return value
        raise bad
    if parts.scheme.lower() in ("http", "https") and parts.netloc and \
            f"{parts.scheme}://{parts.netloc}".lower() in ctx.trusted_origins:
        return value
    raise bad


def _with_query(url, **params):
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _user_row(conn, where, params):
    rows = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE {where}", params).fetchall()
    return user_object(rows[0]) if rows else None


def _password_hash(conn, user_id):
    rows = conn.execute("SELECT password FROM accounts WHERE user_id = ? AND provider_id = 'credential'",
                        (user_id,)).fetchall()
    return rows[0][0] if rows else None


def _set_password(txn, user_id, hashed):
    """Store a password hash in the user's credential account (created when missing)."""
    txn.execute("UPDATE accounts SET password = ?, updated_at = ? WHERE user_id = ? AND provider_id = 'credential'",
                (hashed, txn.now, user_id))
    if not txn.conn.changes():
        txn.execute("INSERT INTO accounts (id, user_id, provider_id, account_id, password, created_at, updated_at) "
                    "VALUES (?, ?, 'credential', ?, ?, ?, ?)", (new_id(), user_id, user_id, hashed, txn.now, txn.now))


def _new_session(ctx, txn, user_id, seconds=None, impersonated_by=None):
    """Create a session in the open transaction → session object."""
    seconds = seconds or ctx.schema.auth["session"]["expiresIn"]
    expires = format_ts(parse_ts(txn.now) + datetime.timedelta(seconds=seconds))
    row = (new_id(), new_id(), user_id, expires, txn.now, txn.now, ctx.ip, ctx.user_agent, impersonated_by, None)
    txn.execute(f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    return session_object(row)


def _signed_in(ctx, session, remember=True):
    """Record that the response must carry the session cookie and set-auth-token."""
    ctx.effects["session"] = (session["token"], ctx.schema.auth["session"]["expiresIn"] if remember else None)


def _create_user(ctx, txn, email_addr, name, password_hash, role, verified=False, image=None):
    """Insert a user (and its credential account) → user object; 409 when the e-mail exists."""
    if txn.execute("SELECT 1 FROM users WHERE email = ?", (email_addr,)).fetchall():
        raise _auth_error(409, "USER_ALREADY_EXISTS", "User already exists")
    uid = new_id()
    txn.execute(f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, 0)",
                (uid, name, email_addr, 1 if verified else 0, image, txn.now, txn.now, role))
    if password_hash is not None:
        txn.execute("INSERT INTO accounts (id, user_id, provider_id, account_id, password, created_at, updated_at) "
                    "VALUES (?, ?, 'credential', ?, ?, ?, ?)", (new_id(), uid, uid, password_hash, txn.now, txn.now))
    return _user_row(txn.conn, "id = ?", (uid,))


def _send_verification(ctx, txn, user, callback=None):
    token = new_id()
    txn.execute("DELETE FROM verifications WHERE identifier = ?", (f"verify-email:{user['id']}",))
    txn.execute("INSERT INTO verifications (id, identifier, value, data, expires_at, created_at) VALUES "
                "(?, ?, ?, ?, ?, ?)", (new_id(), f"verify-email:{user['id']}", hash_secret(token),
                                      dumps({"userId": user["id"]}),
                                      format_ts(parse_ts(txn.now) + datetime.timedelta(seconds=VERIFY_TOKEN_SECONDS)),
                                      txn.now))
    params = {"token": token}
    if callback:
        params["callbackURL"] = callback
    url = f"{ctx.app.base_url}/api/auth/verify-email?" + urllib.parse.urlencode(params)
    subject, text = ctx.app.mailer.render("verifyEmail", name=user["name"], email=user["email"], url=url,
                                          expiresMinutes=VERIFY_TOKEN_SECONDS // 60)
    ctx.effects.setdefault("mail", []).append(ctx.app.mailer.store(txn, user["email"], subject, text))


def _consume_token(txn, prefix, token):
    """The data of a valid one-time token (deleted on use), or None."""
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        return None
    rows = txn.execute("SELECT id, identifier, data, expires_at FROM verifications WHERE value = ? AND "
                       "identifier LIKE ?", (hash_secret(token), prefix + ":%")).fetchall()
    if not rows:
        return None
    vid, _, data, expires = rows[0]
    txn.execute("DELETE FROM verifications WHERE id = ?", (vid,))
    return json.loads(data) if expires > txn.now else None


def finish_auth(ctx):
    """After the commit: announce or send the e-mails the call produced."""
    ctx.app.mailer.dispatch(ctx.effects.get("mail"))


def auth_sign_up(ctx, body):
    """POST /api/auth/sign-up/email (API.md §13.2)."""
    strategy = _strategy(ctx, "emailAndPassword")
    name = _name(_member(body, "name"))
    email_addr = _email(_member(body, "email"))
    password = _password(ctx, _member(body, "password"), "password")
    image = _image(_member(body, "image", required=False))
    callback = _redirect(ctx, _member(body, "callbackURL", required=False), "callbackURL")
    remember = _member(body, "rememberMe", "boolean", required=False)
    if ctx.schema.auth["disableSignUp"]:
        raise _auth_error(403, "SIGN_UP_DISABLED", "Sign-up is disabled")
    hashed = ctx.app.passwords.hash(password)

    def write(txn):
        user = _create_user(ctx, txn, email_addr, name, hashed, ctx.schema.auth["defaultRole"], image=image)
        if strategy["requireEmailVerification"]:
            _send_verification(ctx, txn, user, callback)
            return {"token": None, "user": user}
        if not strategy["autoSignIn"]:
            return {"token": None, "user": user}
        session = _new_session(ctx, txn, user["id"])
        _signed_in(ctx, session, remember is not False)
        return {"token": session["token"], "user": user}
    out = ctx.transact(write)
    finish_auth(ctx)
    return out


def auth_sign_in(ctx, body):
    """POST /api/auth/sign-in/email (API.md §13.2)."""
    strategy = _strategy(ctx, "emailAndPassword")
    email_addr = _email(_member(body, "email"))
    password = _member(body, "password")
    callback = _redirect(ctx, _member(body, "callbackURL", required=False), "callbackURL")
    remember = _member(body, "rememberMe", "boolean", required=False)
    limiter = ctx.app.limiter
    if limiter.active("signInAccount"):
        allowed, limit, _, reset = limiter.peek("signInAccount", email_addr)
        if not allowed:
            raise RateLimitedError(headers=rate_limited_headers(limit, reset))
    with ctx.read() as conn:
        user = _user_row(conn, "email = ?", (email_addr,))
        stored = _password_hash(conn, user["id"]) if user else None
    if stored is None:
        ctx.app.passwords.burn(password)
        ok, upgraded = False, None
    else:
        ok, upgraded = ctx.app.passwords.verify(stored, password)
    if not ok:
        if limiter.active("signInAccount"):
            limiter.hit("signInAccount", email_addr)
        raise _auth_error(401, "INVALID_EMAIL_OR_PASSWORD", "Invalid email or password")
    if is_banned(user, ctx.now):
        raise _auth_error(403, "BANNED_USER", "You have been banned from this application")

    def write(txn):
        if user["banned"]:     # an expired ban is lifted on the next sign-in
            txn.execute("UPDATE users SET banned = 0, ban_reason = NULL, ban_expires = NULL, updated_at = ? "
                        "WHERE id = ?", (txn.now, user["id"]))
        if upgraded:
            txn.execute("UPDATE accounts SET password = ?, updated_at = ? WHERE user_id = ? AND "
                        "provider_id = 'credential'", (upgraded, txn.now, user["id"]))
        if strategy["requireEmailVerification"] and not user["emailVerified"]:
            _send_verification(ctx, txn, user, callback)
            return None
        session = _new_session(ctx, txn, user["id"])
        _signed_in(ctx, session, remember is not False)
        fresh = _user_row(txn.conn, "id = ?", (user["id"],))
        if callback:
            return {"redirect": True, "token": session["token"], "url": callback, "user": fresh}
        return {"redirect": False, "token": session["token"], "user": fresh}
    out = ctx.transact(write)
    finish_auth(ctx)
    if out is None:
        raise _auth_error(403, "EMAIL_NOT_VERIFIED", "Email not verified")
    return out


def auth_sign_out(ctx):
    """POST /api/auth/sign-out: deletes the current session, expires the auth cookies."""
    _require_auth(ctx)
    if ctx.session:
        ctx.transact(lambda txn: txn.execute("DELETE FROM sessions WHERE id = ?", (ctx.session["id"],)))
    ctx.effects["clear"] = True
    return {"success": True}


def _signed_in_user(ctx):
    _require_auth(ctx)
    if ctx.session is None:
        raise UnauthorizedError()
    return ctx.actor.user


def auth_get_session(ctx):
    """GET/POST /api/auth/get-session → {"session", "user"} or None."""
    _require_auth(ctx)
    if ctx.session is None:
        return None
    return {"session": ctx.session, "user": ctx.actor.user}


def auth_list_sessions(ctx):
    """GET /api/auth/list-sessions: the caller's live sessions, newest first."""
    user = _signed_in_user(ctx)
    with ctx.read() as conn:
        rows = conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ? AND expires_at > ? "
                            f"ORDER BY created_at DESC, id DESC", (user["id"], ctx.now)).fetchall()
    return [session_object(r) for r in rows]


def auth_revoke_session(ctx, body):
    """POST /api/auth/revoke-session {"token"}: only the caller's own sessions."""
    user = _signed_in_user(ctx)
    token = _member(body, "token")
    ctx.transact(lambda txn: txn.execute("DELETE FROM sessions WHERE token = ? AND user_id = ?", (token, user["id"])))
    if token == ctx.session["token"]:
        ctx.effects["clear"] = True
    return {"status": True}


def auth_revoke_sessions(ctx, keep_current=False):
    """POST /api/auth/revoke-sessions (or revoke-other-sessions with keep_current)."""
    user = _signed_in_user(ctx)
    if keep_current:
        ctx.transact(lambda txn: txn.execute("DELETE FROM sessions WHERE user_id = ? AND id <> ?",
                                             (user["id"], ctx.session["id"])))
    else:
        ctx.transact(lambda txn: txn.execute("DELETE FROM sessions WHERE user_id = ?", (user["id"],)))
        ctx.effects["clear"] = True
    return {"status": True}


def auth_change_password(ctx, body):
    """POST /api/auth/change-password (API.md §13.4)."""
    _strategy(ctx, "emailAndPassword")
    user = _signed_in_user(ctx)
    current = _member(body, "currentPassword")
    new = _password(ctx, _member(body, "newPassword"), "newPassword")
    revoke = _member(body, "revokeOtherSessions", "boolean", required=False)
    with ctx.read() as conn:
        stored = _password_hash(conn, user["id"])
    if stored is None or not ctx.app.passwords.verify(stored, current)[0]:
        raise _auth_error(400, "INVALID_PASSWORD", "Invalid password", "currentPassword")
    hashed = ctx.app.passwords.hash(new)

    def write(txn):
        txn.execute("UPDATE accounts SET password = ?, updated_at = ? WHERE user_id = ? AND provider_id = 'credential'",
                    (hashed, txn.now, user["id"]))
        token = None
        if revoke:
            txn.execute("DELETE FROM sessions WHERE user_id = ?", (user["id"],))
            session = _new_session(ctx, txn, user["id"])
            _signed_in(ctx, session)
            token = session["token"]
        return {"token": token, "user": _user_row(txn.conn, "id = ?", (user["id"],))}
    return ctx.transact(write)


def auth_request_password_reset(ctx, body):
    """POST /api/auth/request-password-reset: the same answer whether or not the e-mail exists."""
    _strategy(ctx, "emailAndPassword")
    email_addr = _email(_member(body, "email"))
    redirect = _redirect(ctx, _member(body, "redirectTo", required=False), "redirectTo") or "/"
    _email_send_account(ctx, email_addr)

    def write(txn):
        user = _user_row(txn.conn, "email = ?", (email_addr,))
        if user is None:
            return
        token = new_id()
        ident = f"reset-password:{user['id']}"
        txn.execute("DELETE FROM verifications WHERE identifier = ?", (ident,))
        txn.execute("INSERT INTO verifications (id, identifier, value, data, expires_at, created_at) VALUES "
                    "(?, ?, ?, ?, ?, ?)", (new_id(), ident, hash_secret(token), dumps({"userId": user["id"]}),
                                          format_ts(parse_ts(txn.now) + datetime.timedelta(seconds=RESET_TOKEN_SECONDS)),
                                          txn.now))
        url = (f"{ctx.app.base_url}/api/auth/reset-password/{token}?"
               + urllib.parse.urlencode({"callbackURL": redirect}))
        subject, text = ctx.app.mailer.render("resetPassword", name=user["name"], email=user["email"], url=url,
                                              expiresMinutes=RESET_TOKEN_SECONDS // 60)
        ctx.effects.setdefault("mail", []).append(ctx.app.mailer.store(txn, user["email"], subject, text))
    ctx.transact(write)
    finish_auth(ctx)
    return {"status": True, "message": PASSWORD_RESET_MESSAGE}


def _email_send_account(ctx, email_addr):
    limiter = ctx.app.limiter
    if limiter.active("emailSendAccount"):
        allowed, limit, _, reset = limiter.hit("emailSendAccount", email_addr)
        if not allowed:
            raise RateLimitedError(headers=rate_limited_headers(limit, reset))


def auth_reset_password_link(ctx, token, params):
    """GET /api/auth/reset-password/{token}?callbackURL=… → the redirect URL (API.md §13.4)."""
    _strategy(ctx, "emailAndPassword")
    callback = params.get("callbackURL")
    if not callback:
        raise field_error("callbackURL", "Field 'callbackURL' is required")
    callback = _redirect(ctx, callback, "callbackURL")
    valid = False
    if TOKEN_RE.fullmatch(token or ""):
        with ctx.read() as conn:
            valid = bool(conn.execute("SELECT 1 FROM verifications WHERE value = ? AND identifier LIKE "
                                      "'reset-password:%' AND expires_at > ?", (hash_secret(token), ctx.now)).fetchall())
    return _with_query(callback, token=token) if valid else _with_query(callback, error="INVALID_TOKEN")


def auth_reset_password(ctx, body, params):
    """POST /api/auth/reset-password {"newPassword", "token"}: single use; signs the user out everywhere."""
    _strategy(ctx, "emailAndPassword")
    if "token" not in body and params.get("token"):
        body = {**body, "token": params["token"]}
    new = _password(ctx, _member(body, "newPassword"), "newPassword")
    token = _member(body, "token")
    hashed = ctx.app.passwords.hash(new)

    def write(txn):
        data = _consume_token(txn, "reset-password", token)
        if data is None:
            return False
        uid = data["userId"]
        _set_password(txn, uid, hashed)
        txn.execute("DELETE FROM sessions WHERE user_id = ?", (uid,))
        return True
    if not ctx.transact(write):
        raise _auth_error(400, "INVALID_TOKEN", "Invalid or expired token", "token")
    return {"status": True}


def auth_send_verification_email(ctx, body):
    """POST /api/auth/send-verification-email: always {"status": true}."""
    _require_auth(ctx)
    email_addr = _email(_member(body, "email"))
    callback = _redirect(ctx, _member(body, "callbackURL", required=False), "callbackURL")
    _email_send_account(ctx, email_addr)

    def write(txn):
        user = _user_row(txn.conn, "email = ?", (email_addr,))
        if user is not None and not user["emailVerified"]:
            _send_verification(ctx, txn, user, callback)
    ctx.transact(write)
    finish_auth(ctx)
    return {"status": True}


def auth_verify_email(ctx, params):
    """GET /api/auth/verify-email?token=…&callbackURL=… → (body or None, redirect URL or None)."""
    _require_auth(ctx)
    callback = params.get("callbackURL") or None
    if callback:
        callback = _redirect(ctx, callback, "callbackURL")

    def write(txn):
        data = _consume_token(txn, "verify-email", params.get("token"))
        if data is None:
            return None
        txn.execute("UPDATE users SET email_verified = 1, updated_at = ? WHERE id = ?", (txn.now, data["userId"]))
        user = _user_row(txn.conn, "id = ?", (data["userId"],))
        if user is None:
            return None
        _signed_in(ctx, _new_session(ctx, txn, user["id"]))
        return user
    user = ctx.transact(write)
    if user is None:
        if callback:
            return None, _with_query(callback, error="INVALID_TOKEN")
        raise _auth_error(400, "INVALID_TOKEN", "Invalid or expired token", "token")
    if callback:
        return None, callback
    return {"status": True, "user": user}, None


def auth_update_user(ctx, body):
    """POST /api/auth/update-user {"name"?, "image"?}."""
    user = _signed_in_user(ctx)
    for key in NOT_UPDATABLE:
        if key in body:
            raise field_error(key, f"Field '{key}' cannot be updated")
    if "name" not in body and "image" not in body:
        raise field_error("name", "Field 'name' is required")
    changes = {}
    if "name" in body:
        changes["name"] = _name(_member(body, "name"))
    if "image" in body:
        changes["image"] = _image(body["image"])

    def write(txn):
        sets = ", ".join(f"{k} = ?" for k in changes)
        txn.execute(f"UPDATE users SET {sets}, updated_at = ? WHERE id = ?", (*changes.values(), txn.now, user["id"]))
        return {"user": _user_row(txn.conn, "id = ?", (user["id"],))}
    return ctx.transact(write)


# -- administration (API.md §13.11) ---------------------------------------------------------------

ADMIN_SORTS = {"createdAt": "created_at", "updatedAt": "updated_at", "email": "email", "name": "name", "role": "role"}
ADMIN_FILTERS = {"id": "id", "email": "email", "name": "name", "role": "role", "banned": "banned",
                 "emailVerified": "email_verified"}


def _admin(ctx):
    _require_auth(ctx)
    if ctx.actor.anonymous:
        raise UnauthorizedError()
    if not ctx.actor.is_admin:
        raise ForbiddenError()


def _target(conn, user_id):
    if not isinstance(user_id, str):
        raise _auth_error(404, "USER_NOT_FOUND", "User not found")
    user = _user_row(conn, "id = ?", (user_id,))
    if user is None:
        raise _auth_error(404, "USER_NOT_FOUND", "User not found")
    return user


def _check_role(ctx, role):
    if role not in ctx.schema.roles:
        raise field_error("role", f"Unknown role '{role}'")
    return role


def _guard_self_and_last_admin(ctx, conn, target, demote=True):
    """CANNOT_MODIFY_SELF before LAST_ADMIN (clarification 5)."""
    if ctx.actor.user and target["id"] == ctx.actor.user["id"]:
        raise _auth_error(400, "CANNOT_MODIFY_SELF", "You cannot modify your own account this way", "userId")
    if demote and target["role"] == "admin":
        others = conn.execute("SELECT count(*) FROM users WHERE role = 'admin' AND banned = 0 AND id <> ?",
                              (target["id"],)).fetchall()[0][0]
        if others == 0:
            raise _auth_error(400, "LAST_ADMIN", "The last admin cannot be demoted, banned or removed", "userId")


def admin_list_users(ctx, params):
    _admin(ctx)
    where, args = [], []
    search = params.get("searchValue")
    if search:
        field = params.get("searchField") or "email"
        if field not in ("email", "name"):
            raise field_error("searchField", "Expected one of: email, name")
        op = params.get("searchOperator") or "contains"
        pattern = {"contains": "%{}%", "starts_with": "{}%", "ends_with": "%{}"}.get(op)
        if pattern is None:
            raise field_error("searchOperator", "Expected one of: contains, starts_with, ends_with")
        where.append(f"{field} LIKE ? ESCAPE '\\'")
        args.append(pattern.format(_like_escape(search)))
    if params.get("filterField"):
        column = ADMIN_FILTERS.get(params["filterField"])
        if column is None:
            raise field_error("filterField", "Expected one of: " + ", ".join(ADMIN_FILTERS))
        value = params.get("filterValue", "")
        if column in ("banned", "email_verified"):
            value = 1 if value.lower() in ("true", "1") else 0
        op = params.get("filterOperator") or "eq"
        if op not in ("eq", "ne"):
            raise field_error("filterOperator", "Expected one of: eq, ne")
        where.append(f"{column} {'=' if op == 'eq' else '<>'} ?")
        args.append(value)
    sort = ADMIN_SORTS.get(params.get("sortBy") or "createdAt")
    if sort is None:
        raise field_error("sortBy", "Expected one of: " + ", ".join(ADMIN_SORTS))
    direction = (params.get("sortDirection") or "asc").lower()
    if direction not in ("asc", "desc"):
        raise field_error("sortDirection", "Expected one of: asc, desc")
    limit = query_int(params, "limit", 1, 1000, 100)
    offset = query_int(params, "offset", 0, MAX_SAFE_INTEGER, 0)
    clause = " WHERE " + " AND ".join(where) if where else ""
    with ctx.read() as conn:
        rows = conn.execute(f"SELECT {USER_COLUMNS} FROM users{clause} ORDER BY {sort} {direction}, id {direction} "
                            f"LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        total = conn.execute(f"SELECT count(*) FROM users{clause}", args).fetchall()[0][0]
    return {"users": [user_object(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def admin_get_user(ctx, params):
    _admin(ctx)
    if not params.get("id"):
        raise field_error("id", "Field 'id' is required")
    with ctx.read() as conn:
        return {"user": _target(conn, params["id"])}


def admin_create_user(ctx, body):
    _admin(ctx)
    email_addr = _email(_member(body, "email"))
    name = _name(_member(body, "name"))
    password = _member(body, "password", required=False)
    role = _check_role(ctx, _member(body, "role", required=False) or "member")
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    image = _image(data.get("image"), "data.image")
    verified = data.get("emailVerified") is True
    hashed = ctx.app.passwords.hash(_password(ctx, password, "password")) if password is not None else None
    return {"user": ctx.transact(lambda txn: _create_user(ctx, txn, email_addr, name, hashed, role, verified, image))}


def admin_update_user(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")
    data = body.get("data")
    if not isinstance(data, dict):
        raise field_error("data", "Field 'data' is required")
    changes = {}
    if "name" in data:
        changes["name"] = _name(_member(data, "name"), "data.name")
    if "image" in data:
        changes["image"] = _image(data["image"], "data.image")
    if "email" in data:
        changes["email"] = _email(_member(data, "email"), "data.email")
    if "emailVerified" in data:
        changes["email_verified"] = 1 if _member(data, "emailVerified", "boolean") else 0

    def write(txn):
        _target(txn.conn, uid)
        if "email" in changes and txn.execute("SELECT 1 FROM users WHERE email = ? AND id <> ?",
                                              (changes["email"], uid)).fetchall():
            raise _auth_error(409, "USER_ALREADY_EXISTS", "User already exists")
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            txn.execute(f"UPDATE users SET {sets}, updated_at = ? WHERE id = ?", (*changes.values(), txn.now, uid))
        return {"user": _user_row(txn.conn, "id = ?", (uid,))}
    return ctx.transact(write)


def admin_set_role(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")
    role = _check_role(ctx, _member(body, "role"))

    def write(txn):
        target = _target(txn.conn, uid)
        _guard_self_and_last_admin(ctx, txn.conn, target, demote=role != "admin")
        txn.execute("UPDATE users SET role = ?, updated_at = ? WHERE id = ?", (role, txn.now, uid))
        return {"user": _user_row(txn.conn, "id = ?", (uid,))}
    return ctx.transact(write)


def admin_ban_user(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")
    reason = _member(body, "banReason", required=False)
    expires_in = _member(body, "banExpiresIn", "integer", required=False)
    if expires_in is not None and expires_in < 1:
        raise field_error("banExpiresIn", "Field 'banExpiresIn' must be at least 1")

    def write(txn):
        target = _target(txn.conn, uid)
        _guard_self_and_last_admin(ctx, txn.conn, target)
        expires = (format_ts(parse_ts(txn.now) + datetime.timedelta(seconds=expires_in))
                   if expires_in is not None else None)
        txn.execute("UPDATE users SET banned = 1, ban_reason = ?, ban_expires = ?, updated_at = ? WHERE id = ?",
                    (reason, expires, txn.now, uid))
        txn.execute("DELETE FROM sessions WHERE user_id = ?", (uid,))
        return {"user": _user_row(txn.conn, "id = ?", (uid,))}
    return ctx.transact(write)


def admin_unban_user(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")

    def write(txn):
        _target(txn.conn, uid)
        txn.execute("UPDATE users SET banned = 0, ban_reason = NULL, ban_expires = NULL, updated_at = ? WHERE id = ?",
                    (txn.now, uid))
        return {"user": _user_row(txn.conn, "id = ?", (uid,))}
    return ctx.transact(write)


def admin_list_user_sessions(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")
    with ctx.read() as conn:
        _target(conn, uid)
        rows = conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ? AND expires_at > ? "
                            f"ORDER BY created_at DESC, id DESC", (uid, ctx.now)).fetchall()
    return {"sessions": [session_object(r) for r in rows]}


def admin_revoke_user_session(ctx, body):
    _admin(ctx)
    token = _member(body, "sessionToken")
    ctx.transact(lambda txn: txn.execute("DELETE FROM sessions WHERE token = ?", (token,)))
    return {"success": True}


def admin_revoke_user_sessions(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")

    def write(txn):
        _target(txn.conn, uid)
        txn.execute("DELETE FROM sessions WHERE user_id = ?", (uid,))
    ctx.transact(write)
    return {"success": True}


def admin_remove_user(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")

    def write(txn):
        target = _target(txn.conn, uid)
        _guard_self_and_last_admin(ctx, txn.conn, target)
        for table in ("sessions", "accounts", "members", "two_factors", "trusted_devices"):
            txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (uid,))
        txn.execute("DELETE FROM verifications WHERE identifier LIKE ?", (f"%:{uid}",))
        txn.execute("DELETE FROM users WHERE id = ?", (uid,))
    ctx.transact(write)
    return {"success": True}


def admin_set_user_password(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")
    hashed = ctx.app.passwords.hash(_password(ctx, _member(body, "newPassword"), "newPassword"))

    def write(txn):
        _target(txn.conn, uid)
        _set_password(txn, uid, hashed)
    ctx.transact(write)
    return {"status": True}


def admin_impersonate_user(ctx, body):
    _admin(ctx)
    uid = _member(body, "userId")

    def write(txn):
        target = _target(txn.conn, uid)
        if target["role"] == "admin":
            raise _auth_error(403, "CANNOT_IMPERSONATE_ADMIN", "Admins cannot be impersonated")
        session = _new_session(ctx, txn, uid, IMPERSONATION_SECONDS, impersonated_by=ctx.actor.user["id"])
        ctx.effects["session"] = (session["token"], IMPERSONATION_SECONDS)
        if ctx.session is not None:
            ctx.effects["admin_session"] = ctx.session["token"]
        return {"session": session, "user": target}
    return ctx.transact(write)


def admin_stop_impersonating(ctx):
    _require_auth(ctx)
    if ctx.session is None:
        raise UnauthorizedError()
    if not ctx.session["impersonatedBy"]:
        raise field_error("session", "You are not impersonating anyone")
    admin_token = ctx.admin_session_token
    with ctx.read() as conn:
        found = load_session(conn, admin_token, ctx.now) if admin_token else None
    if found is None or found[1]["id"] != ctx.session["impersonatedBy"]:
        raise field_error("session", "The admin session is no longer valid; sign in again")
    ctx.transact(lambda txn: txn.execute("DELETE FROM sessions WHERE id = ?", (ctx.session["id"],)))
    session, user = found
    _signed_in(ctx, session)
    ctx.effects["clear_admin"] = True
    return {"session": session, "user": user}

###############################################################################
# 14. Analytics ###############################################################
###############################################################################

COLLECT_MAX_BYTES = 16384
BOT_MARKERS = ("bot", "crawl", "spider", "slurp", "headless", "phantomjs", "lighthouse", "pingdom", "uptime",
               "monitor", "preview", "facebookexternalhit", "curl/", "wget/", "python-", "go-http-client",
               "java/", "okhttp", "httpclient", "scrapy", "node-fetch", "axios/")
UTM_MEMBERS = (("us", "utm_source"), ("um", "utm_medium"), ("uc", "utm_campaign"), ("ux", "utm_content"),
               ("ut", "utm_term"))
PERIODS = {"24h": datetime.timedelta(hours=24), "7d": datetime.timedelta(days=7),
           "30d": datetime.timedelta(days=30), "90d": datetime.timedelta(days=90),
           "12m": datetime.timedelta(days=365)}
TRACKING_SCRIPT = r"""(function(){var s=document.currentScript,d=document,w=window,n=navigator;
if(!s)return;if(n.webdriver&&!s.hasAttribute("data-allow-automation"))return;
var u=new URL("collect",s.src.replace(/[^\/]*$/,"")).href,last=null;
function send(){var p=location.href;if(p===last)return;last=p;
var b=JSON.stringify({p:p,t:d.title,r:d.referrer,sw:screen.width,sh:screen.height});
try{if(n.sendBeacon&&n.sendBeacon(u,new Blob([b],{type:"text/plain"})))return}catch(e){}
try{fetch(u,{method:"POST",body:b,headers:{"Content-Type":"text/plain"},keepalive:true,credentials:"omit",mode:"cors"})}catch(e){}}
var h=w.history;["pushState","replaceState"].forEach(function(k){var o=h[k];
h[k]=function(){var r=o.apply(this,arguments);send();return r}});
w.addEventListener("popstate",send);
if(d.readyState==="loading")d.addEventListener("DOMContentLoaded",send);else send()})();
"""


def parse_user_agent(ua):
    """(device, browser, os) by the rules of API.md §11.2 step 8 (case-insensitive)."""
    u = ua.lower()
    if re.search(r"ipad|tablet|kindle|silk|playbook", u) or ("android" in u and "mobile" not in u):
        device = "tablet"
    elif re.search(r"mobi|iphone|ipod|android|windows phone|blackberry|opera mini", u):
        device = "mobile"
    else:
        device = "desktop"
    if "edg/" in u:
        browser = "Edge"
    elif "opr/" in u or "opera" in u:
        browser = "Opera"
    elif "samsungbrowser" in u:
        browser = "Samsung Internet"
    elif "firefox/" in u or "fxios" in u:
        browser = "Firefox"
    elif "chrome/" in u or "crios" in u:
        browser = "Chrome"
    elif "safari/" in u:
        browser = "Safari"
    else:
        browser = "Other"
    if re.search(r"iphone|ipad|ipod", u):
        os_name = "iOS"
    elif "android" in u:
        os_name = "Android"
    elif "cros" in u:
        os_name = "Chrome OS"
    elif "windows" in u:
        os_name = "Windows"
    elif re.search(r"mac os x|macintosh", u):
        os_name = "macOS"
    elif "linux" in u:
        os_name = "Linux"
    else:
        os_name = "Other"
    return device, browser, os_name


def _url_host(url):
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def _collect_body(body):
    """Validate a collect body → cleaned members; 400 with one entry per bad member."""
    if not isinstance(body, dict):
        raise field_error("body", "Request body must be a JSON object")
    errors, out = [], {}

    def text(name, limit, required=False):
        value = body.get(name)
        if value is None:
            if required:
                errors.append({"field": name, "message": f"Field '{name}' is required"})
            return None
        if not isinstance(value, str):
            errors.append({"field": name, "message": f"Field '{name}' must be a string"})
            return None
        if len(value) > limit:
            errors.append({"field": name, "message": f"Field '{name}' must be at most {limit} characters"})
            return None
        return value

    p = text("p", 2048, required=True)
    if p is not None:
        if not p or not (p.startswith("/") or re.match(r"^https?://[^/\s?#]+", p, re.I)):
            errors.append({"field": "p", "message": "Field 'p' must be an http(s) URL or a path starting with /"})
        else:
            out["p"] = p
    out["t"] = text("t", 512)
    out["r"] = text("r", 2048)
    for name in ("sw", "sh"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100000:
                errors.append({"field": name, "message": f"Field '{name}' must be an integer between 1 and 100000"})
            else:
                out[name] = value
    for member, _ in UTM_MEMBERS:
        out[member] = text(member, 256)
    if errors:
        raise ValidationError(errors=errors)
    return out


def _glob_match(pattern, path):
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), path) is not None


def analytics_collect(ctx, body, headers):
    """POST /api/analytics/collect: store or drop one page view (always 202 when valid)."""
    conf = ctx.schema.analytics
    data = _collect_body(body)
    p = data["p"]
    absolute = not p.startswith("/")
    host = _url_host(p) if absolute else None
    if host is None:
        for h in (headers.get("origin"), headers.get("referer")):
            host = _url_host(h) if h else None
            if host:
                break
    if host is None:
        host = (headers.get("host") or "").split(":")[0].lower() or None
    ua = headers.get("user-agent") or ""
    purpose = (headers.get("sec-purpose") or "") + (headers.get("purpose") or "")
    if (not ua.strip() or any(m in ua.lower() for m in BOT_MARKERS) or "prefetch" in purpose.lower()
            or (conf["respectDoNotTrack"] and (headers.get("dnt") == "1" or headers.get("sec-gpc") == "1"))
            or (conf["allowedHosts"] and host not in conf["allowedHosts"])):
        return
    try:
        parts = urllib.parse.urlsplit(p)
    except ValueError:
        return
    path = parts.path or "/"
    if any(_glob_match(g, path) for g in conf["excludedPaths"]):
        return
    query = dict(urllib.parse.parse_qsl(parts.query)) if absolute or "?" in p else {}
    utm = {col: data[m] if data[m] is not None else (query.get(col) or None) for m, col in UTM_MEMBERS}
    ref_host = _url_host(data["r"]) if data["r"] else None
    if ref_host and ref_host.startswith("www."):
        ref_host = ref_host[4:]
    site = host[4:] if host and host.startswith("www.") else host
    if ref_host == site or (data["r"] and ref_host == host):
        ref_host = None
    device, browser, os_name = parse_user_agent(ua)
    lang = (headers.get("accept-language") or "").split(",")[0].split(";")[0].strip().lower() or None
    now_dt = ctx.app.clock()
    day = now_dt.strftime("%Y-%m-%d")
    timeout = datetime.timedelta(minutes=conf["sessionTimeoutMinutes"])

    def write(txn):
        salt = _daily_salt(txn, day)
        visitor = hashlib.sha256(f"{salt}|{ctx.ip}|{ua}|{host}".encode("utf-8")).hexdigest()
        last = txn.execute("SELECT session, ts FROM analytics_events WHERE visitor = ? ORDER BY id DESC LIMIT 1",
                           (visitor,)).fetchall()
        now = format_ts(now_dt)
        if last and parse_ts(last[0][1]) + timeout > now_dt:
            session, entrance = last[0][0], 0
        else:
            session, entrance = new_id(), 1
        txn.execute("INSERT INTO analytics_events (ts, host, path, title, referrer, referrer_domain, utm_source, "
                    "utm_medium, utm_campaign, utm_content, utm_term, device, browser, os, language, screen_w, "
                    "screen_h, visitor, session, is_entrance) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?, ?, ?)", (now, host, path, data["t"], data["r"], ref_host, utm["utm_source"],
                                       utm["utm_medium"], utm["utm_campaign"], utm["utm_content"], utm["utm_term"],
                                       device, browser, os_name, lang, data.get("sw"), data.get("sh"), visitor,
                                       session, entrance))
    ctx.transact(write)


def _daily_salt(txn, day):
    """The salt of `day`; creating it deletes every earlier day's salt (no linking across days)."""
    rows = txn.execute("SELECT salt FROM analytics_salts WHERE day = ?", (day,)).fetchall()
    if rows:
        return rows[0][0]
    salt = secrets.token_hex(32)
    txn.execute("DELETE FROM analytics_salts WHERE day <> ?", (day,))
    txn.execute("INSERT INTO analytics_salts (day, salt) VALUES (?, ?)", (day, salt))
    return salt


def _require_analytics_admin(ctx):
    if not ctx.schema.analytics["enabled"]:
        raise NotFoundError("Route not found")
    if ctx.actor.anonymous:
        raise UnauthorizedError()
    if not ctx.actor.is_admin:
        raise ForbiddenError()


def analytics_range(ctx, params, with_interval=False):
    """(from, to, interval or None, labels) of a report request (API.md §11.3)."""
    now = ctx.app.clock()
    period = params.get("period")
    has_range = bool(params.get("from") or params.get("to"))
    if period and has_range:
        raise field_error("period", "Use either period or from/to, not both")
    if has_range:
        if not (params.get("from") and params.get("to")):
            missing = "to" if params.get("from") else "from"
            raise field_error(missing, f"Parameter '{missing}' is required with '{'from' if missing == 'to' else 'to'}'")
        lo, hi = _time_bound(params, "from", False), _time_bound(params, "to", True)
        if lo > hi:
            raise field_error("from", "from must not be later than to")
        start, end = parse_ts(lo), parse_ts(hi)
    else:
        period = period or "30d"
        if period not in PERIODS:
            raise field_error("period", "Parameter 'period' must be one of: 24h, 7d, 30d, 90d, 12m")
        end = now
        start = now - PERIODS[period]
    interval, labels = None, None
    if with_interval:
        interval = params.get("interval")
        span = end - start
        if interval is None:
            interval = "hour" if span <= datetime.timedelta(hours=48) else "day" if span <= datetime.timedelta(days=92) else "month"
        if interval not in ("hour", "day", "month"):
            raise field_error("interval", "Parameter 'interval' must be one of: hour, day, month")
        labels = _bucket_labels(start, end, interval, inclusive=has_range)
    return start, end, interval, labels


def _bucket_labels(start, end, interval, inclusive):
    labels = []
    if interval == "hour":
        t = start.replace(minute=0, second=0, microsecond=0)
        step = lambda x: x + datetime.timedelta(hours=1)
        fmt = lambda x: x.strftime("%Y-%m-%dT%H:00:00Z")
    elif interval == "day":
        t = start.replace(hour=0, minute=0, second=0, microsecond=0)
        step = lambda x: x + datetime.timedelta(days=1)
        fmt = lambda x: x.strftime("%Y-%m-%d")
    else:
        t = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        step = lambda x: (x.replace(year=x.year + 1, month=1) if x.month == 12 else x.replace(month=x.month + 1))
        fmt = lambda x: x.strftime("%Y-%m")
    # Every UTC-aligned bucket that intersects the range. from/to are both inclusive (API.md §1.10);
    # a period ends now, exclusive (clarification 7: period=24h on the hour has 24 hourly buckets).
    while t < end or (inclusive and t == end) or not labels:
        labels.append(fmt(t))
        if len(labels) > 1000:
            raise field_error("interval", "Too many intervals for this range")
        t = step(t)
    return labels


BUCKET_SQL = {"hour": "substr(ts, 1, 13) || ':00:00Z'", "day": "substr(ts, 1, 10)", "month": "substr(ts, 1, 7)"}


def _range_echo(start, end, interval=None):
    out = {"from": format_ts(start), "to": format_ts(end)}
    if interval:
        out["interval"] = interval
    return out


# Reports over long ranges read per-day rollups. Visitor hashes change every UTC day, so unique
# visitors (like page views and entrances) simply add up across days. A whole day is rolled up
# once it is final (a full day later, when no session that started on it can still grow) and
# cached in analytics_rollups; partial and recent days are read from the events.
SESSION_STATS_SQL = (
    "SELECT count(*), coalesce(sum(n = 1), 0), coalesce(sum(ms), 0) FROM (SELECT "
    "(SELECT count(*) FROM analytics_events x WHERE x.session = e.session) AS n, "
    "(SELECT round((julianday(max(x.ts)) - julianday(min(x.ts))) * 86400000) FROM analytics_events x "
    "WHERE x.session = e.session) AS ms FROM analytics_events e WHERE e.is_entrance = 1 AND e.ts >= ? AND e.ts <= ?)")
UTM_PRESENT = "(" + " OR ".join(f"{c} IS NOT NULL" for _, c in UTM_MEMBERS) + ")"
ONE_DAY = datetime.timedelta(days=1)
LAST_MS = datetime.timedelta(days=1, milliseconds=-1)


ROLLUP_PARTS = ("summary", "pages", "referrers", "campaigns", "devices")


def _period_stats(ctx, conn, lo, hi, kinds=ROLLUP_PARTS):
    """What the reports need about the events with lo <= ts <= hi (at most one UTC day); only `kinds`."""
    def q(sql):
        ctx.next_query()
        return [list(r) for r in conn.execute(sql, (lo, hi))]
    where = "FROM analytics_events WHERE ts >= ? AND ts <= ?"
    grouped = lambda cols, extra="": q(f"SELECT {cols}, count(*), count(DISTINCT visitor) {where} {extra} "
                                       f"GROUP BY {cols}")
    out = {}
    if "summary" in kinds or "devices" in kinds:
        (out["views"], out["visitors"]), = q(f"SELECT count(*), count(DISTINCT visitor) {where}")
    if "summary" in kinds:
        (out["sessions"], out["bounces"], out["ms"]), = q(SESSION_STATS_SQL)
    if "pages" in kinds:
        out["pages"] = grouped("path")
    if "referrers" in kinds:
        out["referrers"] = grouped("referrer_domain")
    if "campaigns" in kinds:
        out["campaigns"] = grouped("utm_source, utm_medium, utm_campaign", "AND " + UTM_PRESENT)
    if "devices" in kinds:
        for key, column in (("devices", "device"), ("browsers", "browser"), ("os", "os")):
            out[key] = q(f"SELECT {column}, count(*) {where} GROUP BY {column}")
    return out


def _day_is_final(ctx, conn, day, now):
    """True when no session that started on `day` can still grow: the next day has begun, the
    session timeout has passed since, and none of that day's sessions saw an event since then."""
    timeout = datetime.timedelta(minutes=ctx.schema.analytics["sessionTimeoutMinutes"])
    if now < day + ONE_DAY + timeout:
        return False
    ctx.next_query()
    return not conn.execute(
        "SELECT 1 FROM analytics_events x WHERE x.ts > ? AND x.session IN (SELECT session FROM analytics_events "
        "WHERE is_entrance = 1 AND ts >= ? AND ts <= ?) LIMIT 1",
        (format_ts(now - timeout), format_ts(day), format_ts(day + LAST_MS))).fetchall()


def _range_parts(ctx, start, end, kinds=ROLLUP_PARTS):
    """[(day, stats)] covering [start, end]: cached rollups of final whole days, events for the rest."""
    now = ctx.app.clock()
    parts, fresh = [], []
    day = datetime.datetime.combine(start.date(), datetime.time(), tzinfo=datetime.timezone.utc)
    with ctx.read() as conn:
        while day <= end:
            lo, hi = max(start, day), min(end, day + LAST_MS)
            whole = lo == day and hi == day + LAST_MS
            key = day.strftime("%Y-%m-%d")
            stats = None
            if whole:
                ctx.next_query()
                row = conn.execute("SELECT payload FROM analytics_rollups WHERE day = ?", (key,)).fetchall()
                stats = json.loads(row[0][0]) if row else None
            if stats is None and whole and _day_is_final(ctx, conn, day, now):
                stats = _period_stats(ctx, conn, format_ts(lo), format_ts(hi))
                fresh.append((key, dumps(stats)))
            elif stats is None:
                stats = _period_stats(ctx, conn, format_ts(lo), format_ts(hi), kinds)
            parts.append((key, stats))
            day += ONE_DAY
    if fresh:
        ctx.transact(lambda txn: [txn.execute("INSERT OR IGNORE INTO analytics_rollups (day, payload) VALUES (?, ?)",
                                              item) for item in fresh])
    return parts


def _merged(parts, key, width):
    """Rows of `key` summed over the parts: {(k1..kwidth): [views, visitors]}."""
    acc = {}
    for _, stats in parts:
        for row in stats[key]:
            totals = acc.setdefault(tuple(row[:width]), [0] * (len(row) - width))
            for n, value in enumerate(row[width:]):
                totals[n] += value
    return acc


def _ranked(acc):
    """Most viewed first; ties by the keys, ascending, empty keys last (clarification 7)."""
    return sorted(acc.items(), key=lambda kv: (-kv[1][0], *[(k is None, k or "") for k in kv[0]]))


def analytics_overview(ctx, params):
    """GET /api/analytics/overview."""
    _require_analytics_admin(ctx)
    start, end, interval, labels = analytics_range(ctx, params, True)
    parts = _range_parts(ctx, start, end, ("summary",))
    total = lambda k: sum(stats[k] for _, stats in parts)
    views, visitors, sessions = total("views"), total("visitors"), total("sessions")
    summary = {"pageViews": views, "uniqueVisitors": visitors, "sessions": sessions,
               "viewsPerSession": round(views / sessions, 2) if sessions else 0,
               "bounceRate": round(total("bounces") * 100 / sessions, 2) if sessions else 0,
               "avgSessionDuration": int(round(total("ms") / sessions / 1000)) if sessions else 0}
    if interval == "hour":
        with ctx.read() as conn:
            series = {row[0]: row[1:] for row in conn.execute(
                f"SELECT {BUCKET_SQL[interval]} AS b, count(*), count(DISTINCT visitor), "
                f"coalesce(sum(is_entrance), 0) FROM analytics_events WHERE ts >= ? AND ts <= ? GROUP BY b",
                (format_ts(start), format_ts(end)))}
    else:
        series = {}
        for day, stats in parts:
            label = day if interval == "day" else day[:7]
            old = series.get(label, (0, 0, 0))
            series[label] = (old[0] + stats["views"], old[1] + stats["visitors"], old[2] + stats["sessions"])
    empty = (0, 0, 0)
    time_series = [dict(zip(("period", "pageViews", "uniqueVisitors", "sessions"), (b, *series.get(b, empty))))
                   for b in labels]
    return {"summary": summary, "timeSeries": time_series, "range": _range_echo(start, end, interval)}


def _report_rows(ctx, params, key, width):
    _require_analytics_admin(ctx)
    start, end, _, _ = analytics_range(ctx, params)
    limit = query_int(params, "limit", 1, 1000, 50)
    acc = _merged(_range_parts(ctx, start, end, (key,)), key, width)
    return _ranked(acc)[:limit], len(acc), _range_echo(start, end)


def analytics_pages(ctx, params):
    """GET /api/analytics/pages."""
    rows, total, rng = _report_rows(ctx, params, "pages", 1)
    return {"pages": [{"path": k[0], "pageViews": v, "uniqueVisitors": u} for k, (v, u) in rows],
            "total": total, "range": rng}


def analytics_referrers(ctx, params):
    """GET /api/analytics/referrers (the null domain is direct and internal traffic)."""
    rows, total, rng = _report_rows(ctx, params, "referrers", 1)
    return {"referrers": [{"domain": k[0], "pageViews": v, "uniqueVisitors": u} for k, (v, u) in rows],
            "total": total, "range": rng}


def analytics_campaigns(ctx, params):
    """GET /api/analytics/campaigns: events with at least one UTM value, by source, medium, campaign."""
    rows, total, rng = _report_rows(ctx, params, "campaigns", 3)
    return {"campaigns": [{"source": k[0], "medium": k[1], "campaign": k[2], "pageViews": v, "uniqueVisitors": u}
                          for k, (v, u) in rows], "total": total, "range": rng}


def analytics_devices(ctx, params):
    """GET /api/analytics/devices: page views by device type, browser and operating system."""
    _require_analytics_admin(ctx)
    start, end, _, _ = analytics_range(ctx, params)
    parts = _range_parts(ctx, start, end, ("devices",))
    views = sum(stats["views"] for _, stats in parts)
    out = {}
    for name, key in (("deviceTypes", "devices"), ("browsers", "browsers"), ("operatingSystems", "os")):
        acc = _merged(parts, key, 1)
        out[name] = [{"name": k[0], "count": n[0], "percentage": round(n[0] * 100 / views, 2) if views else 0}
                     for k, n in sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[0][0] or ""))]
    out["range"] = _range_echo(start, end)
    return out


###############################################################################
# 15. Application and embedding API ###########################################
###############################################################################

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
DATA_LOSS_MESSAGE = "the configuration would clear stored values (see warnings); rerun with --allow-data-loss"
LEASE_MESSAGE = "the configuration differs from the database's active version; restart the server with it"


def database_path(env, db_option=None):
    """The database path by precedence: --db > DATABASE_PATH > DATABASE_URL > ./sovrium.db."""
    if db_option:
        return db_option
    if env.get("DATABASE_PATH"):
        return env["DATABASE_PATH"]
    url = env.get("DATABASE_URL")
    if url:
        if not url.startswith("sqlite:///"):
            raise UsageError("only sqlite:// database URLs are supported")
        rest = url[len("sqlite:///"):]
        if rest == ":memory:":
            return ":memory:"
        if not rest:
            raise UsageError("DATABASE_URL must name a database file")
        return rest
    return "sovrium.db"


JSON_LOG_KEYS = {"id": "requestId", "user": "userId"}


def format_log(event, level, fields, json_mode=False):
    """One log line of OPERATIONS.md §6 (text or JSON)."""
    ts = format_ts(utcnow())
    if json_mode:
        renamed = {JSON_LOG_KEYS.get(k, k): v for k, v in fields.items()}
        return dumps({"ts": ts, "level": level.lower(), "event": event, **renamed})
    tb = fields.pop("traceback", None) if not json_mode else None
    parts = [ts, level.upper(), event]
    for k, v in fields.items():
        if v is None:
            text = "-"
        else:
            text = v if isinstance(v, str) else dumps(v) if not isinstance(v, float) else f"{v:.1f}"
            if text == "" or any(c in text for c in '"=') or any(c.isspace() for c in text):
                text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{k}={text}")
    line = " ".join(parts)
    return line + "\n" + tb.rstrip("\n") if tb else line


class App:
    """A Sovrium application over one database: the WSGI callable, table objects, housekeeping."""

    def __init__(self, config, db_path=None, *, env=None, clock=None, allow_data_loss=False,
                 _server_lease=None):
        self.env = dict(os.environ if env is None else env)
        self.clock = clock or utcnow
        self.warnings = []
        self.imported_version = None
        self.admin_status = None
        self._closed = False
        self._lock = threading.Lock()
        if isinstance(config, dict):
            self.config_path, raw = None, copy.deepcopy(config)
        else:
            self.config_path = os.path.abspath(os.fspath(config))
            raw = load_config(self.config_path)
        self.raw_config = raw
        checked, errors, warnings = compile_config(raw, self.env)
        if errors:
            raise ConfigError(errors, warnings)
        self.log_format = (self.env.get("LOG_FORMAT") or "text").lower()
        if checked.auth and self.env.get("AUTH_ADMIN_EMAIL") and self.env.get("AUTH_ADMIN_PASSWORD"):
            try:
                check_admin_variables(self.env, checked.auth)
            except UsageError as exc:
                raise StartupError(str(exc), 2) from None
        self.db_path = database_path(self.env, db_path)
        self.db = Database(self.db_path, self.clock)
        try:
            self.schema, self.schema_version = self._activate(raw, checked, warnings, allow_data_loss,
                                                             _server_lease)
            self._startup_cleanup()
        except BaseException:
            self.db.close()
            raise
        self._setup_runtime()
        self.wsgi = build_wsgi(self)
        self._timer = None
        self._schedule_housekeeping(HOUSEKEEPING_FIRST_DELAY)
        self._server = None

    def _setup_runtime(self):
        """Rate limits, e-mail, password hashing and startup steps 6–7 (OPERATIONS.md §4)."""
        env, schema = self.env, self.schema
        port = env.get("PORT") or "3000"
        self.base_url = env.get("BASE_URL") or f"http://localhost:{port}"
        proxy = env.get("TRUST_PROXY")
        flag = parse_bool_text(proxy) if proxy else False
        self.trust_proxy = (int(proxy) if proxy and proxy.isdigit() and int(proxy) > 1 else 1 if flag else 0)
        origins = set(schema.settings["trustedOrigins"])
        if schema.auth:
            origins.update(schema.auth["trustedOrigins"])
        if env.get("BASE_URL"):
            m = re.match(r"^(https?://[^/]+)", env["BASE_URL"])
            if m:
                origins.add(m.group(1).lower())
        self.static_origins = frozenset(origins)
        self.limiter = RateLimiter(schema.settings, env, self.clock)
        self.mailer = Mailer(self)
        self.passwords = Passwords(schema.auth, env) if schema.auth else None
        self.auth_secret = None
        if schema.auth:
            if self.passwords.profile == "test":
                self.warnings.append({"path": "", "message": "the argon2 'test' profile is in use; never use it "
                                                            "in production", "dataLoss": False})
            self.auth_secret = ensure_auth_secret(self)
            self._first_admin()

    def _first_admin(self):
        """Startup step 7: AUTH_ADMIN_EMAIL/AUTH_ADMIN_PASSWORD create the first admin once."""
        env = self.env
        if not (env.get("AUTH_ADMIN_EMAIL") and env.get("AUTH_ADMIN_PASSWORD")):
            return
        email_addr = env["AUTH_ADMIN_EMAIL"].strip().lower()
        with self.db.read() as conn:
            exists = conn.execute("SELECT id FROM users WHERE email = ?", (email_addr,)).fetchall()
        if exists:
            self.admin_status = "existing"
            return
        self.create_user(email_addr, env["AUTH_ADMIN_PASSWORD"], env.get("AUTH_ADMIN_NAME") or "Administrator",
                         role="admin", verified=True)
        self.admin_status = "created"

    def create_user(self, email, password, name=None, role="member", verified=False):
        """Create a user with a password (as the system) → user object (API.md §13.1)."""
        if self.schema.auth is None:
            raise NotFoundError("Route not found")
        ctx = Ctx(self, SYSTEM)
        email_addr = _email(email)
        name = _name(name if name is not None else email_addr.split("@")[0])
        _check_role(ctx, role)
        hashed = self.passwords.hash(_password(ctx, password, "password"))
        return ctx.transact(lambda txn: _create_user(ctx, txn, email_addr, name, hashed, role, verified))

    # -- configuration --------------------------------------------------------------------------------
    def _activate(self, raw, checked, warnings, allow_data_loss, lease):
        """Startup step 5: import the configuration as a new version when it differs (API.md §12.2)."""
        checksum = config_checksum(raw)
        conn = self.db.conn()
        active = self.db.active_version(conn)
        if active is not None and active[2] == checksum:
            schema, errors, _ = compile_config(raw, self.env, self.db.registry(conn), resolved=active[3])
            if schema is None:
                raise ConfigError(errors, warnings)
            self.warnings = warnings
            schema.checksum = checksum
            return schema, active[0]
        if lease is None and not self.db.memory and ServerLease(self.db_path).holder() is not None:
            raise StartupError(LEASE_MESSAGE, 1)
        with self.db.write(now=format_ts(self.clock())) as txn:
            registry = self.db.registry(txn.conn)
            schema, errors, warnings = compile_config(raw, self.env, registry)
            if schema is None:
                raise ConfigError(errors, warnings)
            old = stored_schema(active, registry) if active is not None else None
            plan = plan_config(txn.conn, old, schema, registry)
            warnings = warnings + plan.warnings
            if plan.errors:
                raise ConfigError(plan.errors, warnings)
            if plan.data_loss and not allow_data_loss:
                raise ConfigError([{"path": "", "message": DATA_LOSS_MESSAGE}], warnings)
            number = apply_config(txn, old, schema, registry, plan, raw, checksum, "file")
        self.warnings = warnings
        self.imported_version = number
        schema.checksum = checksum
        return schema, number

    @property
    def config(self):
        """The active normalized configuration (a copy; changing it changes nothing)."""
        return copy.deepcopy(_strip_private(self.schema.conf))

    # -- identities -----------------------------------------------------------------------------------
    def table(self, name_or_id):
        """A table object acting as the system (no permission checks)."""
        return TableHandle(self, name_or_id, SYSTEM)

    def as_user(self, user_id):
        """An object whose table() acts as that user, with every permission rule of HTTP."""
        return UserView(self, user_id)

    def actor_for_user(self, user_id):
        """The Actor of a stored user (role read now; unconfigured roles count as viewer)."""
        with self.db.read() as conn:
            user = _user_row(conn, "id = ?", (user_id,))
        if user is None:
            raise NotFoundError("User not found")
        return actor_of(self.schema, user)

    def context(self, actor, request_id=None):
        """A service-call context for `actor`."""
        return Ctx(self, actor, request_id)

    # -- logging --------------------------------------------------------------------------------------
    def log(self, event, level="info", **fields):
        """Write one structured log line (OPERATIONS.md §6)."""
        logger = logging.getLogger("sovrium")
        lvl = LOG_LEVELS[level]
        if logger.isEnabledFor(lvl):
            logger.log(lvl, format_log(event, level, fields, self.log_format == "json"))

    # -- housekeeping ---------------------------------------------------------------------------------
    def _startup_cleanup(self):
        now = format_ts(self.clock())
        with self.db.write(now=now) as txn:
            txn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            txn.execute("DELETE FROM verifications WHERE expires_at <= ?", (now,))

    def _schedule_housekeeping(self, delay):
        with self._lock:
            if self._closed:
                return
            self._timer = threading.Timer(delay, self._housekeeping_tick)
            self._timer.daemon = True
            self._timer.start()

    def _housekeeping_tick(self):
        try:
            self.housekeep()
        except Exception:
            self.log("error", "error", message="housekeeping failed", traceback=traceback.format_exc())
        self._schedule_housekeeping(HOUSEKEEPING_INTERVAL)

    def housekeep(self):
        """Run housekeeping now: expired tokens, history and trash retention, PRAGMA optimize."""
        settings = self.schema.settings
        now_dt = self.clock()
        now = format_ts(now_dt)
        counts = {"sessions": 0, "history": 0, "trash": 0, "skipped": 0}
        for table, column, key in (("sessions", "expires_at", "sessions"),
                                   ("verifications", "expires_at", None)):
            while True:
                with self.db.write(now=now) as txn:
                    txn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                                f"WHERE {column} <= ? LIMIT {HOUSEKEEPING_BATCH})", (now,))
                    n = txn.conn.changes()
                if key:
                    counts[key] += n
                if n < HOUSEKEEPING_BATCH:
                    break
        if settings["historyRetentionDays"]:
            cutoff = format_ts(now_dt - datetime.timedelta(days=settings["historyRetentionDays"]))
            while True:
                with self.db.write(now=now) as txn:
                    txn.execute(f"DELETE FROM revisions WHERE id IN (SELECT id FROM revisions WHERE "
                                f"created_at < ? LIMIT {HOUSEKEEPING_BATCH})", (cutoff,))
                    n = txn.conn.changes()
                counts["history"] += n
                if n < HOUSEKEEPING_BATCH:
                    break
        if settings["trashRetentionDays"]:
            cutoff = format_ts(now_dt - datetime.timedelta(days=settings["trashRetentionDays"]))
            ctx = Ctx(self, SYSTEM)
            skipped = set()
            while True:
                with self.db.read() as conn:
                    rows = conn.execute(
                        "SELECT id, table_id FROM records WHERE deleted_at IS NOT NULL AND deleted_at < ? "
                        f"ORDER BY id LIMIT {HOUSEKEEPING_BATCH + len(skipped)}", (cutoff,)).fetchall()
                rows = [r for r in rows if r[0] not in skipped]
                if not rows:
                    break
                for rid, tid in rows:
                    table = ctx.schema.by_id.get(tid)
                    if table is None:
                        skipped.add(rid)
                        continue
                    try:
                        with self.db.write(now=now) as txn:
                            delete_records(ctx, txn, table, [rid], True)
                        counts["trash"] += 1
                    except ConflictError:
                        skipped.add(rid)
            counts["skipped"] = len(skipped)
        analytics = self.schema.analytics
        if analytics["enabled"] or analytics["retentionDays"]:
            cutoff = format_ts(now_dt - datetime.timedelta(days=analytics["retentionDays"]))
            counts["analytics"] = 0
            while True:
                with self.db.write(now=now) as txn:
                    txn.execute(f"DELETE FROM analytics_events WHERE id IN (SELECT id FROM analytics_events WHERE "
                                f"ts < ? ORDER BY ts LIMIT {HOUSEKEEPING_BATCH})", (cutoff,))
                    n = txn.conn.changes()
                    txn.execute("DELETE FROM analytics_salts WHERE day < ?", (now[:10],))
                    txn.execute("DELETE FROM analytics_rollups WHERE day <= ?", (cutoff[:10],))
                counts["analytics"] += n
                if n < HOUSEKEEPING_BATCH:
                    break
        if analytics["enabled"]:
            # Roll up final days ahead of time, so no report request has to (bounded by retention).
            days = min(analytics["retentionDays"], 400)
            _range_parts(Ctx(self, SYSTEM), now_dt - datetime.timedelta(days=days), now_dt - ONE_DAY)
        with contextlib.suppress(apsw.Error):
            self.db.conn().execute("PRAGMA optimize")
        self.log("retention", **counts)
        return counts

    # -- serving and closing -------------------------------------------------------------------------
    def serve(self, host="127.0.0.1", port=3000, threads=8):
        """Bind, take the server lease and serve with waitress until a signal or close()."""
        return serve_app(self, host, port, threads)

    def close(self, checkpoint=False):
        """Stop the housekeeping timer and a running serve(), close the connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        if self._server is not None:
            self._server.stop()
        if getattr(self, "mailer", None) is not None:
            self.mailer.close()
        self.db.close(checkpoint=checkpoint)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _strip_private(value):
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip_private(v) for v in value]
    return value


def _list_params(filter=None, filter_by_formula=None, sort=None, fields=None, search=None, limit=None,
                 offset=None, page=None, include_deleted=False, skip_total=False):
    """Embedding-API keyword arguments → the HTTP query parameters they stand for."""
    params = {}
    if filter is not None:
        params["filter"] = filter if isinstance(filter, str) else dumps(filter)
    if filter_by_formula:
        params["filterByFormula"] = filter_by_formula
    if sort:
        params["sort"] = sort if isinstance(sort, str) else ",".join(
            f"{name}:{direction}" for name, direction in sort)
    if fields:
        params["fields"] = fields if isinstance(fields, str) else ",".join(fields)
    if search:
        params["search"] = search
    for key, value in (("limit", limit), ("offset", offset), ("page", page)):
        if value is not None:
            params[key] = str(value)
    if include_deleted:
        params["includeDeleted"] = "true"
    if skip_total:
        params["skipTotal"] = "true"
    return params


class TableHandle:
    """One table seen by one actor; every method calls the same services as HTTP."""

    def __init__(self, app, name_or_id, actor):
        self.app, self.actor = app, actor
        self.ref = str(name_or_id)
        require_table(actor, app.schema, self.ref)

    def _ctx(self):
        return Ctx(self.app, self.actor)

    def create(self, fields):
        """POST records."""
        return records_create(self._ctx(), self.ref, {"fields": fields}).value()

    def get(self, record_id, include_deleted=False, fields=None):
        """GET one record."""
        params = _list_params(fields=fields, include_deleted=include_deleted)
        return records_get(self._ctx(), self.ref, record_id, params).value()

    def update(self, record_id, fields, updated_at=None):
        """PATCH one record, optionally with an updatedAt precondition."""
        body = {"fields": fields}
        if updated_at is not None:
            body["updatedAt"] = updated_at
        return records_update(self._ctx(), self.ref, record_id, body).value()

    def delete(self, record_id, permanent=False):
        """Soft-delete (or purge) one record."""
        records_delete(self._ctx(), self.ref, record_id, {"permanent": "true" if permanent else "false"})

    def list(self, **kw):
        """One page of records: the list envelope of API.md §4.7."""
        return records_list(self._ctx(), self.ref, _list_params(**kw)).value()

    def restore(self, record_id):
        """POST restore: bring a trashed record back."""
        return records_restore(self._ctx(), self.ref, record_id).value()

    def batch_create(self, records, return_records=True):
        """POST records/batch."""
        return records_batch_create(self._ctx(), self.ref, {"records": records,
                                                            "returnRecords": return_records}).value()

    def batch_update(self, records, return_records=True):
        """PATCH records/batch."""
        return records_batch_update(self._ctx(), self.ref, {"records": records,
                                                            "returnRecords": return_records}).value()

    def batch_delete(self, ids, permanent=False):
        """DELETE records/batch."""
        return records_batch_delete(self._ctx(), self.ref, {"ids": ids, "permanent": permanent})

    def batch_restore(self, ids):
        """POST records/batch/restore."""
        return records_batch_restore(self._ctx(), self.ref, {"ids": ids})

    def upsert(self, records, merge_on, return_records=True):
        """POST records/upsert."""
        return records_upsert(self._ctx(), self.ref, {"records": records, "fieldsToMergeOn": list(merge_on),
                                                      "returnRecords": return_records}).value()

    def trash(self, **list_params):
        """GET trash (the list parameters of `list`)."""
        return records_list(self._ctx(), self.ref, _list_params(**list_params), trash=True).value()

    def history(self, record_id, limit=50, offset=0):
        """GET a record's history."""
        return records_history(self._ctx(), self.ref, record_id, {"limit": str(limit), "offset": str(offset)})

    def count(self, filter=None, filter_by_formula=None, search=None):
        """The number of matching records."""
        page = self.list(filter=filter, filter_by_formula=filter_by_formula, search=search, limit=1)
        return page["pagination"]["total"]

    def iterate(self, filter=None, filter_by_formula=None, search=None, batch_size=500):
        """Every matching record in id order, fetched in pages of `batch_size` (keyset pagination)."""
        last = 0
        base = filter if filter is None or isinstance(filter, (dict, str)) else dumps(filter)
        while True:
            params = _list_params(filter=base, filter_by_formula=filter_by_formula, search=search,
                                  limit=batch_size, skip_total=True)
            page = records_list(self._ctx(), self.ref, params, after_id=last).value()
            yield from page["records"]
            if not page["pagination"]["hasNextPage"] or not page["records"]:
                return
            last = page["records"][-1]["id"]


class UserView:
    """`app.as_user(id)`: table objects acting as that user."""

    def __init__(self, app, user_id):
        self.app = app
        self.actor = app.actor_for_user(user_id)

    def table(self, name_or_id):
        return TableHandle(self.app, name_or_id, self.actor)

###############################################################################
# 16. HTTP layer ##############################################################
###############################################################################

import bottle  # noqa: E402  (only this section knows Bottle)

SECURITY_HEADERS = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "strict-origin-when-cross-origin")]
CORS_EXPOSE = "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, set-auth-token"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
JSON_TYPE = re.compile(r"^application/(json|[^;/\s]+\+json)\s*(;.*)?$", re.I)
BODY_METHODS = ("POST", "PUT", "PATCH")
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 202: "202 Accepted", 204: "204 No Content",
               302: "302 Found", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
               404: "404 Not Found", 405: "405 Method Not Allowed", 409: "409 Conflict",
               413: "413 Payload Too Large", 429: "429 Too Many Requests", 500: "500 Internal Server Error",
               503: "503 Service Unavailable"}


class Req:
    """What a route handler needs from one HTTP request."""

    def __init__(self, app, environ, request_id, body, ip):
        self.app, self.environ, self.request_id, self.body, self.ip = app, environ, request_id, body, ip
        self.method = environ["REQUEST_METHOD"]
        self.query = {}
        for k, v in _parse_qsl(environ.get("QUERY_STRING", "")):
            self.query[k] = v
        self.cookies = request_cookies(environ) if environ.get("HTTP_COOKIE") else {}
        self.actor = LOCAL if app.schema.auth is None else ANONYMOUS
        self.session = None
        self.via = None
        self.refresh_cookie = False
        self._ctx = None

    def ctx(self):
        """The service context of this request (one per request: services record effects on it)."""
        if self._ctx is None:
            ctx = self._ctx = Ctx(self.app, self.actor, self.request_id)
            ctx.session, ctx.ip = self.session, self.ip
            ctx.user_agent = self.environ.get("HTTP_USER_AGENT")
            ctx.trusted_origins = self.app.wsgi.trusted_origins(self.environ)
            admin = self.cookies.get(ADMIN_SESSION_COOKIE)
            ctx.admin_session_token = unsign_token(self.app.auth_secret, admin) if admin and self.app.auth_secret else None
        return self._ctx

    def json(self, required=True):
        """The JSON body (API.md §1.2): None when absent and optional."""
        ctype = self.environ.get("CONTENT_TYPE", "")
        if not self.body:
            if required:
                raise field_error("body", "Request body is required")
            return {}
        if ctype and not JSON_TYPE.match(ctype):
            raise field_error("body", "Content-Type must be application/json")
        try:
            return parse_json_text(self.body)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise field_error("body", "Request body is not valid JSON") from None

    def json_object(self, required=True):
        body = self.json(required)
        if not isinstance(body, dict):
            raise field_error("body", "Request body must be a JSON object")
        return body


def _parse_qsl(qs):
    return urllib.parse.parse_qsl(qs, keep_blank_values=True) if qs else []


class Response:
    """A handler's answer: status, JSON-able body (dict, list, RawJson or None), extra headers."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status=200, body=None, headers=None):
        self.status, self.body, self.headers = status, body, headers or []


# -- handlers ------------------------------------------------------------------------------------------

def route_health(req):
    app = req.app
    try:
        with app.db.read() as conn:
            conn.execute("SELECT 1").fetchall()
    except (ApiError, apsw.Error):
        raise ServiceUnavailableError("Database unavailable") from None
    return Response(200, {"status": "ok", "timestamp": format_ts(app.clock()),
                          "app": {"name": app.schema.name, "version": app.schema.version},
                          "server": {"name": "sovrium", "version": __version__},
                          "database": "ok", "schemaVersion": app.schema_version})


def route_tables_list(req):
    return Response(200, tables_list(req.ctx()))


def route_tables_get(req, t):
    return Response(200, tables_get(req.ctx(), t))


def route_tables_permissions(req, t):
    return Response(200, tables_permissions(req.ctx(), t))


def route_records_list(req, t):
    return Response(200, records_list(req.ctx(), t, req.query))


def route_records_create(req, t):
    ctx = req.ctx()
    table = require_table(ctx.actor, ctx.schema, t, "create")
    record = records_create(ctx, table, req.json_object(required=False))
    location = f"{req.environ.get('SCRIPT_NAME', '')}/api/tables/{table.id}/records/{record.id}"
    return Response(201, record, [("Location", location)])


def route_records_get(req, t, rid):
    return Response(200, records_get(req.ctx(), t, rid, req.query))


def route_records_update(req, t, rid):
    return Response(200, records_update(req.ctx(), t, rid, req.json_object(required=False)))


def route_records_history(req, t, rid):
    return Response(200, records_history(req.ctx(), t, rid, req.query))


def route_records_delete(req, t, rid):
    records_delete(req.ctx(), t, rid, req.query)
    return Response(204)


def _auth_route(service, body=None):
    """A handler for an auth service taking the JSON body (body="required"/"optional") or nothing."""
    def handler(req):
        ctx = req.ctx()
        if body is None:
            return Response(200, service(ctx))
        return Response(200, service(ctx, req.json_object(required=body == "required")))
    handler.__name__ = "route_" + service.__name__
    return handler


def route_auth_ok(req):
    return Response(200, {"ok": True})


def route_auth_get_session(req):
    return Response(200, RawJson("null") if (out := auth_get_session(req.ctx())) is None else out)


def route_auth_revoke_other_sessions(req):
    return Response(200, auth_revoke_sessions(req.ctx(), keep_current=True))


def route_auth_reset_password_link(req, token):
    return Response(302, None, [("Location", auth_reset_password_link(req.ctx(), token, req.query))])


def route_auth_reset_password(req):
    return Response(200, auth_reset_password(req.ctx(), req.json_object(), req.query))


def route_auth_verify_email(req):
    body, location = auth_verify_email(req.ctx(), req.query)
    return Response(302, None, [("Location", location)]) if location else Response(200, body)


def route_admin_query(service):
    def handler(req):
        return Response(200, service(req.ctx(), req.query))
    handler.__name__ = "route_" + service.__name__
    return handler


AUTH_ROUTES = [
    ("GET", "/api/auth/ok", route_auth_ok),
    ("POST", "/api/auth/sign-up/email", _auth_route(auth_sign_up, "required")),
    ("POST", "/api/auth/sign-in/email", _auth_route(auth_sign_in, "required")),
    ("POST", "/api/auth/sign-out", _auth_route(auth_sign_out)),
    ("GET", "/api/auth/get-session", route_auth_get_session),
    ("POST", "/api/auth/get-session", route_auth_get_session),
    ("GET", "/api/auth/list-sessions", _auth_route(auth_list_sessions)),
    ("POST", "/api/auth/revoke-session", _auth_route(auth_revoke_session, "required")),
    ("POST", "/api/auth/revoke-sessions", _auth_route(auth_revoke_sessions)),
    ("POST", "/api/auth/revoke-other-sessions", route_auth_revoke_other_sessions),
    ("POST", "/api/auth/change-password", _auth_route(auth_change_password, "required")),
    ("POST", "/api/auth/request-password-reset", _auth_route(auth_request_password_reset, "required")),
    ("GET", "/api/auth/reset-password/<token>", route_auth_reset_password_link),
    ("POST", "/api/auth/reset-password", route_auth_reset_password),
    ("POST", "/api/auth/send-verification-email", _auth_route(auth_send_verification_email, "required")),
    ("GET", "/api/auth/verify-email", route_auth_verify_email),
    ("POST", "/api/auth/update-user", _auth_route(auth_update_user, "required")),
    ("GET", "/api/auth/admin/list-users", route_admin_query(admin_list_users)),
    ("GET", "/api/auth/admin/get-user", route_admin_query(admin_get_user)),
    ("POST", "/api/auth/admin/create-user", _auth_route(admin_create_user, "required")),
    ("POST", "/api/auth/admin/update-user", _auth_route(admin_update_user, "required")),
    ("POST", "/api/auth/admin/set-role", _auth_route(admin_set_role, "required")),
    ("POST", "/api/auth/admin/ban-user", _auth_route(admin_ban_user, "required")),
    ("POST", "/api/auth/admin/unban-user", _auth_route(admin_unban_user, "required")),
    ("POST", "/api/auth/admin/list-user-sessions", _auth_route(admin_list_user_sessions, "required")),
    ("POST", "/api/auth/admin/revoke-user-session", _auth_route(admin_revoke_user_session, "required")),
    ("POST", "/api/auth/admin/revoke-user-sessions", _auth_route(admin_revoke_user_sessions, "required")),
    ("POST", "/api/auth/admin/remove-user", _auth_route(admin_remove_user, "required")),
    ("POST", "/api/auth/admin/set-user-password", _auth_route(admin_set_user_password, "required")),
    ("POST", "/api/auth/admin/impersonate-user", _auth_route(admin_impersonate_user, "required")),
    ("POST", "/api/auth/admin/stop-impersonating", _auth_route(admin_stop_impersonating)),
]
def _table_route(service, status=200, body=None, query=False):
    """A handler for a table service: url args, then the JSON body or the query parameters."""
    def handler(req, **kw):
        args = [req.ctx(), *kw.values()]
        if body is not None:
            args.append(req.json(required=True) if body == "any" else
                        req.json_object(required=body == "required"))
        if query:
            args.append(req.query)
        out = service(*args)
        return Response(204) if status == 204 else Response(status, out)
    handler.__name__ = "route_" + service.__name__
    return handler


def route_records_batch_delete(req, t):
    return Response(200, records_batch_delete(req.ctx(), t, req.json(required=True)))


def route_activity_list(req):
    return Response(200, activity_list(req.ctx(), req.query))


def route_activity_get(req, aid):
    return Response(200, activity_get(req.ctx(), aid))


def route_analytics_collect(req):
    ctx = req.ctx()
    ctype = req.environ.get("CONTENT_TYPE", "")
    if ctype.split(";")[0].strip().lower() == "text/plain":
        req.environ["CONTENT_TYPE"] = "application/json"
    body = req.json_object(required=True)
    headers = {k[5:].replace("_", "-").lower(): v for k, v in req.environ.items() if k.startswith("HTTP_")}
    analytics_collect(ctx, body, headers)
    return Response(202, None, [("Access-Control-Allow-Origin", "*")])


def route_analytics_script(req):
    return Response(200, TRACKING_SCRIPT.encode("utf-8"), [
        ("Content-Type", "application/javascript; charset=utf-8"), ("Access-Control-Allow-Origin", "*"),
        ("Cache-Control", "public, max-age=3600")])


PUBLIC_CORS_PATHS = ("/api/analytics/collect", "/api/analytics/script.js")   # always `*`, never credentials
ANALYTICS_ROUTES = [
    ("POST", "/api/analytics/collect", route_analytics_collect),
    ("GET", "/api/analytics/script.js", route_analytics_script),
    ("GET", "/api/analytics/overview", _table_route(analytics_overview, query=True)),
    ("GET", "/api/analytics/pages", _table_route(analytics_pages, query=True)),
    ("GET", "/api/analytics/referrers", _table_route(analytics_referrers, query=True)),
    ("GET", "/api/analytics/devices", _table_route(analytics_devices, query=True)),
    ("GET", "/api/analytics/campaigns", _table_route(analytics_campaigns, query=True)),
]
LITERAL_RECORD_PATHS = {"batch": "POST, PATCH, DELETE, OPTIONS", "upsert": "POST, OPTIONS"}
LIFECYCLE_ROUTES = [
    ("POST", "/api/tables/<t>/records/batch", _table_route(records_batch_create, 201, "any")),
    ("PATCH", "/api/tables/<t>/records/batch", _table_route(records_batch_update, 200, "any")),
    ("DELETE", "/api/tables/<t>/records/batch", route_records_batch_delete),
    ("POST", "/api/tables/<t>/records/batch/restore", _table_route(records_batch_restore, 200, "any")),
    ("POST", "/api/tables/<t>/records/upsert", _table_route(records_upsert, 200, "any")),
    ("GET", "/api/tables/<t>/trash", lambda req, t: Response(200, records_list(req.ctx(), t, req.query, trash=True))),
    ("POST", "/api/tables/<t>/records/<rid>/restore", _table_route(records_restore)),
    ("GET", "/api/tables/<t>/records/<rid>/comments", _table_route(comments_list, query=True)),
    ("POST", "/api/tables/<t>/records/<rid>/comments", _table_route(comments_create, 201, "required")),
    ("GET", "/api/tables/<t>/records/<rid>/comments/<cid>", _table_route(comments_get)),
    ("PATCH", "/api/tables/<t>/records/<rid>/comments/<cid>", _table_route(comments_update, 200, "required")),
    ("DELETE", "/api/tables/<t>/records/<rid>/comments/<cid>", _table_route(comments_delete, 204)),
    ("GET", "/api/tables/<t>/views", _table_route(views_list)),
    ("GET", "/api/tables/<t>/views/<vid>", _table_route(views_get)),
    ("GET", "/api/tables/<t>/views/<vid>/records", _table_route(views_records, query=True)),
    ("GET", "/api/activity", route_activity_list),
    ("GET", "/api/activity/<aid>", route_activity_get),
]
RECORD_ROUTES = [
    ("GET", "/api/tables/<t>/records", route_records_list),
    ("POST", "/api/tables/<t>/records", route_records_create),
    ("GET", "/api/tables/<t>/records/<rid>", route_records_get),
    ("PATCH", "/api/tables/<t>/records/<rid>", route_records_update),
    ("DELETE", "/api/tables/<t>/records/<rid>", route_records_delete),
    ("GET", "/api/tables/<t>/records/<rid>/history", route_records_history),
]
TABLE_ROUTES = [
    ("GET", "/api/health", route_health),
    ("GET", "/api/tables", route_tables_list),
    ("GET", "/api/tables/<t>", route_tables_get),
    ("GET", "/api/tables/<t>/permissions", route_tables_permissions),
]


# -- the WSGI application ------------------------------------------------------------------------------

class SovriumWsgi:
    """The WSGI callable: routing, body limits, the error envelope, headers, CORS and request logs."""

    def __init__(self, app):
        self.app = app
        self.router = bottle.Router()
        # Literal segments (batch, upsert, restore) are added before <rid> so they take precedence.
        for method, rule, handler in (TABLE_ROUTES + LIFECYCLE_ROUTES + RECORD_ROUTES + AUTH_ROUTES
                                      + ANALYTICS_ROUTES):
            self.router.add(rule, method, handler)
        self.inflight = 0
        self._count_lock = threading.Lock()

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        with self._count_lock:
            self.inflight += 1
        rid = environ.get("HTTP_X_REQUEST_ID", "")
        if not REQUEST_ID.fullmatch(rid):
            rid = str(uuid.uuid4())
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "") or "/"
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
            environ["PATH_INFO"] = path
        req = resp = None
        try:
            try:
                resp, req = self.handle(environ, method, path, rid)
            except ApiError as exc:
                resp = self.error_response(exc, rid)
            except Exception:
                self.app.log("error", "error", id=rid, message="unhandled exception",
                             traceback=traceback.format_exc())
                resp = self.error_response(InternalError(), rid)
            status, headers, body = self.finish(resp, environ, method, rid)
            start_response(STATUS_TEXT.get(status, f"{status} Status"), headers)
            return [body]
        finally:
            with self._count_lock:
                self.inflight -= 1
            self.app.log("request", id=rid, method=method, path=_log_path(path),
                         status=resp.status if resp is not None else 500,
                         ms=round((time.perf_counter() - started) * 1000, 1),
                         ip=environ.get("REMOTE_ADDR"), user=req.actor.id if req else None)

    def handle(self, environ, method, path, rid):
        if method == "OPTIONS":
            return Response(204, None, self.preflight(environ)), None
        if not (path == "/api" or path.startswith("/api/")):
            raise NotFoundError("Route not found")
        self.check_feature(path)
        try:
            target, args = self.router.match(environ)
        except bottle.HTTPError as exc:
            if exc.status_code == 405:
                allow = [m.strip() for m in exc.headers.get("Allow", "").split(",") if m.strip()]
                if "GET" in allow and "HEAD" not in allow:
                    allow.append("HEAD")
                allow.append("OPTIONS")
                raise MethodNotAllowedError(headers={"Allow": ", ".join(allow)}) from None
            raise NotFoundError("Route not found") from None
        literal = LITERAL_RECORD_PATHS.get(args.get("rid"))
        if literal and path.endswith("/" + args["rid"]):
            # `batch` and `upsert` are literal segments, never record ids (API.md §1.14).
            raise MethodNotAllowedError(headers={"Allow": literal})
        body = self.read_body(environ, method)
        req = Req(self.app, environ, rid, body, client_ip(environ, self.app.trust_proxy))
        limits = self.rate_limit(method, path, req.ip)
        try:
            self.check_csrf(environ, method, path, req)
            self.authenticate(req)
            resp = target(req, **args)
        except ApiError as exc:
            exc.headers.update({k: v for k, v in limits if k not in exc.headers})
            raise
        resp.headers += limits
        self.apply_effects(req, resp)
        return resp, req

    def check_feature(self, path):
        """Paths of features that are not configured answer 404 for every method (API.md §1.12)."""
        if path.startswith("/api/analytics/") and not self.app.schema.analytics["enabled"]:
            raise NotFoundError("Route not found")
        if path.startswith("/api/auth/") or path == "/api/auth":
            auth = self.app.schema.auth
            if auth is None:
                raise NotFoundError("Route not found")
            needed = AUTH_STRATEGY_PATHS.get(path) or (
                "emailAndPassword" if path.startswith("/api/auth/reset-password/") else None)
            if needed and needed not in {s["type"] for s in auth["strategies"]}:
                raise NotFoundError("Route not found")

    def rate_limit(self, method, path, ip):
        """Count the request against its rules; 429 when one is exhausted (API.md §14)."""
        limiter = self.app.limiter
        rules = [r for r in rate_rules(method, path) if limiter.active(r)]
        if not rules:
            return []
        checks = [(r, limiter.peek(r, ip)) for r in rules]
        refused = [(r, c) for r, c in checks if not c[0]]
        if refused:
            rule, (_, limit, _, reset) = refused[0]
            self.app.log("rate-limited", "debug", rule=rule, ip=ip)
            raise RateLimitedError(headers=rate_limited_headers(limit, reset))
        counted = [limiter.hit(r, ip) for r in rules]
        _, limit, remaining, reset = min(counted, key=lambda c: c[2])
        return [("RateLimit-Limit", str(limit)), ("RateLimit-Remaining", str(remaining)),
                ("RateLimit-Reset", str(reset))]

    def check_csrf(self, environ, method, path, req):
        """Cookie-carrying unsafe requests must come from a trusted origin (API.md §1.7)."""
        if method not in ("POST", "PUT", "PATCH", "DELETE") or not req.cookies:
            return
        if not any(n in req.cookies for n in (SESSION_COOKIE, SECURE_SESSION_COOKIE, ADMIN_SESSION_COOKIE)):
            return
        if environ.get("HTTP_AUTHORIZATION", "")[:7].lower() == "bearer ":
            return
        if path == "/api/analytics/collect" or path.startswith("/api/auth/callback/"):
            return
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            if origin.lower() == "null" or origin.lower() not in self.trusted_origins(environ):
                raise ForbiddenError("Cross-site request blocked")
            return
        site = environ.get("HTTP_SEC_FETCH_SITE")
        if site is not None and site.lower() not in ("same-origin", "none"):
            raise ForbiddenError("Cross-site request blocked")

    def authenticate(self, req):
        """Resolve the session (never fails: an unusable credential leaves the caller anonymous)."""
        app = self.app
        if app.schema.auth is None:
            return
        token, via = credential(req.environ, req.cookies, app.auth_secret)
        if not token:
            return
        now_dt = app.clock()
        now = format_ts(now_dt)
        found = load_session(app.db.conn(), token, now)
        if found is None:
            return
        session, user = found
        conf = app.schema.auth["session"]
        if parse_ts(session["updatedAt"]) + datetime.timedelta(seconds=conf["updateAge"]) <= now_dt:
            expires = format_ts(now_dt + datetime.timedelta(seconds=conf["expiresIn"]))
            app.db.submit(lambda txn: txn.execute("UPDATE sessions SET expires_at = ?, updated_at = ? WHERE id = ?",
                                                  (expires, now, session["id"])))
            session = {**session, "expiresAt": expires, "updatedAt": now}
            req.refresh_cookie = via == "cookie"
        req.session, req.via = session, via
        req.actor = actor_of(app.schema, user)

    def apply_effects(self, req, resp):
        """Turn what an auth service recorded (session, cleared cookies) into headers."""
        effects = req._ctx.effects if req._ctx is not None else {}
        secure = self.app.base_url.startswith("https://")
        cookie = lambda name, value, max_age: resp.headers.append(("Set-Cookie", make_cookie(name, value, max_age, secure)))
        if effects.get("clear"):
            for name in CLEARED_COOKIES:
                cookie(name, "", 0)
        if "session" in effects:
            token, max_age = effects["session"]
            cookie(SESSION_COOKIE, sign_token(self.app.auth_secret, token), max_age)
            resp.headers.append(("set-auth-token", token))
        elif req.refresh_cookie and not effects.get("clear"):
            cookie(SESSION_COOKIE, sign_token(self.app.auth_secret, req.session["token"]),
                   self.app.schema.auth["session"]["expiresIn"])
        if "admin_session" in effects:
            cookie(ADMIN_SESSION_COOKIE, sign_token(self.app.auth_secret, effects["admin_session"]),
                   self.app.schema.auth["session"]["expiresIn"])
        if effects.get("clear_admin"):
            cookie(ADMIN_SESSION_COOKIE, "", 0)

    def read_body(self, environ, method):
        limit = self.app.schema.settings["maxBodyBytes"]
        if environ.get("PATH_INFO") == "/api/analytics/collect":
            limit = min(limit, COLLECT_MAX_BYTES)
        too_large = PayloadTooLargeError(f"Request body exceeds the maximum size of {limit} bytes")
        declared = environ.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                raise field_error("body", "Invalid Content-Length") from None
            if length > limit:
                raise too_large
        else:
            length = None
        if method not in BODY_METHODS + ("DELETE",):
            return b""
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        if length is not None:
            return stream.read(length) if length else b""
        chunks, size = [], 0
        while True:
            chunk = stream.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise too_large
        return b"".join(chunks)

    @staticmethod
    def error_response(exc, rid):
        return Response(exc.status, exc.envelope(rid), list(exc.headers.items()))

    def trusted_origins(self, environ):
        origins = self.app.static_origins
        if not self.app.env.get("BASE_URL") and environ.get("HTTP_HOST"):
            origins = origins | {"http://" + environ["HTTP_HOST"].lower()}
        return origins

    def cors(self, environ):
        origin = environ.get("HTTP_ORIGIN")
        if not origin or origin.lower() not in self.trusted_origins(environ):
            return []
        return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"), ("Access-Control-Expose-Headers", CORS_EXPOSE)]

    def preflight(self, environ):
        headers = self.cors(environ)
        if headers:
            headers += [("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                        ("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Request-Id"),
                        ("Access-Control-Max-Age", "600")]
        return headers

    def finish(self, resp, environ, method, rid):
        body = resp.body
        headers = [("X-Request-Id", rid), *SECURITY_HEADERS,
                   ("X-Sovrium-Schema-Version", str(self.app.schema_version))]
        if environ.get("PATH_INFO") in PUBLIC_CORS_PATHS:
            headers.append(("Access-Control-Allow-Origin", "*"))
        elif environ.get("REQUEST_METHOD") != "OPTIONS":
            headers += self.cors(environ)
        overrides = {k.lower() for k, _ in resp.headers}
        headers = [h for h in headers if h[0].lower() not in overrides] + resp.headers
        if body is None or resp.status == 204:
            data = b""
        else:
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, RawJson):
                data = body.text.encode("utf-8")
            else:
                data = dumps(body).encode("utf-8")
            if not any(k.lower() == "content-type" for k, _ in resp.headers):
                headers.append(("Content-Type", "application/json"))
        headers.append(("Content-Length", str(len(data))))
        if method == "HEAD":
            data = b""
        return resp.status, headers, data


def _log_path(path):
    """The path as logged: one-time tokens in paths never reach the log (OPERATIONS.md §6)."""
    if path.startswith("/api/auth/reset-password/"):
        return "/api/auth/reset-password/[redacted]"
    return path


def make_cookie(name, value, max_age, secure):
    """A Set-Cookie value with the attributes of API.md §1.5 (no Max-Age: a browser-session cookie)."""
    parts = [f"{name}={urllib.parse.quote(value, safe='')}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def client_ip(environ, trust):
    """The client IP: the TCP peer, or the trust-th X-Forwarded-For entry from the right (API.md §14.3)."""
    peer = environ.get("REMOTE_ADDR")
    if not trust:
        return peer
    entries = [e.strip() for e in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if e.strip()]
    if not entries:
        return peer
    return entries[-trust] if len(entries) >= trust else entries[0]


AUTH_STRATEGY_PATHS = {
    "/api/auth/sign-up/email": "emailAndPassword", "/api/auth/sign-in/email": "emailAndPassword",
    "/api/auth/change-password": "emailAndPassword", "/api/auth/request-password-reset": "emailAndPassword",
    "/api/auth/reset-password": "emailAndPassword",
}
RATE_RULES = {
    **{("POST", p): ("signIn",) for p in ("/api/auth/sign-in/email", "/api/auth/sign-in/email-otp",
                                          "/api/auth/sign-in/social", "/api/auth/two-factor/verify-totp",
                                          "/api/auth/two-factor/verify-backup-code")},
    ("POST", "/api/auth/sign-up/email"): ("signUp",),
    **{("POST", p): ("emailSend",) for p in ("/api/auth/request-password-reset", "/api/auth/send-verification-email",
                                             "/api/auth/sign-in/magic-link", "/api/auth/email-otp/send-verification-otp",
                                             "/api/auth/forget-password/email-otp")},
    **{("POST", p): ("tokenVerify",) for p in ("/api/auth/reset-password", "/api/auth/email-otp/verify-email",
                                               "/api/auth/email-otp/check-verification-otp",
                                               "/api/auth/email-otp/reset-password", "/api/auth/change-password",
                                               "/api/auth/two-factor/enable", "/api/auth/two-factor/disable")},
    ("GET", "/api/auth/magic-link/verify"): ("tokenVerify",), ("GET", "/api/auth/verify-email"): ("tokenVerify",),
}


def rate_rules(method, path):
    """The rate-limit rules a request counts against (API.md §14.1)."""
    rules = RATE_RULES.get(("GET" if method == "HEAD" else method, path))
    if rules:
        return rules
    if path.startswith("/api/auth/admin/"):
        return ("authAdmin",)
    if path.startswith("/api/admin/schema/") or path == "/api/mcp":
        return ("schemaAdmin",)
    if path == "/api/analytics/collect" and method == "POST":
        return ("collect",)
    if path == "/api/health":
        return ()
    return ("api",)


def build_wsgi(app):
    """The WSGI callable serving the whole /api surface of `app`."""
    return SovriumWsgi(app)

###############################################################################
# 17. Server and CLI ##########################################################
###############################################################################

import argparse  # noqa: E402

import waitress  # noqa: E402
from waitress import wasyncore  # noqa: E402

LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|::1|localhost)$")
WILDCARD = ("0.0.0.0", "::", "")


def runtime_options(env, host=None, port=None, threads=None, log_level=None):
    """Validate the environment and options of OPERATIONS.md §3 → dict (UsageError names the variable)."""
    out = {}
    out["host"] = host if host is not None else env.get("HOST") or "127.0.0.1"
    raw_port = port if port is not None else env.get("PORT") or "3000"
    if not re.match(r"^[0-9]{1,5}$", str(raw_port)) or not 1 <= int(raw_port) <= 65535:
        raise UsageError("PORT must be an integer between 1 and 65535" if port is None
                         else "--port must be an integer between 1 and 65535")
    out["port"] = int(raw_port)
    raw_threads = threads if threads is not None else env.get("SOVRIUM_THREADS") or "8"
    if not re.match(r"^[0-9]{1,3}$", str(raw_threads)) or not 1 <= int(raw_threads) <= 256:
        raise UsageError("SOVRIUM_THREADS must be an integer between 1 and 256" if threads is None
                         else "--threads must be an integer between 1 and 256")
    out["threads"] = int(raw_threads)
    level = (log_level or env.get("LOG_LEVEL") or "info").lower()
    if level not in LOG_LEVELS:
        raise UsageError(("--log-level" if log_level else "LOG_LEVEL") + " must be one of: debug, info, warning, error")
    out["log_level"] = level
    fmt = (env.get("LOG_FORMAT") or "text").lower()
    if fmt not in ("text", "json"):
        raise UsageError("LOG_FORMAT must be one of: text, json")
    base = env.get("BASE_URL")
    if base:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", base) or base.endswith("/"):
            raise UsageError("BASE_URL must be an http(s) origin with an optional path and no trailing slash")
        out["base_url"] = base
    else:
        h = out["host"]
        shown = "localhost" if LOOPBACK.match(h) or h in WILDCARD else (f"[{h}]" if ":" in h else h)
        out["base_url"] = f"http://{shown}:{out['port']}"
    smtp = env.get("SMTP_URL")
    if smtp and not re.match(r"^smtps?://([^@/\s]+@)?[^:/\s]+(:[0-9]{1,5})?/?(\?starttls=(true|false))?$", smtp):
        raise UsageError("SMTP_URL must look like smtp://[user:pass@]host[:port][?starttls=true]")
    proxy = env.get("TRUST_PROXY")
    if proxy and parse_bool_text(proxy) is None and not re.match(r"^[1-9][0-9]{0,2}$", proxy):
        raise UsageError("TRUST_PROXY must be true, false or a number of proxies")
    for name in ("SCHEMA_EDIT_API_ENABLED",):
        if env.get(name) and parse_bool_text(env[name]) is None:
            raise UsageError(f"{name} must be a boolean")
    limits = env.get("SOVRIUM_RATE_LIMITS")
    if limits and parse_bool_text(limits) is None:
        raise UsageError("SOVRIUM_RATE_LIMITS must be on or off")
    profile = env.get("SOVRIUM_ARGON2_PROFILE")
    if profile and profile not in ARGON2_PROFILES:
        raise UsageError("SOVRIUM_ARGON2_PROFILE must be one of: owasp, rfc9106, test")
    database_path(env)
    return out


class Server:
    """waitress serving one App, with the graceful shutdown of OPERATIONS.md §5."""

    def __init__(self, wsgi, host, port, threads, max_body):
        try:
            self.server = waitress.create_server(
                wsgi, host=host, port=port, threads=threads, ident="sovrium",
                max_request_body_size=max_body + WAITRESS_BODY_BACKSTOP, clear_untrusted_proxy_headers=False)
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.stop_event = threading.Event()
        self.signals = 0

    def stop(self):
        self.stop_event.set()

    def _on_signal(self, signum, frame):
        self.signals += 1
        if self.signals > 1 and signum == signal.SIGINT:
            os._exit(130)
        self.stop_event.set()

    def run(self, app, install_signals=True):
        """Serve until a signal or stop(); returns after the shutdown sequence."""
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        loop = threading.Thread(target=self.server.run, name="waitress-loop", daemon=True)
        loop.start()
        while not self.stop_event.wait(0.2):
            pass
        self.server.trigger.pull_trigger(self._stop_accepting)
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while app.wsgi.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        abandoned = app.wsgi.inflight
        if abandoned:
            app.log("shutdown", "warning", status="abandoning", requests=abandoned)
        self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.server._map))
        loop.join(2)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=0.5 if abandoned else 5)
        return abandoned

    def _stop_accepting(self):
        self.server.accepting = False
        with contextlib.suppress(OSError):
            self.server.del_channel()
            self.server.socket.close()


def serve_app(app, host="127.0.0.1", port=3000, threads=8):
    """`App.serve`: bind, take the lease, serve until SIGINT/SIGTERM or app.close()."""
    server = Server(app.wsgi, host, port, threads, app.schema.settings["maxBodyBytes"])
    lease = None
    if not app.db.memory:
        lease = ServerLease(app.db_path)
        try:
            lease.acquire()
        except StartupError:
            server.server.close()
            raise
    app._server = server
    try:
        abandoned = server.run(app)
    finally:
        app._server = None
        if lease:
            lease.release()
    return abandoned


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _build_parser():
    p = _Parser(prog="sovrium", description="Sovrium: a configuration-driven backend over one SQLite file.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    s = sub.add_parser("start", help="serve the API for a configuration")
    s.add_argument("config")
    s.add_argument("--host")
    s.add_argument("--port")
    s.add_argument("--db")
    s.add_argument("--threads")
    s.add_argument("--log-level")
    s.add_argument("--allow-data-loss", action="store_true")
    a = sub.add_parser("admin", help="manage administrators")
    asub = a.add_subparsers(dest="admin_command", parser_class=_Parser)
    ac = asub.add_parser("create", help="create a user with role admin and a verified e-mail")
    ac.add_argument("--email", required=True)
    ac.add_argument("--password")
    ac.add_argument("--name", default="Administrator")
    ac.add_argument("--db")
    ac.add_argument("--config")
    b = sub.add_parser("backup", help="copy the database safely, even while a server runs")
    b.add_argument("dest")
    b.add_argument("--db")
    b.add_argument("--force", action="store_true")
    v = sub.add_parser("validate", help="validate a configuration file")
    v.add_argument("config")
    v.add_argument("--json", action="store_true")
    v.add_argument("--db")
    v.add_argument("--allow-data-loss", action="store_true")
    return p


def _problem_line(kind, item):
    return f"{kind}: {item['path']}: {item['message']}" if item.get("path") else f"{kind}: {item['message']}"


def _err(text):
    print(text, file=sys.stderr, flush=True)


def main(argv=None):
    """The `sovrium` command → exit code (OPERATIONS.md §2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            print(f"sovrium {__version__}")
            return 0
        if args.command is None:
            raise UsageError("missing command (start, validate, admin, backup)")
        schema_sql_text()
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "backup":
            return cmd_backup(args)
        if args.command == "admin":
            if args.admin_command != "create":
                raise UsageError("missing admin command (create)")
            return cmd_admin_create(args)
        return cmd_start(args)
    except UsageError as exc:
        _err(parser.format_usage().rstrip())
        _err(f"error: {exc}")
        return 2
    except ConfigError as exc:
        for w in exc.warnings:
            _err(_problem_line("warning", w))
        for e in exc.errors:
            _err(_problem_line("error", e))
        return 1
    except StartupError as exc:
        _err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def cmd_validate(args):
    env = os.environ
    try:
        raw = load_config(args.config)
    except ConfigError as exc:
        return _report_validation(args, None, exc.errors, exc.warnings, False)
    schema, errors, warnings = compile_config(raw, env)
    data_loss = False
    if args.db and not errors:
        if args.db != ":memory:" and not os.path.exists(args.db):
            raise StartupError(f"database not found: {args.db}")
        db = Database(args.db, utcnow, create=False)
        try:
            with db.read() as conn:
                registry = db.registry(conn)
                active = db.active_version(conn)
                schema, errors, warnings = compile_config(raw, env, registry)
                if schema is not None:
                    old = stored_schema(active, registry) if active else None
                    plan = plan_config(conn, old, schema, registry)
                    errors, warnings = errors + plan.errors, warnings + plan.warnings
                    data_loss = bool(plan.data_loss)
        finally:
            db.close()
    return _report_validation(args, schema, errors, warnings, data_loss and not args.allow_data_loss)


def cmd_admin_create(args):
    """`sovrium admin create`: a user with role admin and a verified e-mail (OPERATIONS.md §2.2)."""
    env = dict(os.environ)
    db_path = database_path(env, args.db)
    auth = None
    raw = None
    if args.config:
        raw = load_config(args.config)
        checked, errors, warnings = compile_config(raw, env)
        if errors:
            raise ConfigError(errors, warnings)
        auth = checked.auth
    email_addr = args.email.strip().lower()
    if len(email_addr) > 254 or not EMAIL_RE.fullmatch(email_addr):
        raise UsageError("--email must be a valid e-mail address")
    password = args.password
    if password is None:
        if sys.stdin.isatty():
            import getpass
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat the password: ") != password:
                raise UsageError("the passwords do not match")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    lo, hi = password_limits(auth)
    if not lo <= len(password) <= hi:
        raise UsageError(f"the password must be between {lo} and {hi} characters")
    if raw is None and (db_path == ":memory:" or not os.path.exists(db_path)):
        raise StartupError(f"database not found: {db_path}")
    db = Database(db_path, utcnow, create=raw is not None)
    try:
        if raw is not None:
            db.close()
            app = App(raw, db_path, env={**env, "AUTH_ADMIN_EMAIL": "", "AUTH_ADMIN_PASSWORD": ""})
            db = app.db
        passwords = Passwords(auth, env)
        hashed = passwords.hash(password)
        now = format_ts(utcnow())
        with db.write(now=now) as txn:
            if txn.execute("SELECT 1 FROM users WHERE email = ?", (email_addr,)).fetchall():
                raise StartupError("a user with this email already exists", 1)
            uid = new_id()
            txn.execute(f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, 1, NULL, ?, ?, 'admin', 0, NULL, NULL, 0)",
                        (uid, args.name, email_addr, now, now))
            txn.execute("INSERT INTO accounts (id, user_id, provider_id, account_id, password, created_at, updated_at) "
                        "VALUES (?, ?, 'credential', ?, ?, ?, ?)", (new_id(), uid, uid, hashed, now, now))
    finally:
        if raw is not None:
            app.close()
        else:
            db.close()
    print(uid)
    return 0


def cmd_backup(args):
    """`sovrium backup DEST`: online backup API, quick_check, single-file copy (OPERATIONS.md §8)."""
    src = database_path(os.environ, args.db)
    if src == ":memory:" or not os.path.exists(src):
        raise StartupError(f"database not found: {src}")
    dest = os.path.abspath(args.dest)
    if os.path.exists(dest) and not args.force:
        raise StartupError(f"destination exists: {dest} (use --force to replace it)", 1)
    directory = os.path.dirname(dest)
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise StartupError(f"cannot write {dest}: directory is missing or not writable")
    Database(src, utcnow, create=False).close()   # refuses files that are not Sovrium databases
    tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        source = apsw.Connection(src, flags=apsw.SQLITE_OPEN_READONLY)
        source.setbusytimeout(5000)
        target = apsw.Connection(tmp)
        with target.backup("main", source, "main") as backup:
            while not backup.done:
                backup.step(1024)
        ok = target.execute("PRAGMA quick_check").fetchall()[0][0]
        if ok != "ok":
            raise StartupError(f"the copy failed its integrity check: {ok}")
        target.execute("PRAGMA journal_mode = DELETE")
        version = target.execute("PRAGMA user_version").fetchall()[0][0]
        target.close()
        source.close()
        os.replace(tmp, dest)
    except apsw.Error as exc:
        raise StartupError(f"backup failed: {exc}") from None
    finally:
        for path in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            with contextlib.suppress(OSError):
                os.remove(path)
    size = os.path.getsize(dest) / 1e6
    _err(f"backup written: {args.dest} ({size:.1f} MB, schema version {version})")
    return 0


def _report_validation(args, schema, errors, warnings, data_loss_refused):
    valid = not errors and not data_loss_refused
    if args.json:
        print(json.dumps({"valid": valid, "errors": errors, "warnings": warnings}, ensure_ascii=False, indent=2))
    else:
        for w in warnings:
            _err(_problem_line("warning", w))
        for e in errors:
            _err(_problem_line("error", e))
        if data_loss_refused:
            _err(f"error: {DATA_LOSS_MESSAGE}")
        if valid:
            _err(f"ok: {schema.name} — {len(schema.tables)} tables")
    return 0 if valid else 1


def _setup_logging(level):
    # waitress warns on every queued task under load; the request log already tells the story.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    logger = logging.getLogger("sovrium")
    logger.handlers[:] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(LOG_LEVELS[level])
    logger.propagate = False


def cmd_start(args):
    env = dict(os.environ)
    opts = runtime_options(env, args.host, args.port, args.threads, args.log_level)
    db_path = database_path(env, args.db)
    config_path = os.path.abspath(args.config)
    raw = load_config(config_path)
    checked, errors, warnings = compile_config(raw, env)
    if errors:
        raise ConfigError(errors, warnings)
    if env.get("AUTH_ADMIN_EMAIL") and env.get("AUTH_ADMIN_PASSWORD"):
        if checked.auth is None:
            _err("warning: AUTH_ADMIN_EMAIL and AUTH_ADMIN_PASSWORD are set but auth is not configured; ignored")
        else:
            check_admin_variables(env, checked.auth)
    holder = {}
    server = Server(lambda environ, start_response: holder["app"].wsgi(environ, start_response),
                    opts["host"], opts["port"], opts["threads"], checked.settings["maxBodyBytes"])
    lease = None
    try:
        if db_path != ":memory:":
            lease = ServerLease(db_path)
            lease.acquire()
        app = App(config_path, db_path, env=env, allow_data_loss=args.allow_data_loss, _server_lease=lease)
    except BaseException:
        server.server.close()
        if lease:
            lease.release()
        raise
    holder["app"] = app
    try:
        _start_banner(app, opts, config_path, db_path)
        _setup_logging(opts["log_level"])
        app.log("startup", version=__version__, app=app.schema.name, schemaVersion=app.schema_version,
                pid=os.getpid(), **({"admin": app.admin_status} if app.admin_status else {}))
        if app.imported_version:
            app.log("config-imported", version=app.imported_version, source="file")
        app._server = server
        abandoned = server.run(app)
        if not abandoned:
            app.close(checkpoint=True)
        app.log("shutdown", status="complete")
    finally:
        if lease:
            lease.release()
    return 0


def _start_banner(app, opts, config_path, db_path):
    schema = app.schema
    host, port = opts["host"], opts["port"]
    if schema.auth is None and not LOOPBACK.match(host):
        _err(f"warning: AUTHENTICATION IS DISABLED AND THE SERVER LISTENS ON {host}:{port}.")
        _err("warning: ANYONE WHO CAN REACH THIS ADDRESS CAN READ, CHANGE AND DELETE ALL DATA.")
        _err("warning: CONFIGURE 'auth' OR BIND TO 127.0.0.1.")
    for w in app.warnings:
        _err(_problem_line("warning", w))
    if schema.auth and not app.env.get("SMTP_URL"):
        _err("warning: SMTP_URL is not set: e-mails are stored in the outbox and their links logged")
    version = f" {schema.version}" if schema.version else ""
    if schema.auth:
        names = {"emailAndPassword": "email+password", "magicLink": "magic link", "emailOtp": "email OTP",
                 "oauth": "social sign-in"}
        parts = [names[s["type"]] for s in schema.auth["strategies"]]
        if schema.auth["twoFactor"]:
            parts.append("two-factor")
        auth = ", ".join(parts)
    else:
        auth = "disabled (no-auth mode)"
    shown_host = f"[{host}]" if ":" in host else host
    lines = [f"sovrium {__version__}",
             f"app:       {schema.name}{version} (schema version {app.schema_version}, in-sync)",
             f"config:    {config_path}",
             f"database:  {os.path.abspath(db_path) if db_path != ':memory:' else ':memory:'}",
             f"auth:      {auth}",
             f"analytics: {'enabled' if schema.analytics['enabled'] else 'disabled'}",
             f"listening: http://{shown_host}:{port} (base URL {opts['base_url']})"]
    for line in lines:
        _err(line)


if __name__ == "__main__":
    sys.exit(main())
