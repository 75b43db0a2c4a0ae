"""``tracker-daemon bench`` on the command line: its options, and the loop over scenarios and
repeats that writes the table and the JSON document."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tracker_client

from .. import __version__
from ..ops.progress import Progress
from . import __doc__ as _PACKAGE_DOC
from .everyday import EVERYDAY_RATES
from .harness import BenchError, Ctx, Procs, Skipped
from .report import summarize, table, verdicts
from .scenarios import RUNNERS, SCENARIOS

# --help: the package docstring's user-facing part, without its first line and reST quoting
DESCRIPTION = "Benchmark the client, the daemon and the MLflow backend.\n\n" + (
    (_PACKAGE_DOC or "").split("\n\n", 1)[-1].replace("``", "'")
)

DEFAULTS = {  # option: (default, --quick)
    "calls": (200_000, 20_000),
    "workers": (16, 2),
    "metrics": (250, 200),
    "keys": (10, 10),
    "cap": (20.0, 5.0),
    "rate": (0.0, 500.0),
    "duration": (10.0, 2.0),
    "paced_workers": (8, 4),
    "idle_seconds": (10.0, 3.0),
    "burst": (100_000, 10_000),
    "rest_metrics": (1_000, 50),
    "rest_seconds": (20.0, 1.0),
    "backlog": (5_000_000, 300_000),
    "producers": (4, 2),
}


def add_parser(sub: Any) -> None:
    """Register ``tracker-daemon bench`` on the CLI's subparsers."""
    ap = sub.add_parser(
        "bench",
        help="benchmark the client, the daemon and the backend",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, metavar="N", help="repeats per scenario (default: 3)"
    )
    ap.add_argument(
        "--json",
        action="store_true",
        help="print the JSON document on stdout and the table on stderr (default: the table on "
        "stdout)",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary state dirs and logs, and print where (default: removed)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (the --quick figures below), for a quick check",
    )
    ap.add_argument(
        "--backend-store-uri",
        metavar="URI",
        help="write to this MLflow backend instead of a fresh SQLite store per repeat "
        "(default: fresh SQLite stores)",
    )
    for name, kind, text in (
        ("calls", int, "client: log_metric calls"),
        ("workers", int, "throughput: processes"),
        ("metrics", int, "throughput: steps per worker"),
        ("keys", int, "throughput: keys/step"),
        ("cap", float, "throughput: time cap (s) of the ceiling and direct runs"),
        ("rate", float, "latency: offered metrics/s (0: half the default daemon's committed/s)"),
        ("duration", float, "latency, everyday: seconds of load"),
        ("paced_workers", int, "everyday: paced worker processes"),
        ("idle_seconds", float, "everyday: seconds the idle daemon's CPU is measured over"),
        ("burst", int, "drain: metrics"),
        ("rest_metrics", int, "rest: steps per worker of the full-rate write, at least"),
        ("rest_seconds", float, "rest: seconds idle; the write is sized to last as long"),
        ("backlog", int, "memory: records held"),
        ("producers", int, "memory: processes"),
    ):
        full, quick = DEFAULTS[name]
        ap.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            metavar="N" if kind is int else "X",
            help=f"{text} (default: {full:g}; --quick: {quick:g})".replace("e+06", " million"),
        )
    ap.add_argument(
        "--rates",
        type=_rates,
        default=EVERYDAY_RATES,
        metavar="R,R,...",
        help="everyday: total points/s, one daemon per rate and sink (default: "
        f"{','.join(str(r) for r in EVERYDAY_RATES)})",
    )
    ap.add_argument(
        "--memory-drain",
        action="store_true",
        help="memory: also time the drain of the held backlog (default: off)",
    )
    ap.set_defaults(func=run_bench)


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be > 0: {text!r}")
    return rates


def run_bench(args: argparse.Namespace) -> int:
    scenarios = args.scenarios or list(SCENARIOS)
    if set(scenarios) - set(SCENARIOS) or args.repeat < 1:
        print(
            f"tracker-daemon bench: scenarios are {', '.join(SCENARIOS)}; --repeat >= 1",
            file=sys.stderr,
        )
        return 2
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    root = Path(tempfile.mkdtemp(prefix="tracker-daemon-bench-"))
    ctx = Ctx(args, Procs(root / "logs"))
    started, load0 = time.monotonic(), os.getloadavg()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    chosen = [s for s in SCENARIOS if s in scenarios]
    # repeats done of all; on a terminal the line is drawn as each repeat starts
    shown = Progress.to_stream("bench", "repeats", len(chosen) * args.repeat, every_s=0.0)
    try:
        for i, scen in enumerate(chosen):
            res, values = ctx.results.setdefault(scen, {}), dict[str, list[float]]()
            try:
                for rep in range(1, args.repeat + 1):
                    rep_dir, t0 = root / scen / f"r{rep}", time.monotonic()
                    rep_dir.mkdir(parents=True)
                    if shown.tty:
                        shown.extra = f"{scen} {rep}/{args.repeat}"
                        shown.update(i * args.repeat + rep - 1)
                    for k, v in RUNNERS[scen](ctx, rep, rep_dir).items():
                        values.setdefault(k, []).append(v)
                    if not shown.tty:
                        took = time.monotonic() - t0
                        print(f"bench: {scen} {rep}/{args.repeat}: {took:.1f} s", file=sys.stderr)
                        shown.extra = f"scenario={scen} repeat={rep}/{args.repeat}"
                        shown.update(i * args.repeat + rep)
            except Skipped as exc:
                shown.end()
                res["skipped"] = str(exc)
                print(f"bench: {scen}: skipped: {exc}", file=sys.stderr, flush=True)
            except (BenchError, tracker_client.TrackerError, OSError, KeyError) as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                ctx.procs.kill_all()
            res["figures"] = {k: summarize(f"{scen}/{k}", v) for k, v in values.items()}
        shown.extra = ""
        shown.finish(len(chosen) * args.repeat)
    finally:
        signal.signal(signal.SIGTERM, previous)
        ctx.procs.kill_all()
        shown.end()  # interrupted: the terminal line ends before anything else is printed
        if args.keep:
            print(f"bench: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    doc: dict[str, Any] = {
        "tool": "tracker-daemon bench",
        "version": __version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "scenarios_run": scenarios,
        "backend": args.backend_store_uri or "sqlite (fresh per repeat)",
        "settings": {k: getattr(args, k) for k in DEFAULTS},
        "loadavg_start": list(load0),
        "loadavg_end": list(os.getloadavg()),
        "elapsed_s": time.monotonic() - started,
        "scenarios": ctx.results,
    }
    doc["targets"] = verdicts(doc)
    doc["ok"] = all(
        not r.get("error") and all(c["ok"] for c in r.get("checks", []))
        for r in ctx.results.values()
    )
    print(table(doc), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0 if doc["ok"] else 1


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind, so that every child is killed
