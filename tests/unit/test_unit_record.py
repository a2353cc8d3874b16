"""fleetd.unit's Record: what the model's classes had from @dataclass(frozen=True)."""

from __future__ import annotations

import copy
import pickle

import pytest

from fleetd.unit import UnitFile, UnitName, XFleet
from fleetd.unit._record import FrozenInstanceError


def test_fields_in_order_with_defaults_positional_and_by_name() -> None:
    assert XFleet._fields[:3] == ("machine_id", "machine_of", "metadata")
    x = XFleet("m1", conflicts=("a*",))
    assert (x.machine_id, x.conflicts, x.move_before_stop, x.cpu) == ("m1", ("a*",), True, 0)
    assert UnitName("a@1.service", "a", "1", "service").is_instance


def test_equality_hash_and_repr_follow_the_fields() -> None:
    a, b = XFleet(machine_id="m1"), XFleet(machine_id="m1")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != XFleet(machine_id="m2") and a != "m1"
    assert UnitFile((("Service", "ExecStart", "x"),)) != XFleet()
    assert repr(UnitFile(())) == "UnitFile(options=())"


def test_assignment_and_deletion_are_refused() -> None:
    x = XFleet()
    with pytest.raises(FrozenInstanceError):
        x.machine_id = "m"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del x.cpu  # type: ignore[misc]


@pytest.mark.parametrize(("args", "kwargs", "word"), [
    (("a", "b", "c", "d", "e"), {}, "takes 5 positional arguments but 6"),
    (("a",), {"full": "a"}, "multiple values for argument 'full'"),
    (("a", "b", "c", "d"), {"nope": 1}, "unexpected keyword argument 'nope'"),
    (("a", "b"), {}, "missing 2 required positional arguments: 'instance' and 'suffix'"),
])
def test_bad_construction_is_a_type_error(args: tuple[str, ...], kwargs: dict[str, object],
                                          word: str) -> None:
    with pytest.raises(TypeError, match=word):
        UnitName(*args, **kwargs)  # type: ignore[arg-type]


def test_copies_and_pickles_are_equal_values() -> None:
    x = XFleet(machine_of=("db.service",), metadata=(("region", ("us",)),))
    assert copy.deepcopy(x) == x and copy.copy(x) == x
    assert pickle.loads(pickle.dumps(x)) == x
