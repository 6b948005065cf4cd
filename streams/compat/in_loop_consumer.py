"""Faust's Kafka consumer run on the worker's own event loop instead of a thread of its own.

Faust 0.15.3 runs aiokafka's consumer in a :class:`mode.threads.ServiceThread`: a second
thread with a second event loop. Every ``getmany``, commit and seek the worker makes
goes through a method queue into that thread and its answer comes back with
``call_soon_threadsafe``; the fetch responses are parsed there. On a machine where the
worker shares its cores with a broker, each hop waits for the other thread to get the
GIL and a CPU, and a record's time from its produce to the agent grew by those waits
(the stage tracer put 72 ms of a 5,000/s p50 between produce and the fetch's return,
against the plain aiokafka loop's whole 25 ms; see README, "The stream path's tail").

:class:`InLoopConsumerThread` is the same service (the same aiokafka consumer,
rebalance listener and Faust bookkeeping: it subclasses Faust's own class) with its
"thread loop" set to the worker's loop and its methods called directly:

* :meth:`InLoopConsumerThread.start` runs the service's serve coroutine as a task on the
  worker's loop instead of starting a thread; :meth:`InLoopConsumerThread.stop` awaits it;
* :meth:`InLoopConsumerThread.call_thread` awaits the method instead of queueing it;
* at shutdown only the service's own tasks are cancelled: Faust's thread sweeps every
  task of its private loop, which here is the worker's.

The rebalance callbacks still go through the consumer's main-loop method queue (the
same loop now), so their order against fetches and commits is Faust's. What changes:
heartbeats and fetch responses wait while the agent computes a step, as in a plain
aiokafka loop (a step is tens of milliseconds; the session timeout is seconds).

:func:`use_in_loop_consumer` selects it for one app (``FLAGSTREAM_CONSUMER_IN_LOOP``,
on by default).

>>> from flagstream.streams.compat.in_loop_consumer import InLoopConsumerThread
>>> InLoopConsumerThread.call_thread is not InLoopConsumerThread.__mro__[1].call_thread
True
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

#: Attribute of a Faust app that asks for the in-loop consumer.
_ATTR = "_flagstream_consumer_in_loop"
_original_new_thread = faust_aiokafka.Consumer._new_consumer_thread


class InLoopConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer service, run as tasks on the caller's event loop."""

    _serving: asyncio.Task[None] | None = None

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        loop = kwargs.pop("loop", None) or asyncio.get_event_loop_policy().get_event_loop()
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        """Start the consumer on this loop; return once it is started (or raise its error)."""
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = self.parent_loop.create_future()
        self._serving = self.parent_loop.create_task(self._serve_here())
        try:
            if not self.should_stop:
                await self._thread_running
        finally:
            self._thread_running = None

    async def _serve_here(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            pass
        except BaseException:  # noqa: BLE001 - _serve already logged it and crashed the app
            self.set_shutdown()

    async def stop(self) -> None:
        """Stop the consumer and wait until its serve task has shut it down."""
        if self._started.is_set():
            await Service.stop(self)
            if self._serving is not None and not self._serving.done():
                await asyncio.shield(self._serving)

    async def _gather_remaining_tasks(self) -> None:
        """Nothing: the loop is the worker's, its other tasks are not this service's."""

    async def call_thread(
        self, fun: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Call ``fun`` here (awaiting it when it is a coroutine): there is no other thread."""
        result = fun(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    async def cast_thread(
        self, fun: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """Call ``fun`` here without waiting for it (a coroutine becomes a task of this service)."""
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            self.add_future(result)


def _new_consumer_thread(self: Any) -> Any:
    if getattr(self.app, _ATTR, False):
        return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)
    return _original_new_thread(self)


def use_in_loop_consumer(app: Any, enabled: bool = True) -> None:
    """Have ``app``'s consumer (created after this call) run on the worker's event loop."""
    setattr(app, _ATTR, enabled)
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
