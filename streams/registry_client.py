"""The model registry on Kafka: read the ``models`` topic to its end, write sealed records.

The registry's rules (what a version record holds, how the seat changes, which
versions may be pruned) are in :mod:`flagstream.scoring.registry`; this is its I/O.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flagstream.scoring.handle import model_from_state
from flagstream.scoring.record_checks import check_record
from flagstream.scoring.registry import (
    LINEAGE,
    PARTITION,
    RegistryError,
    RegistryView,
    candidate_key,
    check_target,
    now_ms,
    seat_change,
)
from flagstream.scoring.snapshots import seal
from flagstream.streams.compat import internals as compat
from flagstream.streams.config import Settings
from flagstream.streams.topics import MODELS


class RegistryClient:
    """Reads the registry topic to its end and writes sealed records (``flagstream models``).

    Use as ``async with RegistryClient(settings) as client: ...``. Records are signed
    and verified with ``key``, by default the workers' model key
    (:meth:`flagstream.streams.config.Settings.model_key`: configured, or the key file
    in the data directory); without one it refuses to start, naming both places.
    """

    def __init__(self, settings: Settings, key: bytes | None = None) -> None:
        self.settings = settings
        if key is None:
            model_key = settings.model_key()
            key = model_key.get()
            if key is None and not model_key.unsigned:
                raise RegistryError(
                    f"no model signing key: set FLAGSTREAM_MODEL_HMAC_KEY to the workers' key, or "
                    f"run where the learner's data directory is ({model_key.source} is missing)")
        self.key = key
        self.topic = settings.topic(MODELS)
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> RegistryClient:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.broker,
                                          **self.settings.producer_options(),
                                          **self.settings.kafka_security())
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def read(self, timeout_s: float = 15.0) -> RegistryView:
        """Every key's latest value, read from the beginning to the current end."""
        s = self.settings
        consumer = AIOKafkaConsumer(bootstrap_servers=s.broker, enable_auto_commit=False,
                                    **s.kafka_security())
        await consumer.start()
        try:
            deadline = asyncio.get_running_loop().time() + timeout_s
            partitions = consumer.partitions_for_topic(self.topic)
            while not partitions:
                if asyncio.get_running_loop().time() > deadline:
                    raise RegistryError(f"topic {self.topic!r} not found on {s.broker}")
                await asyncio.sleep(0.2)
                await compat.refresh_metadata(consumer)
                partitions = consumer.partitions_for_topic(self.topic)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            raw: dict[bytes, bytes] = {}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                if asyncio.get_running_loop().time() > deadline:
                    raise RegistryError(f"timed out reading {self.topic!r}")
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        if r.value is None:
                            raw.pop(r.key, None)
                        else:
                            raw[r.key] = r.value
            view = RegistryView(raw, self.key)
            for key, record in list(view.records.items()):
                try:
                    check_record(key, record)
                except ValueError as exc:
                    del view.records[key]
                    view.refused[key] = str(exc)
            return view
        finally:
            await consumer.stop()

    async def write(self, records: Iterable[tuple[bytes, dict | None]]) -> None:
        """Seal and send records (None: a tombstone), in order, and wait for the broker."""
        assert self._producer is not None, "use RegistryClient as an async context manager"
        records = list(records)
        for key, payload in records:  # nothing the workers would refuse
            if payload is not None:
                try:
                    check_record(key, payload)
                except ValueError as exc:
                    raise RegistryError(f"not written: {exc}") from None
        for key, payload in records:
            value = None if payload is None else seal(payload, self.key)
            await self._producer.send_and_wait(self.topic, value, key=key, partition=PARTITION)

    async def promote(self, version: str, reason: str, by: str) -> dict:
        """Give the seat to ``version``; returns the new seat record."""
        view = await self.read()
        target = view.version(version)
        check_target(view, target)
        writes = seat_change(view.get, target, "promote", reason, by)
        await self.write(writes)
        return writes[-2][1]

    async def rollback(self, to: str | None, reason: str, by: str) -> dict:
        """Return the seat to ``to`` (default: the champion before the last promotion)."""
        view = await self.read()
        if to is None:
            stack = view.seat["stack"] if view.seat else []
            if not stack:
                raise RegistryError("nothing to roll back to: no earlier champion on the seat's "
                                    "stack; name one with --to VERSION")
            to = stack[-1]
        target = view.version(to)
        check_target(view, target)
        writes = seat_change(view.get, target, "rollback", reason, by)
        await self.write(writes)
        return writes[-2][1]

    async def submit(self, lineage: str, state: dict, reason: str, by: str,
                     cutoff: float = 0.0) -> dict:
        """Offer a model (JSON state) as a candidate; the learner shadows it as ``lineage``."""
        model_from_state(state)  # refuse what no worker could load
        if not LINEAGE.fullmatch(lineage):
            raise RegistryError(f"bad lineage name {lineage!r} (letters, digits, '-', '_', '.')")
        view = await self.read()
        taken = {v["lineage"] for v in view.versions()} | {c["lineage"] for c in view.candidates()}
        if lineage in taken:
            raise RegistryError(f"lineage {lineage!r} already exists; choose another name")
        record = {"kind": "candidate", "id": uuid.uuid4().hex, "lineage": lineage, "state": state,
                  "reason": reason, "by": by, "submitted_at_ms": now_ms(), "cutoff": cutoff}
        await self.write([(candidate_key(lineage), record)])
        return record
