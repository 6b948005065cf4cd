"""Hot-swapping to the champion the registry names.

Every worker replicates the compacted ``models`` topic (a global table). The seat
record says who is champion; the champion record carries that lineage's newest
version (see :mod:`flagstream.scoring.registry`). A worker swaps when the seat changes (a
promotion or a rollback, even to an older version) or when the champion record
under the same seat is newer than what it holds: within one batch, no restart.

Every record must be signed with the model key (:mod:`flagstream.scoring.model_key`)
and every field must pass :func:`flagstream.scoring.record_checks.check_record`. A
record that does not is refused with one log line and one count per refused value
(``flagstream_model_records_refused_total{source, reason}``), and the worker keeps
scoring with the version it has: nothing here raises on the scoring path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flagstream.errors import ConfigurationError
from flagstream.scoring.handle import ModelHandle, model_from_state, parse_version
from flagstream.scoring.model_key import ModelKey
from flagstream.scoring.record_checks import check_record
from flagstream.scoring.registry import (
    CHAMPION,
    OPERATING_POINT,
    SEAT,
    check_followable,
    choose_champion,
)
from flagstream.scoring.snapshots import IntegrityError, unseal
from flagstream.sinks.metrics import PipelineMetrics
from flagstream.streams.compat.internals import on_replicated

log = logging.getLogger(__name__)

#: Records :class:`ModelSync` remembers as verified: more than the versions the learner keeps
#: (``FLAGSTREAM_MODEL_KEEP_VERSIONS`` per lineage, 200) and the few named records; the
#: versions it deletes leave in turn (one was kept per publication, ~29 KB each, for ever).
VERIFIED_KEPT = 1_024


class ModelSync:
    """Reads verified records from the replicated ``models`` table and swaps the champion.

    Parameters
    ----------
    table
        The models table (key → sealed record bytes); anything with ``get``.
    handle
        The champion this worker scores with.
    metrics
        The worker's metrics (swaps, refusals and the version in use).
    key
        The model key records must be signed with (bytes: that key; None: unsigned
        records allowed, checksums only).

    Examples
    --------
    >>> from flagstream.scoring.linear import LinearChampion
    >>> from flagstream.scoring.registry import version_record
    >>> from flagstream.scoring.snapshots import seal
    >>> record = version_record("lr-000003", 3, LinearChampion().to_state(), "champion", "", "test")
    >>> table = {CHAMPION: seal(record, b"k"), b"junk": b"not sealed"}
    >>> sync = ModelSync(table, ModelHandle(LinearChampion()), PipelineMetrics(), ModelKey(b"k"))
    >>> sync.sync(), sync.handle.version, sync.read(b"junk")
    (True, 'lr-000003', None)
    >>> table[CHAMPION] = seal({**record, "sequence": 4, "version": "lr-000004"})  # no signature
    >>> sync.sync(), sync.handle.version
    (False, 'lr-000003')
    """

    def __init__(self, table: Mapping[bytes, bytes], handle: ModelHandle, metrics: PipelineMetrics,
                 key: ModelKey | bytes | None, threshold_follower: Any = None) -> None:
        self.table = table
        #: A scorer without the learner's operating point follows its published threshold
        #: (anything with ``follow(threshold)``); None in the learner's own process.
        self.threshold_follower = threshold_follower
        self._followed: dict | None = None
        self.handle = handle
        self.metrics = metrics
        if not isinstance(key, ModelKey):
            key = ModelKey(key) if key else ModelKey(unsigned=True)
        self.keys = key
        #: the last :data:`VERIFIED_KEPT` records read, by key (oldest first): a record is
        #: verified once, a refused one logged once, while it stays here
        self._verified: dict[bytes, tuple[bytes, dict | None]] = {}
        self._unloadable: tuple | None = None
        self._waiting_logged = False
        #: with :meth:`follow_replication`: whether the table changed since the last read
        #: (None: not following it, every :meth:`sync` reads)
        self._changed: bool | None = None

    def follow_replication(self) -> None:
        """Read the table only when replication changed it: for a process whose models
        table changes no other way (a scorer that does not learn). Each read costs three
        table lookups and a signature comparison; a scorer syncs before every step, which
        at a thousand API calls a second is hundreds of steps of one or two records.
        The first sync after this reads, and so does every sync while no signing key is
        available yet (records are not followed until one is)."""
        self._changed = True
        on_replicated(self.table, self._note_changes)

    def _note_changes(self, _keys: Iterable[bytes]) -> None:
        self._changed = True

    @property
    def key(self) -> bytes | None:
        """The key records are verified with now (None: unsigned allowed, or not available yet)."""
        try:
            return self.keys.get()
        except ConfigurationError:  # a bad key file: reported at start, refused here
            return None

    def refuse(self, source: str, reason: str, message: str) -> None:
        """Log one refusal and count it (the caller makes sure it is once per refused value)."""
        log.error("refusing %s; keeping the previous good version", message)
        self.metrics.lifecycle.refused.labels(source=source, reason=reason).inc()

    def read(self, key: bytes) -> dict | None:
        """A verified, checked record from the models table; None if absent or refused.

        Each refused value is logged and counted once (it is remembered by its bytes).
        While the model key does not exist yet (a scorer started before the learner),
        records are not read, and read again once it does.
        """
        raw = self.table.get(key)
        if raw is None:
            return None
        hit = self._verified.pop(key, None)
        if hit is not None and hit[0] == raw:
            self._verified[key] = hit  # (read again: the newest now)
            return hit[1]
        what = f"models[{key.decode(errors='replace')[:80]}]"
        signing = self.key
        if signing is None and not self.keys.unsigned:
            if not self._waiting_logged:
                self._waiting_logged = True
                log.warning("not following the models topic yet: no model signing key (%s); the "
                            "learner creates it at its first start, or set "
                            "FLAGSTREAM_MODEL_HMAC_KEY", self.keys.source)
            return None
        payload: dict | None
        try:
            payload = unseal(raw, signing, what=what)
        except IntegrityError as exc:
            self.refuse("models_topic", exc.reason, str(exc))
            payload = None
        except Exception as exc:  # e.g. nesting too deep to re-encode: hostile, never raised
            self.refuse("models_topic", "unreadable", f"{what}: {type(exc).__name__}: {exc}")
            payload = None
        else:
            try:
                check_record(key, payload)
            except Exception as exc:  # every check failure, and anything a hostile state provokes
                self.refuse("models_topic", "malformed", f"{what}: {exc}")
                payload = None
        self._verified[key] = (raw, payload)  # (the newest at the end: the oldest leaves first)
        if len(self._verified) > VERIFIED_KEPT:
            del self._verified[next(iter(self._verified))]
        return payload

    def sync(self) -> bool:
        """Swap the handle to the champion the registry names, if that is a change.

        A record that cannot be followed (malformed, unloadable) is refused, logged and
        counted once, and the worker keeps the version it has: it never raises.
        """
        if self._changed is False:
            return False
        if self._changed:
            # (cleared before reading: a change replicated while this runs is read next time)
            self._changed = self.key is None and not self.keys.unsigned
        try:
            self._follow_threshold()
            return self._sync()
        except Exception as exc:  # hostile or corrupt registry records: refuse, keep scoring
            self._refuse(("malformed", type(exc).__name__, str(exc)[:200]),
                         f"cannot follow the registry: {type(exc).__name__}: {exc}")
            return False

    def _refuse(self, key: tuple, message: str) -> None:
        if self._unloadable != key:
            self._unloadable = key
            log.error("%s; keeping %s", message, self.handle.version)
            self.metrics.lifecycle.refused.labels(source="unloadable", reason="unloadable").inc()

    def _follow_threshold(self) -> None:
        """Decide with the threshold the learner published (a verified record), once per change."""
        if self.threshold_follower is None:
            return
        record = self.read(OPERATING_POINT)
        if record is None or record is self._followed:
            return
        self._followed = record
        self.threshold_follower.follow(float(record["threshold"]), record.get("decline_threshold"))
        self.metrics.threshold.set(float(record["threshold"]))
        log.info("threshold now %.3f (the learner's operating point: %s)", record["threshold"],
                 record["reason"])

    def _sync(self) -> bool:
        seat, champion = self.read(SEAT), self.read(CHAMPION)
        check_followable(seat, champion)
        chosen = choose_champion(seat, champion)
        if chosen is None:
            return False
        h = self.handle
        epoch, seat_id = (int(seat["epoch"]), str(seat["id"])) if seat else (0, "")
        if (epoch, seat_id) != (h.epoch, h.seat):
            if epoch < h.epoch:  # our own newer seat change, not replicated yet
                return False
        elif chosen["sequence"] <= h.sequence:
            return False
        try:
            model = model_from_state(chosen["state"])
            lineage = chosen.get("lineage") or parse_version(chosen["version"])[0]
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse((chosen.get("version"), epoch, seat_id),
                         f"cannot load model {chosen.get('version')}: {exc}")
            return False
        h.adopt(model, lineage, int(chosen["sequence"]), epoch, seat_id)
        self.metrics.model_version.set(h.sequence)
        self.metrics.lifecycle.swaps.inc()
        log.info("model now %s (seat epoch %d)", h.version, epoch)
        return True
