"""flagstream: real-time transaction-fraud scoring on Kafka.

One namespace, one folder per part (imports run one way, down this list):

- :mod:`flagstream.codec`, :mod:`flagstream.cards` — the JSON codec and the card-number
  mask; they import nothing of ours, everything may use them.
- :mod:`flagstream.features` — per-account and per-merchant state, Numba kernels.
- :mod:`flagstream.scoring` — models, the decision policy, versions and snapshots.
- :mod:`flagstream.sinks` — outputs: dead letters, Prometheus metrics, the review page.
- :mod:`flagstream.streams` — Kafka and Faust: settings, topics, wire validation, agents.
- :mod:`flagstream.simulation`, :mod:`flagstream.evaluation`, :mod:`flagstream.perf`,
  :mod:`flagstream.demo` — the simulated world, the detection backtest, the benchmark
  harness and the demo; :mod:`flagstream.cli` — the ``flagstream`` command.

>>> import flagstream
>>> flagstream.__version__
'0.2.0'
"""

__version__ = "0.2.0"
