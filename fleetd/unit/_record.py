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

_MISSING = object()


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
        cls._fields = tuple(f for f in (*cls._fields, *own) if not f.startswith("_"))
        cls._defaults = {**cls._defaults, **{f: cls.__dict__[f] for f in own
                                              if f in cls.__dict__}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, "
                            f"{len(args)} given")
        values = dict(zip(fields, args, strict=False))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument "
                                f"{name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__}() got multiple values for {name!r}")
            values[name] = value
        for name in fields:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = self._defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickling and copy
        return (type(self), self._values())
