"""fleetctl's protobuf codec: the messages of fleetd's API as plain Python classes, encoded and
decoded from the schema proto/generate.py writes (fleetd/api/pb/fleet_lite.py).

Why not the protobuf runtime: importing it with the generated module took 30-38 ms of every
API command (the issue's whole `fleetctl list-units` budget is 60 ms); this module and its
schema import in about 1 ms. It covers what fleet.proto uses (proto3: scalars, enums,
messages, repeated fields, maps) and nothing else: the generator refuses a field type it does
not know. Messages behave like protobuf's for what fleetctl does with them: keyword
construction (unknown names refused), attribute reads with proto3 defaults (an unset message
field reads as an empty message), `SerializeToString()`, `FromString()`, equality. Unknown
fields are skipped when decoding, as protobuf does.
"""

from __future__ import annotations

import struct

#: typing's names are for the type checker only: importing typing cost each run ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the message."""


class Enum:
    """An enum's values as attributes (`WatchEvent.Kind.SNAPSHOT`), plus Name/Value."""

    def __init__(self, name: str, values: dict[str, int]) -> None:
        self._name, self._values = name, dict(values)
        self._names = {v: k for k, v in values.items()}
        for k, v in values.items():
            setattr(self, k, v)

    def Name(self, number: int) -> str:
        try:
            return self._names[number]
        except KeyError:
            raise ValueError(f"enum {self._name} has no value {number}") from None

    def Value(self, name: str) -> int:
        try:
            return self._values[name]
        except KeyError:
            raise ValueError(f"enum {self._name} has no value named {name!r}") from None


class _Field:
    __slots__ = ("cls", "key_kind", "kind", "name", "number", "packed", "repeated",
                 "value_kind", "wire")

    def __init__(self, number: int, name: str, kind: str, ref: str, repeated: bool) -> None:
        self.number, self.name, self.kind, self.repeated = number, name, kind, repeated
        self.cls: type[Message] | None = None
        self.key_kind, self.value_kind = (ref.split(":") if kind == "map" else ("", ""))
        # The wire type the field is sent with; a repeated number may also come packed (as
        # length-delimited data). Any other wire type makes it an unknown field (protobuf).
        self.wire = (_LEN if kind in ("string", "bytes", "message", "map") else
                     _I64 if kind == "double" else _VARINT)
        self.packed = repeated and self.wire != _LEN

    def default(self) -> Any:
        if self.repeated:
            return []
        if self.kind == "map":
            return {}
        if self.kind == "message":
            assert self.cls is not None
            return self.cls()
        return _DEFAULTS[self.kind]


_DEFAULTS: dict[str, Any] = {"string": "", "bytes": b"", "bool": False, "int32": 0,
                             "int64": 0, "uint32": 0, "uint64": 0, "enum": 0, "double": 0.0}


class Message:
    """Base of the generated message classes (`messages()`)."""

    __slots__ = ()
    _fields: tuple[_Field, ...] = ()
    _by_name: dict[str, _Field] = {}
    _by_number: dict[int, _Field] = {}
    _by_tag: tuple[_Field | None, ...] = (None,) * 128  # a one-byte tag -> its field

    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            f = self._by_name.get(name)
            if f is None:
                raise ValueError(f'Protocol message {type(self).__name__} has no "{name}" field.')
            if f.repeated:
                value = list(value)
            elif f.kind == "map":
                value = dict(value)
            elif value is None:
                continue
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # an unset field: its default
        f = type(self)._by_name.get(name)
        if f is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        value = f.default()
        if f.kind != "message" or f.repeated:  # kept, so that appends stay; reading an unset
            object.__setattr__(self, name, value)  # message field does not set it (protobuf)
        return value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f.name) == getattr(other, f.name) for f in self._fields)

    def __hash__(self) -> int:  # mutable, like protobuf's messages
        raise TypeError(f"unhashable message {type(self).__name__}")

    def __repr__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in self._fields
                 if getattr(self, f.name) != f.default()]
        return f"{type(self).__name__}({', '.join(parts)})"

    # --- encoding ---------------------------------------------------------------------------
    def SerializeToString(self) -> bytes:
        out = bytearray()
        self._encode(out)
        return bytes(out)

    def _encode(self, out: bytearray) -> None:
        for f in self._fields:
            try:
                value = object.__getattribute__(self, f.name)
            except AttributeError:
                continue  # never set
            if not (value or (f.kind == "message" and not f.repeated)
                    or (f.kind == "double" and struct.pack("<d", value)[7] & 0x80)):
                continue  # proto3 sends no default (-0.0 is not one); a message field once
                # set is sent
            if f.kind == "map":
                for k, v in value.items():
                    entry = bytearray()
                    _encode_scalar(entry, 1, f.key_kind, k)
                    _encode_scalar(entry, 2, f.value_kind, v)
                    _tag(out, f.number, _LEN)
                    _varint(out, len(entry))
                    out += entry
            elif f.repeated:
                for v in value:
                    _encode_value(out, f, v)
            else:
                _encode_value(out, f, value)

    # --- decoding ---------------------------------------------------------------------------
    @classmethod
    def FromString(cls, data: bytes) -> Any:
        msg = cls()
        try:
            msg._decode(memoryview(data))
        except (IndexError, struct.error, UnicodeDecodeError) as e:
            raise DecodeError(f"cannot decode {cls.__name__}: {e}") from None
        return msg

    def _decode(self, data: memoryview) -> None:
        # The hot loop of every list answer (10,000 rows: 20,000 messages, 150,000 fields):
        # one-byte tags and lengths read inline, strings and nested messages (the common
        # fields) stored without a call; the rest through `_put` / `_put_len`.
        by_tag = self._by_tag
        setattr_ = object.__setattr__
        pos, end = 0, len(data)
        while pos < end:
            key = data[pos]
            if key < 0x80:
                pos += 1
                f = by_tag[key]
            else:
                key, pos = _read_varint(data, pos)
                f = self._by_number.get(key >> 3)
            if key < 8 or key > 0xFFFFFFFF:
                raise DecodeError(f"invalid field number {key >> 3}")
            wire = key & 7
            if wire == _LEN:
                n = data[pos]
                if n < 0x80:
                    pos += 1
                else:
                    n, pos = _read_varint(data, pos)
                stop = pos + n
                if stop > end:
                    raise DecodeError(f"field {key >> 3}: {n} bytes past the end")
                if f is not None and (f.wire == _LEN or f.packed):
                    kind = f.kind
                    if kind == "string" and not f.repeated:
                        setattr_(self, f.name, str(data[pos:stop], "utf-8"))
                    elif kind == "message" and f.repeated:
                        sub = f.cls()  # type: ignore[misc]
                        sub._decode(data[pos:stop])
                        getattr(self, f.name).append(sub)
                    else:
                        self._put_len(f, data[pos:stop])
                pos = stop
            elif wire == _VARINT:
                raw = data[pos]
                if raw < 0x80:
                    pos += 1
                else:
                    raw, pos = _read_varint(data, pos)
                if f is not None and f.wire == _VARINT:
                    self._put(f, _from_varint(f.kind, raw))
            elif wire == _I64:
                if f is not None and f.wire == _I64:
                    self._put(f, struct.unpack_from("<d", data, pos)[0])
                pos += 8
            elif wire == _I32:
                pos += 4
            else:
                raise DecodeError(f"field {key >> 3}: wire type {wire} not supported")
        if pos != end:
            raise DecodeError("truncated message")

    def _put(self, f: _Field, value: Any) -> None:
        if f.repeated:
            getattr(self, f.name).append(value)
        else:
            object.__setattr__(self, f.name, value)

    def _put_len(self, f: _Field, chunk: memoryview) -> None:
        kind = f.kind
        if kind == "string":
            self._put(f, str(chunk, "utf-8"))
        elif kind == "bytes":
            self._put(f, bytes(chunk))
        elif kind == "message":
            assert f.cls is not None
            sub = f.cls()
            sub._decode(chunk)
            if f.repeated:
                getattr(self, f.name).append(sub)
            else:
                object.__setattr__(self, f.name, sub)
        elif kind == "map":  # an entry is a message of its own: key = 1, value = 2
            entry = f.cls()  # type: ignore[misc]
            entry._decode(chunk)
            getattr(self, f.name)[entry.key] = entry.value
        elif f.repeated and kind != "string":  # packed numbers
            pos, end = 0, len(chunk)
            while pos < end:
                if kind == "double":
                    self._put(f, struct.unpack_from("<d", chunk, pos)[0])
                    pos += 8
                else:
                    number_raw, pos = _read_varint(chunk, pos)
                    self._put(f, _from_varint(kind, number_raw))
        else:
            raise DecodeError(f"field {f.name}: length-delimited data for a {kind}")


def _tag(out: bytearray, number: int, wire: int) -> None:
    _varint(out, (number << 3) | wire)


def _varint(out: bytearray, value: int) -> None:
    value &= _MASK64  # negative int32/int64: ten bytes, as protobuf does
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def _from_varint(kind: str, raw: int) -> Any:
    if kind == "bool":
        return raw != 0
    if kind in ("int64", "enum", "int32"):
        raw &= _MASK64
        if kind == "int32" or kind == "enum":
            raw &= 0xFFFFFFFF
            return raw - (1 << 32) if raw & (1 << 31) else raw
        return raw - (1 << 64) if raw & (1 << 63) else raw
    if kind == "uint32":
        return raw & 0xFFFFFFFF
    return raw & _MASK64


def _encode_scalar(out: bytearray, number: int, kind: str, value: Any) -> None:
    if kind == "string":
        raw = value.encode("utf-8")
        _tag(out, number, _LEN)
        _varint(out, len(raw))
        out += raw
    elif kind == "bytes":
        _tag(out, number, _LEN)
        _varint(out, len(value))
        out += value
    elif kind == "double":
        _tag(out, number, _I64)
        out += struct.pack("<d", value)
    else:  # bool, ints, enum
        _tag(out, number, _VARINT)
        _varint(out, int(value))


def _encode_value(out: bytearray, f: _Field, value: Any) -> None:
    if f.kind == "message":
        sub = bytearray()
        value._encode(sub)
        _tag(out, f.number, _LEN)
        _varint(out, len(sub))
        out += sub
    else:
        _encode_scalar(out, f.number, f.kind, value)


class Messages:
    """The API's message classes and enums as attributes (`pb.ListUnitsRequest`), and its
    methods (`methods[name] = (request, response, server-streaming)`)."""

    def __init__(self, schema: Any) -> None:
        self.service: str = schema.SERVICE
        classes: dict[str, type[Message]] = {}
        for name, fields in schema.MESSAGES.items():
            classes[name] = _message_class(name, tuple(_Field(*f) for f in fields))
        for name, cls in classes.items():
            for f in cls._fields:
                if f.kind == "message":
                    f.cls = classes[_ref(schema.MESSAGES[name], f.number)]
                elif f.kind == "map":
                    f.cls = _message_class(f"{name}.{f.name}_entry", (
                        _Field(1, "key", f.key_kind, "", False),
                        _Field(2, "value", f.value_kind, "", False)))
            outer, _, inner = name.rpartition(".")
            if outer:
                setattr(classes[outer], inner, cls)
            else:
                setattr(self, name, cls)
        for name, values in schema.ENUMS.items():
            outer, _, inner = name.rpartition(".")
            enum = Enum(name, values)
            setattr(classes[outer] if outer else self, inner, enum)
        self.methods: dict[str, tuple[type[Message], type[Message], bool]] = {
            m: (classes[req], classes[resp], streaming)
            for m, (req, resp, streaming) in schema.METHODS.items()}


def _message_class(name: str, fs: tuple[_Field, ...]) -> type[Message]:
    return type(name.rsplit(".", 1)[-1], (Message,), {
        "__slots__": tuple(f.name for f in fs), "_fields": fs,
        "_by_name": {f.name: f for f in fs}, "_by_number": {f.number: f for f in fs},
        "_by_tag": tuple(next((f for f in fs if f.number == tag >> 3), None)
                         for tag in range(128)),
        "__qualname__": name})


def _ref(fields: tuple[tuple[int, str, str, str, bool], ...], number: int) -> str:
    return next(ref for n, _, _, ref, _ in fields if n == number)


_messages: Messages | None = None


def messages() -> Messages:
    """fleetd's API messages (fleetd/api/pb/fleet_lite.py), built once."""
    global _messages
    if _messages is None:
        from fleetd.api.pb import fleet_lite

        _messages = Messages(fleet_lite)
    return _messages
