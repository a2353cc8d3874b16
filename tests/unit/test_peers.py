"""The hold-or-fence decision of a machine that cannot renew its lease (fleetd/peers.py)."""

from __future__ import annotations

import pytest

from fleetd.peers import etcd_down_for_everyone

INF = float("inf")


@pytest.mark.parametrize(("known", "outage_s", "peers", "hold"), [
    pytest.param(3, 5.0, [20.0, 30.0], True, id="etcd-down-for-all-three"),
    pytest.param(3, 5.0, [20.0, None], True, id="majority-answers-all-down"),
    pytest.param(3, 5.0, [None, None], False, id="peers-unreachable-partition"),
    pytest.param(3, 5.0, [1.0, 30.0], False, id="a-peer-reaches-etcd"),
    pytest.param(3, 5.0, [4.9, 30.0], False, id="peer-heard-etcd-after-we-lost-it"),
    pytest.param(5, 5.0, [20.0, None, None, None], False, id="two-of-five-is-no-majority"),
    pytest.param(5, 5.0, [20.0, 9.0, None, None], True, id="three-of-five"),
    pytest.param(4, 5.0, [20.0, None, None], False, id="half-is-no-majority"),
    pytest.param(1, 5.0, [], True, id="single-machine-holds"),
    pytest.param(3, 5.0, [INF, INF], True, id="peers-never-reached-etcd"),
    pytest.param(2, 5.0, [None], False, id="two-machines-peer-silent"),
])
def test_hold_only_when_a_majority_agrees_etcd_is_down(known: int, outage_s: float,
                                                     peers: list[float | None],
                                                     hold: bool) -> None:
    assert etcd_down_for_everyone(known, outage_s, peers) is hold
