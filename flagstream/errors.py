"""The errors of flagstream: one root, and the record every refusal is reported as.

>>> issubclass(InvalidRecord, FlagstreamError), Rejection(3, "too_deep", "nesting deeper than 8")
(True, Rejection(index=3, reason='too_deep', detail='nesting deeper than 8'))
"""

from __future__ import annotations

from dataclasses import dataclass


class FlagstreamError(Exception):
    """The root of every error flagstream raises on purpose."""


class InvalidRecord(FlagstreamError, ValueError):
    """A record that breaks its wire schema; ``reason`` is the dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ConfigurationError(FlagstreamError, ValueError):
    """A setting that cannot work; the message names the variable."""


@dataclass(frozen=True)
class Rejection:
    """Why one input record was refused: ``reason`` is a short code, ``detail`` a sentence."""

    index: int
    reason: str
    detail: str
