"""Fencing: the durations the never-two-copies argument rests on, and its pure decisions.

The argument, in one place (every duration named here is used by the code, nowhere else).
`T` is the lease TTL (`agent_ttl`), `b` the stop bound `FENCE_STOP_BOUND_S`, `L` the timer
latency `FENCE_TIMER_LATENCY_S`, `e` the clock-rate error `CLOCK_RATE_ERROR`:

- A machine renews its lease every `renew_interval_s(T)` (T/10). Counting from the *send* of
  the last successful renewal `S` (etcd restarts the TTL when it handles it, later), etcd
  cannot expire the lease before `S + T` by etcd's clock, i.e. before `S + T(1 - e)` in real
  time (etcd's clock may run fast by `e`).
- At every renewal fleetd re-arms a dead-man switch held by systemd (a transient timer, see
  `fleetd.systemd`) firing at `S + fence_point_s(T)`, with `fence_point_s(T) = T - b - L - eT`:
  early enough that the fence is *complete* before the earliest expiry. The timer starts
  `fleet-fence.target`, which every non-global fleet unit `Conflicts=` and is ordered `Before=`:
  one transaction stops them all, and the target is active only once they are inactive. The
  timer lives in systemd, so it fires whether fleetd is running, killed, frozen, hung or
  restarting without etcd.
- Each non-global unit's stop is capped (`stop_timeout_s`, a drop-in `TimeoutStopSec=`) so that
  the whole stop, every phase included, takes at most `b`, or the unit's own bound `b_u`
  (`unit_stop_bound_s`) when its [Service] section states a finite `TimeoutStopSec=` or
  `TimeoutSec=`: such a unit keeps that time for each stop phase (a database flushing on
  SIGTERM), up to `MAX_UNIT_STOP_BOUND_S` for the whole stop.
- So every non-global unit is inactive by `S + (T - b - L - eT)(1 + e) + L + b(1 + e)` (this
  machine's clock may run slow by `e`), which works out to `S + T - eL - e^2 T`: less than
  `eT` after the earliest expiry `S + T(1 - e)`.
- The engine, having seen a machine's key vanish (at or after the expiry), waits
  `engine_grace_s(T)` = `2eT` (a clock-rate margin, 10 ms at T = 5 s; the engine's clock may
  run slow too) before starting that machine's units elsewhere. A unit with its own bound
  `b_u > b` is inactive up to `(b_u - b)(1 + e)` later, so the engine holds that unit (only it)
  for `unit_grace_s(T, b_u)` = `2eT + (b_u - b)(1 + 3e)`: the machine's other units move at
  the short grace, this one after its longer stop may have ended. A unit that asks for a long
  stop fails over that much later: its own choice, made in its own file.
- The argument needs `fence_point_s(T)` to hold several renewal attempts (else an ordinary
  etcd hiccup fences): `check_ttl` refuses a TTL leaving fewer than `MIN_RENEWALS_BEFORE_FENCE`
  renewal intervals before the fence (below 4 s with the default bound).

A restart (`systemctl restart fleetd`) must not fence the units the next fleetd adopts, but at
T = 4 s the fence point (1.5 s) is shorter than fleetd's restart. So the exiting fleetd hands
over: it takes a lease of `HANDOVER_TTL_S`, moves the machine key and unit states to it and
arms the timer for that lease's fence point (the same argument, another T), then exits; the
new fleetd's own lease and timer replace both. The engine's grace covers the longer lease.
A fleetd that dies (SIGKILL, OOM) cannot hand over; fleetd.service's ExecStopPost= does it
for it (`fleetd.after_exit`), in the same order: registration onto the new lease first, then
its timer, then the old timers stopped. Too late or failed, the old timer fences as before.

The price of a short TTL: a machine tolerates an etcd outage (or leader election, or network
blip) of up to about `fence_point_s(T) - renew_interval_s(T)` without fencing (the README's
"Failover timing" table has the measured figures), and renews 10/T times a second.

The timer's clocks. systemd runs a monotonic timer (`OnActiveSec=`) on CLOCK_MONOTONIC (only
`WakeSystem=` switches it to CLOCK_BOOTTIME_ALARM, which needs CAP_WAKE_ALARM and wakes the
machine): it stops counting while the machine is suspended or its VM frozen, exactly when etcd
goes on expiring the lease, so alone it would fire late by the suspend's length. A realtime
`OnCalendar=` deadline keeps counting through suspend (systemd fires it on resume) but moves
with the wall clock: a backward step would delay it. The timer carries both, for the same
instant; it fires at whichever comes first. A forward wall-clock step only fences early
(liveness, not safety); it fires late only if the machine is suspended *and* its wall clock
stepped back, both.

Worst case, lease expiry -> replacement may start: `engine_grace_s(T)` plus one engine pass
and the new machine's StartUnit. Power cut -> replacement active: about `T - renew_interval/2`
(the lease's remaining life) + etcd's expiry check (every 0.5 s) + that.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Longest a fenced (or purged) non-global unit may take to reach inactive, all stop phases
#: (ExecStop=, SIGTERM, SIGKILL, ExecStopPost=) included. A plain service gets
#: TimeoutStopSec=1s: one second for SIGTERM, one for SIGKILL.
FENCE_STOP_BOUND_S = 2.0
#: systemd's lateness in firing the timer and starting the target's transaction (the timer is
#: armed with an accuracy of `FENCE_TIMER_ACCURACY_S`).
FENCE_TIMER_LATENCY_S = 0.5
FENCE_TIMER_ACCURACY_S = 0.01
#: Longest whole stop a unit may claim with its own TimeoutStopSec=/TimeoutSec=
#: (`unit_stop_bound_s`); a longer claim is capped to it (the unit then fails over 5 min
#: after its machine's lease expired, at the latest).
MAX_UNIT_STOP_BOUND_S = 300.0
#: Largest rate difference assumed between this machine's clock and etcd's leader's (1000 ppm,
#: twice NTP's bound for a disciplined clock; an undisciplined quartz drifts ~50 ppm).
CLOCK_RATE_ERROR = 1e-3
#: Share of the TTL between renewals.
RENEW_FRACTION = 0.1
#: Renewal intervals that must fit between a renewal and the fence (`check_ttl`).
MIN_RENEWALS_BEFORE_FENCE = 3
#: Shortest wait for one renewal's answer (on a dead network it hangs until then).
MIN_RENEW_TIMEOUT_S = 0.25
#: One quick attempt at revoking a lease we gave up (it may be unreachable anyway).
REVOKE_TIMEOUT_S = 1.0
#: TTL of the lease a fleetd exiting for a restart moves the machine to (`hand_over`): the
#: next fleetd then has `fence_point_s(HANDOVER_TTL_S)` to take over before the dead-man
#: timer stops the units it is to adopt; at a short `agent_ttl` the fence point alone is
#: shorter than fleetd's own restart.
HANDOVER_TTL_S = 10
#: How long the exiting fleetd tries to hand over (etcd unreachable: the units are fenced at
#: the old lease's fence point, as after a crash, and started again by the next fleetd).
HANDOVER_TIMEOUT_S = 1.0

#: The unit every non-global fleet unit conflicts with; starting it stops them all.
FENCE_TARGET = "fleet-fence.target"
#: The transient timers (one per arming generation) trigger instances of this template, which
#: requires the target and runs after it.
FENCE_SERVICE_TEMPLATE = "fleet-fence@.service"
FENCE_TIMER_PREFIX = "fleet-fence@"
#: Name of the drop-in fleet writes into a non-global unit's `NAME.d/`.
FENCE_DROP_IN = "50-fleet-fence.conf"


def renew_interval_s(ttl_s: float) -> float:
    return ttl_s * RENEW_FRACTION


def renew_timeout_s(ttl_s: float) -> float:
    """How long one renewal may take before it counts as failed (and is retried)."""
    return max(MIN_RENEW_TIMEOUT_S, renew_interval_s(ttl_s))


def fence_point_s(ttl_s: float) -> float:
    """Seconds after the send of the last successful renewal at which the fence fires: early
    enough that the stop bound and the timer's latency end before etcd may expire the lease."""
    return ttl_s - FENCE_STOP_BOUND_S - FENCE_TIMER_LATENCY_S - CLOCK_RATE_ERROR * ttl_s


def fence_margin_s(ttl_s: float) -> float:
    """How long before the earliest possible expiry the fence fires (what the stop may use)."""
    return ttl_s - fence_point_s(ttl_s)


def fence_delay_s(ttl_s: float, since_renewal_sent_s: float) -> float:
    """Seconds from now to the fence, `since_renewal_sent_s` after the last renewal was sent
    (0 when the fence is already due)."""
    return max(0.0, fence_point_s(ttl_s) - since_renewal_sent_s)


def engine_grace_s(ttl_s: float) -> float:
    """How long the engine waits, after it sees a machine's key vanish, before it starts that
    machine's units elsewhere: the fence is complete by then (see the module doc). A machine's
    lease is either `ttl_s` long or a restart's `HANDOVER_TTL_S`."""
    return 2 * CLOCK_RATE_ERROR * max(ttl_s, HANDOVER_TTL_S)


def unit_grace_s(ttl_s: float, stop_bound_s: float) -> float:
    """How long the engine holds one unit of a machine whose key vanished before it starts it
    elsewhere: the machine's grace, plus the time the unit's own longer stop bound
    (`unit_stop_bound_s`) may take beyond the default one, with the clock-rate margin."""
    extra = max(0.0, stop_bound_s - FENCE_STOP_BOUND_S)
    return engine_grace_s(ttl_s) + extra * (1 + 3 * CLOCK_RATE_ERROR)


def min_ttl_s() -> int:
    """The shortest whole-second TTL `check_ttl` accepts."""
    ttl = 1
    while ttl_problem(ttl) is not None:
        ttl += 1
    return ttl


def ttl_problem(ttl_s: float) -> str | None:
    """Why a TTL cannot carry the argument (None if it can): the fence must leave room for
    `MIN_RENEWALS_BEFORE_FENCE` renewal intervals after a renewal."""
    need = MIN_RENEWALS_BEFORE_FENCE * renew_interval_s(ttl_s)
    point = fence_point_s(ttl_s)
    if point < need:
        return (f"leaves {point:.2f}s between a renewal and the fence (ttl - stop bound "
                f"{FENCE_STOP_BOUND_S:g}s - timer latency {FENCE_TIMER_LATENCY_S:g}s - clock "
                f"error), less than {MIN_RENEWALS_BEFORE_FENCE} renewal intervals "
                f"({need:.2f}s): an etcd hiccup would fence every unit")
    return None


# --- the stop-time cap ---------------------------------------------------------------------

_SPAN_UNITS_S = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
    "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0,
    "days": 86400.0,
}
_SPAN_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)")


def parse_timespan_s(value: str) -> float | None:
    """systemd's time span ("90", "1min 30s", "500ms", "infinity") in seconds; None when it is
    not one (infinity, 0 meaning "no timeout", or unparseable: all treated as unbounded)."""
    text = value.strip().lower()
    if not text or text == "infinity":
        return None
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _SPAN_RE.match(text, pos)
        if m is None or m.end() == pos or m.group(2) not in _SPAN_UNITS_S:
            return None
        total += float(m.group(1)) * _SPAN_UNITS_S[m.group(2)]
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    return total if total > 0 else None


@dataclass(frozen=True)
class StopShape:
    """What bounds a service's stop: how many ExecStop=/ExecStopPost= commands it runs (each
    gets a full TimeoutStopSec=), whether it has ExecStopPost= at all, and the timeout the
    unit asks for (None: default/unbounded)."""

    stop_commands: int = 0
    timeout_s: float | None = None
    has_stop_post: bool = False

    @property
    def phases(self) -> int:
        """Stop phases that may each use one full TimeoutStopSec=: the stop commands, SIGTERM
        and SIGKILL, and after a stop-post command that timed out systemd's final SIGTERM and
        final SIGKILL (the command may ignore SIGTERM for a whole timeout)."""
        return self.stop_commands + 2 + (2 if self.has_stop_post else 0)


def stop_shape(options: tuple[tuple[str, str, str], ...]) -> StopShape:
    """Read the stop-relevant [Service] options of a parsed unit file (last setting wins, an
    empty ExecStop= resets the list, as systemd does)."""
    stops = 0
    posts = 0
    timeout: float | None = None
    for section, name, value in options:
        if section != "Service":
            continue
        if name == "ExecStop":
            stops = stops + 1 if value.strip() else 0
        elif name == "ExecStopPost":
            posts = posts + 1 if value.strip() else 0
        elif name in ("TimeoutStopSec", "TimeoutSec"):
            timeout = parse_timespan_s(value)
    return StopShape(stops + posts, timeout, posts > 0)


def unit_stop_bound_s(shape: StopShape) -> float:
    """How long this unit's whole stop may take (fenced, purged or stopped): the default
    `FENCE_STOP_BOUND_S`, or, for a unit stating a finite TimeoutStopSec=/TimeoutSec=, that
    timeout for each phase (`StopShape.phases`), at most
    `MAX_UNIT_STOP_BOUND_S`. 0 and infinity state no bound: the default applies."""
    if shape.timeout_s is None:
        return FENCE_STOP_BOUND_S
    asked = shape.timeout_s * shape.phases
    return min(MAX_UNIT_STOP_BOUND_S, max(FENCE_STOP_BOUND_S, asked))


def stop_bound_of(options: tuple[tuple[str, str, str], ...] | None) -> float:
    """`unit_stop_bound_s` of a parsed unit file (None, unparseable: the default bound)."""
    return unit_stop_bound_s(stop_shape(options or ()))


def stop_timeout_s(shape: StopShape, bound_s: float | None = None) -> float:
    """The TimeoutStopSec= that keeps the whole stop within `bound_s` (by default the unit's
    own, `unit_stop_bound_s`): each phase (`StopShape.phases`) may use one full timeout. A
    smaller value the unit asks for is kept."""
    if bound_s is None:
        bound_s = unit_stop_bound_s(shape)
    cap = bound_s / shape.phases
    if shape.timeout_s is not None:
        cap = min(cap, shape.timeout_s)
    return math.floor(cap * 1000 + 1e-9) / 1000  # down to the millisecond: never past the bound


def fence_drop_in(name: str, options: tuple[tuple[str, str, str], ...] | None,
                  is_global: bool) -> str | None:
    """The drop-in fleet writes for unit `name` (None for a global unit: it keeps running when
    the machine is fenced, as in fleet). `options` is the parsed file (None if unparseable: the
    cap then assumes the worst a file can do within the bound, no stop commands counted)."""
    if is_global:
        return None
    lines = ["# Written by fleetd: fencing stops this unit (see fleetd/fencing.py).",
             "[Unit]", f"Conflicts={FENCE_TARGET}", f"Before={FENCE_TARGET}"]
    if name.endswith(".service"):
        shape = stop_shape(options or ())
        lines += ["", "[Service]", f"TimeoutStopSec={stop_timeout_s(shape)}s"]
    return "\n".join(lines) + "\n"


# --- stop or restart -----------------------------------------------------------------------

def keep_units_on_exit(job_type: str | None, restart_signal: bool) -> bool:
    """On a termination request: True to exit leaving units running (an upgrade: systemd has a
    restart job pending for fleetd, or fleetd got the explicit restart signal); False to stop
    and unload them and leave the cluster (`systemctl stop fleetd`, a plain SIGTERM)."""
    if restart_signal:
        return True
    return job_type in ("restart", "try-restart")
