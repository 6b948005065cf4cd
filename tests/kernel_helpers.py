"""Shared by the kernel tests: the stream's first day and the account features' columns."""

from __future__ import annotations

from flagstream.features.layout import FEATURE_NAMES

#: 2018-04-01, the simulated stream's first day (ms)
START = 1_522_540_800_000
#: columns of the feature row that come from the account's state (not the merchant's)
ACCOUNT_COLUMNS = [i for i, n in enumerate(FEATURE_NAMES) if not n.startswith("merchant_")]
