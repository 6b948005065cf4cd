"""Side-by-side benchmarks of the flagstream worker and its peers on one real broker.

Modules
-------
workload
    The recorded input: a slice of a simulated stream (ground truth stripped), the
    champion trained on an earlier slice, topic set-up, pre-loading and paced replay.
measure
    Process CPU and memory from ``/proc``, the decisions read back from ``scores``,
    throughput, latency percentiles and agreement between contenders.
contenders
    How each contender process is started and what it is given.
harness
    ``python -m flagstream.perf compare``: runs every contender over the same input, writes
    ``artifacts/bench/compare.json`` and ``compare.png``.
naive_faust, aiokafka_ceiling
    The two peers, each runnable as ``python -m flagstream.perf.bench.<name>``.
api_contender
    ``flagstream api`` in front of one or more scorer workers; API calls (and mixed
    calls and stream records) at fixed rates.
stage_trace
    The worker with a timestamp per stage, and ``analyze``: where a decision's latency goes.
step_cost
    ``python -m flagstream.perf steps``: the scoring core's CPU per call by step size.
chart
    The PNG summary (matplotlib, Agg backend).
"""
