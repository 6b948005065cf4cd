"""The one JSON codec: orjson with fixed options, used for every topic and file.

>>> loads(dumps({"a": 1.5, "b": "x"}))
{'a': 1.5, 'b': 'x'}
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes (numpy scalars and arrays allowed)."""
    return orjson.dumps(value, option=_OPTIONS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON bytes; raises :class:`JSONDecodeError` on bad input."""
    return orjson.loads(data)
