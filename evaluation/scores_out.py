"""``flagstream backtest --scores-out FILE``: one row per scored transaction, for users' own analysis.

Columns: :data:`COLUMNS` (``transaction_id``, ``event_time_ms``, ``score``, ``threshold``,
``decision``, ``model_version``): the threshold the decision was made with, so a user can
follow the operating point's path through the run.
A name ending ``.csv`` or ``.csv.gz`` is CSV with a header row; any other name is JSON Lines.
A name ending ``.gz`` is gzip-compressed. Rows are written batch by batch as the backtest
decides them (nothing is held back), in the order it scored them, into ``FILE.part``; the file
gets its name only when the run completes, and a failed run leaves no file.
:func:`read_scores` reads such a file back.

>>> import gzip, tempfile, pathlib
>>> rows = [{"transaction_id": "t-1", "event_time_ms": 1522540800000, "score": 0.25,
...          "threshold": 0.5, "decision": "approve", "model_version": "v1", "amount": 3.0}]
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = pathlib.Path(tmp) / "scores.csv.gz"
...     with ScoresWriter(path) as out:
...         _ = out.write(rows)
...     for line in gzip.decompress(path.read_bytes()).decode().splitlines():
...         print(line)
transaction_id,event_time_ms,score,threshold,decision,model_version
t-1,1522540800000,0.25,0.5,approve,v1
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

#: Keys of a decision written for each scored transaction, in order.
COLUMNS = ("transaction_id", "event_time_ms", "score", "threshold", "decision", "model_version")


def file_kind(path: str | os.PathLike[str]) -> tuple[bool, bool]:
    """``(gzip, csv)`` of a scores file, from its name (see the module).

    >>> file_kind("out.CSV.gz"), file_kind("out.jsonl")
    ((True, True), (False, False))
    """
    name = Path(path).name.lower()
    return name.endswith(".gz"), name.removesuffix(".gz").endswith(".csv")


class ScoresWriter:
    """Streams decisions' :data:`COLUMNS` to ``path`` (CSV or JSON Lines, see the module).

    Use as a context manager: leaving it normally renames ``path + ".part"`` to ``path``;
    leaving it on an exception deletes the partial file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.gzip, self.csv = file_kind(self.path)
        self.rows = 0
        self._raw: IO[bytes] | None = None
        self._sink: IO[bytes] | gzip.GzipFile | None = None
        self._text: io.TextIOWrapper | None = None
        self._csv: Any = None

    def __enter__(self) -> ScoresWriter:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        raw = self._raw = open(self.part, "wb")  # noqa: SIM115 - closed in __exit__
        sink = self._sink = (
            gzip.GzipFile(filename="", mode="wb", compresslevel=3, fileobj=raw, mtime=0) if self.gzip else raw
        )
        if self.csv:
            self._text = io.TextIOWrapper(sink, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow(COLUMNS)
        return self

    def write(self, decisions: Iterable[Mapping[str, Any]]) -> int:
        """Append one row per decision; returns how many."""
        rows = [tuple(d[k] for k in COLUMNS) for d in decisions]
        if self._csv is not None:
            self._csv.writerows(rows)
        elif self._sink is not None:
            if rows:
                dumps = orjson.dumps
                self._sink.write(b"".join(dumps(dict(zip(COLUMNS, r, strict=True))) + b"\n" for r in rows))
        else:
            raise RuntimeError("ScoresWriter.write outside its with-block")
        self.rows += len(rows)
        return len(rows)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._text is not None:
                self._text.flush()
                self._text.detach()
            if self.gzip and self._sink is not None:
                self._sink.close()  # the gzip trailer; the raw file is closed below
        finally:
            if self._raw is not None:
                self._raw.close()
            self._raw = self._sink = self._text = self._csv = None
        if kind is None:
            os.replace(self.part, self.path)
        else:
            self.part.unlink(missing_ok=True)


def read_scores(path: str | os.PathLike[str]) -> dict[str, tuple[float, int]]:
    """``transaction_id -> (score, event_time_ms)`` from a ``backtest --scores-out`` file (CSV
    or JSON Lines, gzip or not; :mod:`flagstream.evaluation.scores_out`). Unreadable rows, and
    rows without a finite score or an integer event time, are left out."""
    name = os.fspath(path).lower()
    opener: Any = gzip.open if name.endswith(".gz") else open
    scores: dict[str, tuple[float, int]] = {}
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f) if name.removesuffix(".gz").endswith(".csv") else map(_json_row, f)
        for row in rows:
            try:
                tx, score, at = row["transaction_id"], float(row["score"]), int(row["event_time_ms"])
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            if isinstance(tx, str) and math.isfinite(score):
                scores[tx] = (score, at)
    return scores


def _json_row(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
