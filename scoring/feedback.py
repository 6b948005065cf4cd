"""What a label is: the feedback record's fields, checked.

>>> check_feedback({"transaction_id": "t-1", "label": "fraud", "source": "review"})
('t-1', 1)
"""

from __future__ import annotations

from flagstream.errors import InvalidRecord

#: The longest transaction id accepted (the same limit as the transaction schema).
MAX_ID_LENGTH = 128
FEEDBACK_LABELS = {"fraud": 1, "legit": 0}
FEEDBACK_SOURCES = {"review", "chargeback", "auto"}


def check_feedback(obj: dict) -> tuple[str, int]:
    """Check a decoded feedback record; return (transaction_id, label as 0/1)."""
    tx = obj.get("transaction_id")
    if not isinstance(tx, str) or not tx or len(tx) > MAX_ID_LENGTH:
        raise InvalidRecord("invalid_field", "feedback needs a transaction_id string")
    label = obj.get("label")
    if label not in FEEDBACK_LABELS:
        raise InvalidRecord("invalid_label", "label must be 'fraud' or 'legit'")
    source = obj.get("source", "review")
    if source not in FEEDBACK_SOURCES:
        raise InvalidRecord("invalid_source", f"source must be one of {sorted(FEEDBACK_SOURCES)}")
    return tx, FEEDBACK_LABELS[label]
