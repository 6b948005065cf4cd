"""``python -m flagstream.perf compare``: the side-by-side benchmark; ``python -m flagstream.perf
decode``: the transaction decoder's batch path (and the decisions' context fields and reasons)
against its per-record reference; ``python -m
flagstream.perf steps``: the scoring core's cost per call by step size.

See :mod:`flagstream.perf.bench.harness`, :mod:`flagstream.perf.bench.decode` and
:mod:`flagstream.perf.bench.step_cost`.

>>> build_parser().parse_args(["compare", "--rates", "1000,5000"]).rates
(1000, 5000)
>>> build_parser().parse_args(["decode", "--batch", "500"]).batch
500
>>> build_parser().parse_args(["steps", "--sizes", "1,2"]).sizes
(1, 2)
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from flagstream.perf.bench.contenders import CONTENDERS


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 1000,5000, got {text!r}") from exc


def _names(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown contenders {sorted(unknown)}; known: {sorted(CONTENDERS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from flagstream.perf.bench.harness import Options
    from flagstream.scoring.handle import MODEL_KINDS

    d = Options()
    parser = argparse.ArgumentParser(prog="python -m flagstream.perf")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="flagstream vs a naive Faust agent vs the aiokafka ceiling")
    c.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    c.add_argument("--events", type=int, default=d.events, help="records pre-loaded for throughput")
    c.add_argument("--rates", type=_ints, default=d.rates, help="fixed rates for latency, e.g. 1000,5000")
    c.add_argument("--api-rates", type=_ints, default=d.api_rates,
                   help="rates of the API and mixed contenders (calls per second), e.g. 500,1000,2000")
    c.add_argument("--rate-seconds", type=float, default=d.rate_seconds, help="seconds per rate")
    c.add_argument("--train", type=int, default=d.train, help="records the champion is trained on")
    c.add_argument("--partitions", type=int, default=d.partitions)
    c.add_argument("--threshold", type=float, default=d.threshold, help="decision threshold")
    c.add_argument("--model", choices=sorted(MODEL_KINDS), default=d.model,
                   help="kind of champion every contender scores with (default: the default champion's)")
    c.add_argument("--contenders", type=_names, default=d.contenders, help="comma-separated")
    c.add_argument("--stream", help="recorded stream (default: the reference one, or a new one)")
    c.add_argument("--out-dir", default=d.out_dir, help="where compare.json/.png and logs go")
    c.add_argument("--broker", default=d.broker)
    c.add_argument("--no-chart", dest="chart", action="store_false")
    c.add_argument("--keep-topics", action="store_true", help="leave the run's topics on the broker")
    dec = sub.add_parser("decode", help="decoding, context fields, reasons: batch path vs per-record "
                                        "reference, µs/record")
    dec.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    dec.add_argument("--records", type=int, default=20_000, help="records decoded per repeat")
    dec.add_argument("--batch", type=int, default=1_000, help="records per batch")
    dec.add_argument("--repeats", type=int, default=7, help="timings per path (the median is reported)")
    dec.add_argument("--bad-share", type=float, default=0.01, help="share of bad records, second workload")
    dec.add_argument("--stream", help="recorded stream (default: the reference one, or a new one)")
    dec.add_argument("--out-dir", default=d.out_dir, help="where a new stream is written")
    st = sub.add_parser("steps", help="the scoring core's CPU per call and per record, by step size")
    st.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    st.add_argument("--sizes", type=_ints, default=(1, 2, 4, 64), help="records per step, e.g. 1,2,64")
    st.add_argument("--calls", type=int, default=2_000, help="calls per size and repeat")
    st.add_argument("--repeats", type=int, default=5, help="timings per size (the median is reported)")
    st.add_argument("--train", type=int, default=10_000, help="records the champion is trained on")
    st.add_argument("--partitions", type=int, default=4,
                    help="also time steps routed over this many partitions, one call and a call "
                         "per partition (0: not)")
    st.add_argument("--stream", help="recorded stream (default: the reference one, or a new one)")
    st.add_argument("--out-dir", default=d.out_dir, help="where a new stream is written")
    return parser


def _steps(args: argparse.Namespace) -> int:
    from flagstream.codec import dumps
    from flagstream.perf.bench import step_cost

    report = step_cost.run(args.stream, args.out_dir, args.train, args.sizes, args.calls, args.repeats,
                           args.partitions or None)
    print(dumps({str(k): v for k, v in report.items()}).decode() if args.json else step_cost.table(report))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from flagstream.codec import dumps
    from flagstream.perf.bench import decode

    report = decode.run(args.stream, args.out_dir, args.records, args.batch, args.repeats, args.bad_share)
    print(dumps(report).decode() if args.json else decode.table(report))
    if not all(r["agree"] for r in report.values()):
        print("FAIL: the batch decoder's result differs from the reference's", file=sys.stderr)
        return 1
    return 0


def _table(report: dict) -> str:
    def fmt(v, spec):
        return format(v, spec) if isinstance(v, int | float) and math.isfinite(v) else "-"

    lines = [f"{'contender':18} {'events/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
             f"{'CPU s/1k':>9} {'peak MB':>8} {'agree':>7}"]
    agreement = report["agreement"]
    contenders: dict[str, dict[str, Any]] = report["contenders"]
    for name, c in contenders.items():
        share = agreement.get(name, {}).get("share", 1.0 if name == agreement.get("reference") else None)
        lines.append(
            f"{name:18} {fmt(c.get('events_per_s'), ',.0f'):>10} {fmt(c.get('p50_ms'), '.1f'):>8} "
            f"{fmt(c.get('p95_ms'), '.1f'):>8} {fmt(c.get('p99_ms'), '.1f'):>8} "
            f"{fmt(c.get('cpu_s_per_1k'), '.3f'):>9} {fmt(c.get('peak_rss_mb'), '.0f'):>8} "
            f"{fmt(share, '.4f'):>7}"
        )
    lines.append("p50 / p99 ms per rate (api: call to answer; stream: produce to decision)")
    for name, c in contenders.items():
        cells = []
        for rate, lat in c.get("latency", {}).items():
            cell = f"{rate}/s {fmt(lat.get('p50_ms'), '.0f')}/{fmt(lat.get('p99_ms'), '.0f')}"
            if "api" in lat:
                cell += f" (api {fmt(lat['api']['p50_ms'], '.0f')}/{fmt(lat['api']['p99_ms'], '.0f')})"
            cells.append(cell)
        lines.append(f"  {name:18} " + "  ".join(cells))
    lines.append(f"goals: {report['goals']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from flagstream.codec import dumps
    from flagstream.perf.bench.harness import Options, passed, run

    args = build_parser().parse_args(argv)
    if args.command == "decode":
        return _decode(args)
    if args.command == "steps":
        return _steps(args)
    opts = Options(events=args.events, rates=args.rates, api_rates=args.api_rates,
                   rate_seconds=args.rate_seconds, train=args.train,
                   partitions=args.partitions, threshold=args.threshold, model=args.model,
                   contenders=args.contenders,
                   stream=args.stream, out_dir=args.out_dir, broker=args.broker, chart=args.chart,
                   keep_topics=args.keep_topics)
    report = run(opts)
    if args.json:
        print(dumps(report).decode())
    else:
        print(_table(report))
    if not passed(report):
        compared = "flagstream_matches_ceiling" in report["agreement"]
        print("FAIL: flagstream's decisions differ from the aiokafka ceiling's" if compared else
              "FAIL: flagstream's decisions were not compared with the aiokafka ceiling's "
              "(run both contenders: nothing was proved)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
