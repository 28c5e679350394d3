"""Parquet input through pyarrow (the `parquet` extra), read a row group slice at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._errors import InputError
from .._rows import RawChunk, Reject
from .opening import Opened, why
from .source import InputFile, cell_text, unreadable


class ParquetInput(InputFile):
    def __init__(self, opened: Opened) -> None:
        path = opened.path
        super().__init__(path, opened)
        try:
            import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]  # lazily: parquet is optional
        except ImportError as exc:
            raise InputError(
                "reading parquet needs pyarrow: install audience-engine[parquet]"
            ) from exc
        try:
            self._file = pq.ParquetFile(opened.raw)
        except Exception as exc:  # pyarrow raises several types for a file it cannot open
            raise InputError(f"cannot read parquet file {path!r}: {why(exc)}") from exc
        self.columns = list(self._file.schema_arrow.names)

    def estimated_rows(self) -> int | None:
        return int(self._file.metadata.num_rows)

    def chunks(self, chunk_rows: int = 5000) -> Iterator[RawChunk]:
        import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

        columns = self._bound_columns()
        wanted = list(dict.fromkeys(columns))  # read each column once
        n = 0
        try:
            for batch in self._file.iter_batches(batch_size=chunk_rows, columns=wanted):
                texts = {name: _texts(batch.column(name)) for name in wanted}
                numbers = range(n + 1, n + 1 + batch.num_rows)
                n += batch.num_rows
                values = list(zip(*(texts[c][0] for c in columns), strict=True))
                if not any(texts[c][1] for c in columns):
                    yield RawChunk(list(numbers), values)
                    continue
                # Some binary cells were not UTF-8: find their rows (the rare, slow path).
                chunk = RawChunk([], [])
                for row, cells in zip(numbers, values, strict=True):
                    if _utf8(cells):
                        chunk.row_numbers.append(row)
                        chunk.values.append(cells)
                    else:
                        chunk.rejects.append(Reject(row, "", "bad_encoding"))
                yield chunk
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(n, exc) from exc

    def _close(self) -> None:
        self._file.close()
        super()._close()


def _texts(array: Any) -> tuple[list[str], bool]:
    """One Parquet column as cell texts, and whether any may hold bytes that were not UTF-8."""
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
    import pyarrow.compute as pc  # type: ignore[import-untyped, unused-ignore]

    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return [v if v is not None else "" for v in array.to_pylist()], False
    try:
        # Arrow's own cast turns numbers, dates and dictionary columns into text in C.
        texts = pc.fill_null(pc.cast(array, pa.string()), "").to_pylist()
        return texts, False
    except pa.ArrowException:
        # Nested values (-> ""), or binary that is not UTF-8 (-> surrogates, found by _utf8).
        return [cell_text(v) for v in array.to_pylist()], True


def _utf8(cells: tuple[str, ...]) -> bool:
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
