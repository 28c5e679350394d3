from __future__ import annotations

from array import array

import orjson
import pytest

from engine._pipeline.batcher import Batcher
from engine._rows import EncodedChunk


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
