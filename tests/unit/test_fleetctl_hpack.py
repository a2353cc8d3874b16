"""fleetctl.hpack: RFC 7541's own examples (Appendix C), Huffman coding, and the dynamic
table's size limit and eviction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetctl import hpack


def _hex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def test_rfc_7541_c3_requests_without_huffman_share_the_dynamic_table() -> None:
    d = hpack.Decoder()
    assert d.decode(_hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"),
        (":authority", "www.example.com")]
    assert d.size == 57
    assert d.decode(_hex("8286 84be 5808 6e6f 2d63 6163 6865")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"),
        (":authority", "www.example.com"), ("cache-control", "no-cache")]
    assert d.size == 110
    assert d.decode(_hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661"
                         "6c75 65")) == [
        (":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
        (":authority", "www.example.com"), ("custom-key", "custom-value")]
    assert d.size == 164
    assert d.dynamic == [("custom-key", "custom-value"), ("cache-control", "no-cache"),
                         (":authority", "www.example.com")]


def test_rfc_7541_c4_requests_with_huffman() -> None:
    d = hpack.Decoder()
    assert d.decode(_hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))[-1] == (
        ":authority", "www.example.com")
    assert d.decode(_hex("8286 84be 5886 a8eb 1064 9cbf"))[-1] == ("cache-control", "no-cache")
    assert d.decode(_hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"))[-1] \
        == ("custom-key", "custom-value")
    assert d.size == 164


def test_huffman_codes_are_a_prefix_code_and_the_eos_code_is_thirty_ones() -> None:
    codes = hpack.huffman_codes()
    assert codes[hpack.EOS] == (1 << 30) - 1
    assert codes[ord("0")] == 0 and hpack.HUFFMAN_LENGTHS[ord("0")] == 5
    seen = {(hpack.HUFFMAN_LENGTHS[s], c) for s, c in enumerate(codes)}
    assert len(seen) == 257
    for s, c in enumerate(codes):  # no code is the prefix of a longer one
        n = hpack.HUFFMAN_LENGTHS[s]
        for m in range(5, n):
            assert (m, c >> (n - m)) not in seen


@given(st.binary(max_size=300))
def test_huffman_round_trip(data: bytes) -> None:
    assert hpack.huffman_decode(hpack.huffman_encode(data)) == data


def test_bad_huffman_padding_and_eos_are_refused() -> None:
    with pytest.raises(hpack.HpackError, match="padding"):
        hpack.huffman_decode(b"\x00")  # '0' then 3 zero bits of padding
    with pytest.raises(hpack.HpackError):
        hpack.huffman_decode(b"\xff\xff\xff\xff")  # EOS


def test_size_update_evicts_and_a_size_above_what_we_allowed_is_refused() -> None:
    d = hpack.Decoder(max_table_size=100)
    lit = b"\x40" + hpack._string("aaaa") + hpack._string("b" * 30)  # 66 bytes in the table
    d.decode(lit)
    assert d.size == 66
    d.decode(b"\x40" + hpack._string("cc") + hpack._string("d"))  # 35: the first goes
    assert d.dynamic == [("cc", "d")] and d.size == 35
    d.decode(hpack.encode_int(0, 5, 0x20))  # size 0 empties it
    assert d.dynamic == [] and d.size == 0
    with pytest.raises(hpack.HpackError, match="above"):
        d.decode(hpack.encode_int(101, 5, 0x20))
    with pytest.raises(hpack.HpackError, match="out of range"):
        d.decode(b"\xbe")  # index 62, an empty dynamic table


@given(st.lists(st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                  min_size=1, max_size=20),
                          st.text(st.characters(min_codepoint=32, max_codepoint=255),
                                  max_size=200)), max_size=10))
def test_encoded_literals_decode_to_the_same_headers(headers: list[tuple[str, str]]) -> None:
    assert hpack.Decoder().decode(hpack.encode(headers)) == headers


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_hpack_error(block: bytes) -> None:
    try:
        hpack.Decoder().decode(block)
    except hpack.HpackError:
        pass
