"""Resource quantities and a unit's demand (pure, no I/O).

Units are integers so sums are exact: CPU in milli-CPUs (1000 = one CPU), memory in bytes.

A unit's demand, in order of precedence:

* ``[X-Fleet] CPUReservation=`` / ``MemoryReservation=`` (explicit wins);
* else ``[Service] CPUQuota=`` (``200%`` = 2 CPUs) and ``[Service] MemoryMax=``, or
  ``MemoryHigh=`` when ``MemoryMax=`` is not set (the hard limit is what the unit may take);
* else nothing: a unit without them reserves nothing.

Memory takes systemd's byte suffixes (K, M, G, T, P, E, base 1024; a plain number is bytes).
``infinity`` (and an empty value, systemd's reset) reserve nothing; so does a percentage in
``[Service]`` (a share of whichever host runs it, not a quantity the engine can add up). CPU
values are a percentage (``150%``) or, in ``CPUReservation=`` only, a number of CPUs (``1.5``).
Bad values raise `ValueError` with a message naming the problem (the unit parser wraps it in
`InvalidXFleetOptions`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "CPU_RESERVATION",
    "MEMORY_RESERVATION",
    "demand_of",
    "format_cpu",
    "format_memory",
    "parse_cpu",
    "parse_memory",
]

CPU_RESERVATION = "CPUReservation"
MEMORY_RESERVATION = "MemoryReservation"

_SERVICE = "Service"
_XFLEET = "X-Fleet"

_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]?)(?:i?B)?", re.IGNORECASE)
_MULTIPLIER = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50,
               "E": 1 << 60}
_CPU_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MAX_MEMORY = 1 << 62
_MAX_CPU_MILLI = 1 << 40


def parse_memory(raw: str, *, percent_ok: bool = False) -> int:
    """Bytes from '512M', '1.5G', '1048576'; 0 for 'infinity' or '' (no reservation), and for
    a percentage when ``percent_ok`` (a systemd share of the host, not a quantity)."""
    value = raw.strip()
    if not value or value.lower() == "infinity":
        return 0
    if value.endswith("%"):
        if percent_ok:
            return 0
        raise ValueError(f"memory {value!r} is a percentage: give a size such as 512M or 2G")
    match = _MEMORY.fullmatch(value)
    if match is None:
        raise ValueError(f"memory {value!r} is not a size (a number with K, M, G or T, "
                         "e.g. 512M)")
    amount = float(match.group(1)) * _MULTIPLIER[match.group(2).upper()]
    if amount > _MAX_MEMORY:
        raise ValueError(f"memory {value!r} is too large")
    return int(amount)


def parse_cpu(raw: str, *, number_ok: bool = True) -> int:
    """Milli-CPUs from '200%' (2 CPUs) or, when ``number_ok``, '1.5' (CPUs); 0 for ''."""
    value = raw.strip()
    if not value:
        return 0
    if value.endswith("%"):
        digits = value[:-1].strip()
        if not _CPU_NUMBER.fullmatch(digits):
            raise ValueError(f"CPU {value!r} is not a percentage (e.g. 150%)")
        milli = round(float(digits) * 10)
    elif number_ok and _CPU_NUMBER.fullmatch(value):
        milli = round(float(value) * 1000)
    else:
        want = "a number of CPUs or a percentage (e.g. 1.5 or 150%)" if number_ok \
            else "a percentage (e.g. 150%)"
        raise ValueError(f"CPU {value!r} is not {want}")
    if milli > _MAX_CPU_MILLI:
        raise ValueError(f"CPU {value!r} is too large")
    return milli


def _last(options: Iterable[tuple[str, str, str]], section: str, name: str) -> str | None:
    """The value of the last ``name`` in ``section`` (systemd: a later assignment wins)."""
    found: str | None = None
    for sec, option, value in options:
        if sec == section and option == name:
            found = value
    return found


def demand_of(options: Iterable[tuple[str, str, str]]) -> tuple[int, int]:
    """(milli-CPUs, bytes) a unit file's options reserve; ValueError naming the option."""
    opts = tuple(options)

    def read(section: str, name: str, parse: object) -> int | None:
        raw = _last(opts, section, name)
        if raw is None:
            return None
        try:
            return parse(raw)  # type: ignore[operator, no-any-return]
        except ValueError as e:
            raise ValueError(f"[{section}] {name}: {e}") from None

    cpu = read(_XFLEET, CPU_RESERVATION, parse_cpu)
    if cpu is None:
        cpu = read(_SERVICE, "CPUQuota", lambda r: parse_cpu(r, number_ok=False)) or 0
    memory = read(_XFLEET, MEMORY_RESERVATION, parse_memory)
    if memory is None:
        memory = read(_SERVICE, "MemoryMax", lambda r: parse_memory(r, percent_ok=True))
        if memory is None:
            memory = read(_SERVICE, "MemoryHigh", lambda r: parse_memory(r, percent_ok=True))
    return cpu, memory or 0


def format_memory(amount: int) -> str:
    """'512M', '1.5G', '300K', '12' (bytes): the largest suffix, up to one decimal."""
    for suffix in ("E", "P", "T", "G", "M", "K"):
        unit = _MULTIPLIER[suffix]
        if amount >= unit:
            value = amount / unit
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return str(amount)


def format_cpu(milli: int) -> str:
    """'2', '0.5', '1.25' CPUs from milli-CPUs."""
    return f"{milli / 1000:.3f}".rstrip("0").rstrip(".")
