"""HPACK (RFC 7541), the header compression of HTTP/2, as far as fleetctl's gRPC client needs
it: a complete decoder (static and dynamic table, Huffman strings) for what fleetd sends, and
an encoder that sends every header as a literal (valid HPACK, no state kept on either side).

Only the standard library: this module is imported by every fleetctl command that calls the
API, where grpcio's import alone took longer than a whole `fleetctl list-units` may."""

from __future__ import annotations


class HpackError(Exception):
    """The peer's header block is not valid HPACK (a COMPRESSION_ERROR in HTTP/2 terms)."""


#: RFC 7541 Appendix A: the static table, index 1 first.
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

#: RFC 7541 Appendix B: the Huffman code's length in bits of each symbol (0-255, then EOS).
#: The code is canonical (codes of one length are consecutive, in symbol order, and each
#: length's first code follows the previous length's last), so the lengths define it.
HUFFMAN_LENGTHS: tuple[int, ...] = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,  # 0-15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,  # 16-31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,  # 32-47
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,  # 48-63
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,  # 64-79
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,  # 80-95
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,  # 96-111
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,  # 112-127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,  # 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,  # 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,  # 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,  # 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,  # 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,  # 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,  # 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,  # 240-255
    30,  # EOS
)
EOS = 256

_decode_table: dict[tuple[int, int], int] | None = None


def huffman_codes() -> list[int]:
    """Each symbol's code (the canonical code of `HUFFMAN_LENGTHS`)."""
    codes = [0] * len(HUFFMAN_LENGTHS)
    code, prev = -1, 0
    for sym in sorted(range(len(HUFFMAN_LENGTHS)), key=lambda s: (HUFFMAN_LENGTHS[s], s)):
        n = HUFFMAN_LENGTHS[sym]
        code = (code + 1) << (n - prev)
        prev = n
        codes[sym] = code
    return codes


def _table() -> dict[tuple[int, int], int]:
    global _decode_table
    if _decode_table is None:
        _decode_table = {(n, c): s for s, (n, c) in enumerate(zip(
            HUFFMAN_LENGTHS, huffman_codes(), strict=True))}
    return _decode_table


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded string; padding must be at most 7 bits of the EOS code's prefix (1s)."""
    table = _table()
    out = bytearray()
    code = bits = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            bits += 1
            sym = table.get((bits, code))
            if sym is None:
                if bits > 30:
                    raise HpackError("invalid Huffman code")
                continue
            if sym == EOS:
                raise HpackError("EOS inside a Huffman string")
            out.append(sym)
            code = bits = 0
    if bits > 7 or code != (1 << bits) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """The Huffman coding of `data`, padded with 1s (for tests: fleetctl sends literals)."""
    codes = huffman_codes()
    acc = nbits = 0
    out = bytearray()
    for b in data:
        acc = (acc << HUFFMAN_LENGTHS[b]) | codes[b]
        nbits += HUFFMAN_LENGTHS[b]
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
        acc &= (1 << nbits) - 1
    if nbits:
        out.append(((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF)
    return bytes(out)


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: `value` on a `prefix_bits`-bit prefix, `first` holding the byte's
    upper bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode("latin-1")
    return encode_int(len(raw), 7) + raw


def encode(headers: list[tuple[str, str]]) -> bytes:
    """A header block: each header a literal without indexing with a literal name."""
    return b"".join(b"\x00" + _string(k) + _string(v) for k, v in headers)


class Decoder:
    """One connection's HPACK decoding state (the dynamic table the peer's encoder fills)."""

    def __init__(self, max_table_size: int = 4096) -> None:
        self.max_table_size = max_table_size  # what we allowed (SETTINGS_HEADER_TABLE_SIZE)
        self.table_size = max_table_size
        self.dynamic: list[tuple[str, str]] = []  # newest first
        self.size = 0

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        i = index - len(STATIC_TABLE) - 1
        if 0 <= i < len(self.dynamic):
            return self.dynamic[i]
        raise HpackError(f"header index {index} out of range")

    def _add(self, name: str, value: str) -> None:
        n = len(name) + len(value) + 32
        self.dynamic.insert(0, (name, value))
        self.size += n
        self._evict()

    def _evict(self) -> None:
        while self.size > self.table_size and self.dynamic:
            k, v = self.dynamic.pop()
            self.size -= len(k) + len(v) + 32

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        end = len(block)

        def integer(prefix_bits: int) -> int:
            nonlocal pos
            if pos >= end:
                raise HpackError("truncated integer")
            limit = (1 << prefix_bits) - 1
            value = block[pos] & limit
            pos += 1
            if value < limit:
                return value
            shift = 0
            while True:
                if pos >= end or shift > 28:
                    raise HpackError("truncated or oversized integer")
                b = block[pos]
                pos += 1
                value += (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    return value

        def string() -> str:
            nonlocal pos
            if pos >= end:
                raise HpackError("truncated string")
            huffman = bool(block[pos] & 0x80)
            n = integer(7)
            if pos + n > end:
                raise HpackError("truncated string")
            raw = block[pos:pos + n]
            pos += n
            return (huffman_decode(raw) if huffman else raw).decode("latin-1")

        while pos < end:
            b = block[pos]
            if b & 0x80:  # indexed header field
                index = integer(7)
                if index == 0:
                    raise HpackError("header index 0")
                out.append(self._entry(index))
            elif b & 0x40:  # literal with incremental indexing
                index = integer(6)
                name = self._entry(index)[0] if index else string()
                value = string()
                self._add(name, value)
                out.append((name, value))
            elif b & 0x20:  # dynamic table size update
                size = integer(5)
                if size > self.max_table_size:
                    raise HpackError(f"table size {size} above the {self.max_table_size} "
                                     "allowed")
                self.table_size = size
                self._evict()
            else:  # literal without indexing (0000) or never indexed (0001)
                index = integer(4)
                name = self._entry(index)[0] if index else string()
                out.append((name, string()))
        return out
