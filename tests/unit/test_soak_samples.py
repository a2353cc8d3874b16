"""The soak's sampler analysis: which sample sequences prove a unit ran on two machines."""

from __future__ import annotations

import pytest

from fleetd.lab.soak import sample_overlaps

U = "soak-0.service"


@pytest.mark.parametrize(("a", "b", "overlap"), [
    # m1 runs it at 1.0 and 1.2; m2 seen running it at 1.1: both at once
    ([(1.0, {U}), (1.2, {U})], [(1.1, {U})], True),
    # a clean move: m1 last saw it at 1.0, then not at 1.2; m2 from 1.3 on
    ([(1.0, {U}), (1.2, set())], [(1.1, set()), (1.3, {U})], False),
    # the hand-over happens between samples of both: nothing proves an overlap
    ([(1.0, {U}), (1.2, set())], [(1.1, {U})], False),
    # other units never count
    ([(1.0, {"soak-1.service"}), (1.2, {"soak-1.service"})], [(1.1, {U})], False),
])
def test_overlap_needs_a_sighting_between_two_consecutive_sightings(
        a: list[tuple[float, set[str]]], b: list[tuple[float, set[str]]],
        overlap: bool) -> None:
    found = sample_overlaps({"m1": a, "m2": b})
    assert bool(found) is overlap, found
    if overlap:
        assert U in found[0] and "m1" in found[0] and "m2" in found[0]
