"""Process-level settings for a worker that scores: the allocator and the garbage collector.

Both were found by profiling the hot path; the scorer applies them when it starts
(:mod:`flagstream.streams.scorer_agent`), and the benchmark's plain-client loop applies the
same ones so the comparison is fair.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

#: glibc ``mallopt`` parameters.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(
    trim_threshold: int = 256 << 20, top_pad: int = 64 << 20, mmap_threshold: int = 32 << 20
) -> bool:
    """Keep freed heap memory mapped instead of handing it back to the OS after every batch.

    A batch allocates and frees megabytes (decision dicts, their JSON, feature
    matrices). With glibc's defaults the heap top is trimmed as soon as 128 KiB are
    free and blocks of 128 KiB or more get their own ``mmap``, so every batch faults
    its memory in again: profiled at ~1.9 page faults and ~7 µs per decision for the
    encoding step alone, 0 and ~1 µs with these settings. Costs: the worker keeps
    its peak heap resident. Returns False where ``mallopt`` is unavailable (not glibc).

    >>> isinstance(tune_allocator(), bool)
    True
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold),
            (M_TOP_PAD, top_pad),
        )
    )


def tune_gc(threshold0: int = 20_000) -> None:
    """Collect once, then keep everything alive so far out of later collections.

    Call when the worker is ready. Full collections otherwise walk every object the
    process holds (Faust, aiokafka cluster metadata, tables, models): measured at
    45–125 ms pauses every few seconds while scoring (and 430 ms at start), which
    made up the latency tail. ``gc.freeze()`` moves the survivors to the permanent
    generation; a higher first threshold makes young collections rarer (batches
    allocate in bursts and free by reference counting). Garbage cycles are still
    collected, among objects created after the freeze.

    >>> import gc; tune_gc(); gc.get_threshold()[0]
    20000
    >>> gc.unfreeze()
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold0, gen1, gen2)
