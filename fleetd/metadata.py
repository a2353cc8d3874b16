"""Machine metadata rules, the same for `metadata` in fleet.conf and for the APIs that set it.

Metadata travels in every machine record and every scheduling pass reads it, so its size is
bounded: at most MAX_METADATA_KEYS keys per machine (configured and API-set together), keys of
1..MAX_METADATA_KEY_BYTES characters from `A-Z a-z 0-9 _ . -` (what fleet's HTTP API accepts in
a metadata path), values of 1..MAX_METADATA_VALUE_BYTES bytes of printable text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 256
_KEY = re.compile(r"[A-Za-z0-9_.-]+")


class MetadataError(ValueError):
    """Metadata breaks a rule above; the message names the key and the problem."""


def check_key(key: str) -> None:
    if not key:
        raise MetadataError("metadata key is empty")
    if len(key) > MAX_METADATA_KEY_BYTES:
        raise MetadataError(f"metadata key {key[:32]!r}... is {len(key)} characters long "
                            f"(at most {MAX_METADATA_KEY_BYTES})")
    if not _KEY.fullmatch(key):
        raise MetadataError(f"metadata key {key!r} has characters other than A-Z a-z 0-9 _ . -")


def check_value(key: str, value: str) -> None:
    if not value:
        raise MetadataError(f"metadata {key}: empty value")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_VALUE_BYTES:
        raise MetadataError(f"metadata {key}: value is {size} bytes long "
                            f"(at most {MAX_METADATA_VALUE_BYTES})")
    if not value.isprintable():
        raise MetadataError(f"metadata {key}: value {value!r} has non-printable characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"metadata {key}: value is not valid UTF-8") from None


def check_count(count: int, machine_id: str = "") -> None:
    if count > MAX_METADATA_KEYS:
        where = f" of machine {machine_id}" if machine_id else ""
        raise MetadataError(f"metadata{where} would have {count} keys (at most "
                            f"{MAX_METADATA_KEYS})")


def check_metadata(metadata: Mapping[str, str], machine_id: str = "") -> None:
    """Raise MetadataError for the first rule `metadata` breaks."""
    check_count(len(metadata), machine_id)
    for key, value in metadata.items():
        check_key(key)
        check_value(key, value)
