from __future__ import annotations

from array import array

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import client
from engine.batcher import Batcher
from engine.rows import EncodedChunk


def chunk(first: int, n: int) -> EncodedChunk:
    numbers = list(range(first, first + n))
    fragments = [orjson.dumps([str(i)]) for i in numbers]
    stops = [sum(len(f) + 1 for f in fragments[: i + 1]) for i in range(n)]
    return EncodedChunk(array("q", numbers), b",".join(fragments), array("q", stops), [], n)


@pytest.mark.parametrize("sizes", [[7, 7, 7], [1] * 21, [21], [10, 0, 11]])
def test_batches_are_the_same_whatever_the_chunking(sizes: list[int]) -> None:
    batcher, batches, first = Batcher(5), [], 1
    for n in sizes:
        batches += batcher.add(chunk(first, n))
        first += n
    tail = batcher.flush()
    assert tail is not None
    batches.append(tail)
    assert [b.seq for b in batches] == [1, 2, 3, 4, 5]
    assert [b.rows for b in batches] == [5, 5, 5, 5, 1]
    assert [(b.first_row, b.last_row) for b in batches] == [
        (1, 5),
        (6, 10),
        (11, 15),
        (16, 20),
        (21, 21),
    ]
    rows = [r[0] for b in batches for r in orjson.loads(b"[" + b.data + b"]")]
    assert rows == [str(i) for i in range(1, 22)]
    assert batcher.flush() is None


@pytest.mark.parametrize("size", [0, 10_001])
def test_batch_size_is_bounded(size: int) -> None:
    with pytest.raises(ValueError):
        Batcher(size)


# --- a batch's request body (engine.client), written in parts -------------------------------


@given(
    pieces=st.lists(st.binary(max_size=9).map(lambda b: b.replace(b"\x00", b"ab")), max_size=8),
    boundary=st.sampled_from([b"ab", b"aba", b"abcab"]),
)
def test_a_boundary_is_found_across_the_pieces_as_in_them_joined(
    pieces: list[bytes], boundary: bytes
) -> None:
    assert client._holds(pieces, boundary) == (boundary in b"".join(pieces))


def test_body_parts_join_into_the_multipart_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # A value that holds the first boundary across two of its parts makes a second one.
    draws = iter([b"\x01" * 16, b"\x02" * 16])
    monkeypatch.setattr(client.os, "urandom", lambda n: next(draws))
    first = (b"\x01" * 16).hex().encode()
    big = b"x" * client._OWN_WRITE
    fields = {"payload": (b"{" + first[:5], first[5:] + big, b"}"), "session": b"{}"}
    parts, ctype = client.multipart_parts(fields)
    boundary = (b"\x02" * 16).hex().encode()
    assert ctype == f"multipart/form-data; boundary={boundary.decode()}"
    assert b"".join(parts) == (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="payload"\r\n\r\n{'
        + first + big + b"}\r\n--" + boundary
        + b'\r\nContent-Disposition: form-data; name="session"\r\n\r\n{}\r\n--'
        + boundary + b"--\r\n"
    )  # fmt: skip
    assert len(parts) == 3 and parts[1] == first[5:] + big  # the big part is written alone
