"""Lines read in blocks (flagstream.simulation.line_blocks) against iterating the file."""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flagstream.simulation.line_blocks import lines_of
from flagstream.simulation.simulator import StreamReader

#: Bytes that make lines interesting: ends of lines of every kind, JSON and other bytes.
contents = st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"{", b"}", b"a", b"\xff", b'"x"', b"\n\n"]),
                    max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(contents, st.integers(1, 12))
@example(b"", 1)
@example(b"\n", 1)
@example(b"no end", 2)
@example(b"a" * 40 + b"\n" + b"b" * 25, 3)  # lines much longer than a block
def test_lines_read_in_blocks_are_the_lines_iteration_gives(data, block):
    assert list(lines_of(io.BytesIO(data), block)) == list(io.BytesIO(data))


@settings(max_examples=50, deadline=None)
@given(contents, st.integers(1, 64))
def test_the_same_through_gzip(data, block):
    packed = gzip.compress(data)
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as a, gzip.GzipFile(fileobj=io.BytesIO(packed)) as b:
        assert list(lines_of(a, block)) == list(b)


def test_a_stream_reader_numbers_and_judges_lines_as_before(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n[1]\n\n{"b": \r2}\r\n{"c"\n{"d": 4}'))
    reader = StreamReader(path, on_error="skip")
    assert list(reader) == [(1, {"a": 1}), (4, {"b": 2}), (6, {"d": 4})]
    assert [n for n, _ in reader.malformed] == [2, 3, 5]


def test_a_block_is_at_least_one_byte():
    with pytest.raises(ValueError):
        list(lines_of(io.BytesIO(b"x"), 0))
