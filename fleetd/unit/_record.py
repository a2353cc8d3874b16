"""`Record`: the immutable value classes of the unit model, without the dataclasses module.

What `@dataclass(frozen=True)` gave these classes, written out: fields are the class's
annotations in order (a class attribute is the field's default), an `__init__` taking them
positionally or by name, `==`, `hash` and `repr` over the fields, and no assignment after
construction. Why: `import dataclasses` imports `inspect` (and `ast`, `dis`, `tokenize`), 11 ms
of every `fleetctl start`, which needs the unit model to check files before it submits them.
Type checkers see a dataclass (`dataclass_transform`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's import is a cost of every fleetctl run too
if TYPE_CHECKING:
    from typing import Any, dataclass_transform
else:
    def dataclass_transform(**_kwargs: object) -> object:
        return lambda cls: cls

class FrozenInstanceError(AttributeError):
    """An assignment to a field of a record."""


@dataclass_transform(frozen_default=True)
class Record:
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 - inspect is the import avoided
        fields = tuple(f for f in (*cls._fields, *own) if not f.startswith("_"))
        defaults = {**cls._defaults, **{f: cls.__dict__[f] for f in own if f in cls.__dict__}}
        if not all(f.isidentifier() for f in fields):
            raise TypeError(f"{cls.__name__}: field names must be identifiers: {fields}")
        cls._fields, cls._defaults = fields, defaults
        # Code written for the fields, as dataclasses does: a generic loop was 2-4 times
        # slower to construct, compare and hash, and the engine makes many of these.
        params = ", ".join(f"{f}=_default_{f}" if f in defaults else f for f in fields)
        sets = "".join(f"    _set(self, {f!r}, {f})\n" for f in fields) or "    pass\n"
        mine = "(" + "".join(f"self.{f}, " for f in fields) + ")"
        theirs = "(" + "".join(f"other.{f}, " for f in fields) + ")"
        src = (f"def __init__(self, {params}):\n{sets}"
               f"def __eq__(self, other):\n"
               f"    if other.__class__ is not self.__class__:\n"
               f"        return NotImplemented\n"
               f"    return {mine} == {theirs}\n"
               f"def __hash__(self):\n    return hash({mine})\n"
               f"def _values(self):\n    return {mine}\n")
        namespace: dict[str, Any] = {"_set": object.__setattr__,
                                     **{f"_default_{f}": v for f, v in defaults.items()}}
        exec(src, namespace)  # identifiers from the class's own annotations (checked)
        for name in ("__init__", "__eq__", "__hash__", "_values"):
            fn = namespace[name]
            fn.__qualname__ = f"{cls.__qualname__}.{name}"
            setattr(cls, name, fn)

    def _values(self) -> tuple[Any, ...]:  # each subclass gets its own (above)
        raise NotImplementedError

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickling and copy
        return (type(self), self._values())
