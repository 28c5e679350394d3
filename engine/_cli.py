"""Command line: `python -m engine upload INPUT [options]` and friends (SPEC section 6).

A thin layer: it turns options into an UploadJob, runs it, prints the report and maps
the outcome to an exit code. The library underneath never exits or touches signals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import replace
from typing import Any

import orjson

from ._api import Uploader
from ._errors import InputError
from ._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION
from ._options import DEFAULT_CONCURRENCY, MODES, check_bounds
from ._quota.limiter import LimiterConfig
from ._report import Progress, ProgressFn, Report
from ._resume.checkpoint import Checkpoint, default_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
DEFAULT_GRACE_S = 30.0
# A report is a few kilobytes; a bigger file at --report is not one.
MAX_REPORT_BYTES = 16 << 20
log = logging.getLogger("engine")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 too; say it our way
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _map_option(text: str) -> tuple[str, str]:
    key, sep, column = text.partition("=")
    if not sep or not key or not column:
        raise argparse.ArgumentTypeError(f"--map takes KEY=column, got {text!r}")
    return key.strip().upper(), column.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audience-engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upload", help="upload a people list to a Custom Audience")
    # Every default is None so a --config file can fill what the command line leaves out.
    up.add_argument(
        "input", help="file to read (csv, jsonl, parquet, optionally .gz) or - for stdin"
    )
    up.add_argument("--config", help="TOML file with options; command-line values win")
    up.add_argument("--audience", help="Custom Audience id (required)")
    up.add_argument("--ad-account", help="ad account that owns it, act_ID (required)")
    up.add_argument("--mode", choices=MODES, help="add (default), remove or replace")
    up.add_argument("--schema", help="keys in payload order, e.g. EMAIL,PHONE; default: inferred")
    up.add_argument(
        "--map",
        action="append",
        type=_map_option,
        metavar="KEY=column",
        help="column for a key (repeatable)",
    )
    up.add_argument("--format", choices=("csv", "jsonl", "parquet"), help="default: from the name")
    up.add_argument(
        "--prehashed",
        action="store_true",
        default=None,
        help="values are already normalized and hashed",
    )
    up.add_argument("--default-country-code", help="calling code for phones without one, e.g. 1")
    up.add_argument("--batch-size", type=int, help="rows per request (max and default 10000)")
    up.add_argument(
        "--concurrency",
        type=int,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    up.add_argument("--workers", type=int, help="hashing processes (default: by input size)")
    up.add_argument("--api-base", help=f"default {DEFAULT_API_BASE}")
    up.add_argument("--api-version", help=f"default {DEFAULT_API_VERSION}")
    up.add_argument("--session-id", type=int, help="default: random")
    up.add_argument("--report", help="write the JSON report there")
    up.add_argument("--rejects", dest="rejects_path", help="write rejected rows there (CSV)")
    up.add_argument("--dry-run", action="store_true", default=None, help="send nothing")
    up.add_argument(
        "--allow-empty-replace",
        action="store_true",
        default=None,
        help="let a replace with zero valid rows empty the audience",
    )
    up.add_argument(
        "--checkpoint", help="progress file; the same command resumes (default: per job)"
    )
    up.add_argument(
        "--no-checkpoint", action="store_true", default=None, help="keep no progress file"
    )
    up.add_argument(
        "--restart",
        action="store_true",
        default=None,
        help="start over in a new session even if the checkpoint says the job is unfinished",
    )
    up.add_argument(
        "--grace", type=float, help="seconds in-flight requests get after a signal (default 30)"
    )
    up.add_argument(
        "--session-window",
        dest="session_window_s",
        type=float,
        help="Meta's session window in seconds (default 5400; for fakes with a time scale)",
    )
    up.add_argument("--max-retries", type=int, help="retries of a transient failure (default 8)")
    up.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=float,
        help="seconds to connect (default 10)",
    )
    up.add_argument(
        "--read-timeout",
        dest="read_timeout_s",
        type=float,
        help="seconds to wait for any reply data before retrying (default 120)",
    )
    up.add_argument("--rate", type=float, help="requests/s per ad account at full speed")
    up.add_argument(
        "--burst", type=int, help="requests an ad account may send at once after a lull"
    )
    up.add_argument("--max-throttle-wait", type=float, help="longest pause on a throttle (s)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    up.add_argument("-v", "--verbose", action="store_true", help="log retries and throttles")

    fake = sub.add_parser("fake-graph", help="run the built-in fake Graph API", add_help=False)
    fake.add_argument("args", nargs=argparse.REMAINDER)
    status = sub.add_parser("status", help="show a job's progress from its checkpoint")
    status.add_argument("--checkpoint", required=True, help="the job's progress file")
    demo = sub.add_parser("demo", help="upload a generated file to the built-in fake Graph API")
    demo.add_argument("--rows", type=int, default=50_000)
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line values over the --config file's."""
    merged: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                merged = {k.replace("-", "_"): v for k, v in tomllib.load(f).items()}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"cannot read config {args.config}: {exc}") from None
    merged.update({k: v for k, v in vars(args).items() if v is not None})
    if merged.get("map"):
        merged["column_map"] = dict(merged.pop("map"))
    if isinstance(merged.get("column_map"), dict):
        merged["column_map"] = {k.upper(): v for k, v in merged["column_map"].items()}
    return merged


_UPLOAD_OPTIONS = frozenset(inspect.signature(Uploader.upload).parameters) - {"self", "source"}


def _upload_options(options: dict[str, Any]) -> dict[str, Any]:
    for required in ("audience", "ad_account"):
        if not options.get(required):
            raise InputError(f"--{required.replace('_', '-')} is required")
    kwargs = {k: v for k, v in options.items() if k in _UPLOAD_OPTIONS}
    if options.get("no_checkpoint") or options.get("dry_run"):
        kwargs.pop("checkpoint", None)
    elif not options.get("checkpoint"):
        source = options["input"]
        where = source if source == "-" else os.path.abspath(source)
        job = f"{where}|{options['audience']}|{options['ad_account']}|{options.get('mode', 'add')}"
        kwargs["checkpoint"] = str(default_path(job))
    return kwargs


def _limits(options: dict[str, Any]) -> LimiterConfig:
    config = LimiterConfig()
    changes: dict[str, Any] = {}
    if options.get("rate") is not None:
        rate = float(options["rate"])
        changes.update(
            rate=rate,
            burst=max(1, min(config.burst, int(rate))),
            min_rate=min(config.min_rate, rate),
        )
    if options.get("burst") is not None:
        changes["burst"] = options["burst"]
    if options.get("max_throttle_wait") is not None:
        changes["max_throttle_wait_s"] = options["max_throttle_wait"]
    try:
        return replace(config, **changes)
    except ValueError as exc:
        raise InputError(f"rate limit options: {exc}") from None


def _unrecorded(report_path: str | None) -> Any:
    """The `unrecorded_batches` of the report an earlier run left at `report_path`: batches
    the API acknowledged that its checkpoint could not record, so that running the same
    command again does not send them again. None when there is no such report (a file that
    is no report is overwritten, as always)."""
    if not report_path:
        return None
    try:
        with open(report_path, "rb") as f:
            report = orjson.loads(f.read(MAX_REPORT_BYTES))
    except (OSError, orjson.JSONDecodeError):
        return None
    return report.get("unrecorded_batches") if isinstance(report, dict) else None


async def _upload(options: dict[str, Any]) -> int:
    # The options only the command line has; the job checks its own (UploadJob).
    check_bounds(**{k: options.get(k) for k in ("grace", "rate", "burst", "max_throttle_wait")})
    kwargs = _upload_options(options)
    if "checkpoint" in kwargs:
        kwargs["unrecorded_batches"] = _unrecorded(options.get("report"))
    uploader = Uploader(
        api_base=options.get("api_base") or DEFAULT_API_BASE,
        api_version=options.get("api_version") or DEFAULT_API_VERSION,
        limits=_limits(options),
    )
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None

    grace = float(options.get("grace", DEFAULT_GRACE_S))

    def on_signal() -> None:
        # First signal: stop gracefully (in-flight requests finish, within the grace
        # period). Second: at once. Either way the checkpoint stays consistent.
        if stop.is_set():
            task.cancel()
        else:
            print("stopping: letting requests in flight finish (again to force)", file=sys.stderr)
            stop.set()
            loop.call_later(grace, task.cancel)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        show = not options.get("quiet") and sys.stderr.isatty()
        async with uploader:
            with _progress_bar(show) as progress:
                report = await uploader.upload(
                    options["input"], progress=progress, stop=stop, **kwargs
                )
    except asyncio.CancelledError:
        where = kwargs.get("checkpoint")
        saved = f"progress is saved in {where}; " if where else ""
        print(
            f"interrupted: stopped at once; {saved}run the same command to resume", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    _emit(report, options.get("report"))
    return {"completed": EXIT_OK, "dry_run": EXIT_OK, "failed": EXIT_FAILED}.get(
        report.status, EXIT_INTERRUPTED
    )


def _status(path: str) -> int:
    """Print what a checkpoint says about its job, without touching the API."""
    if not os.path.exists(path):
        print(f"error: no checkpoint at {path}", file=sys.stderr)
        return EXIT_USAGE
    checkpoint = Checkpoint(path)
    try:
        record = checkpoint.load()
    finally:
        checkpoint.close()
    if record is None:
        print(f"error: {path} holds no job", file=sys.stderr)
        return EXIT_USAGE
    received: dict[int, int] = {}
    for b in record.batches.values():
        received[b.session_id] = max(received.get(b.session_id, 0), b.num_received or 0)
    status = {
        "job": orjson.loads(record.identity),
        "state": record.state,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "sessions": [
            {
                "session_id": s.session_id,
                "mode": s.mode,
                "started_at": s.started_at,
                "closed": s.closed,
                "batches_acknowledged": sum(
                    1 for b in record.batches.values() if b.session_id == s.session_id
                ),
            }
            for s in record.sessions
        ],
        "batches_sent": len(record.batches),
        "rows_sent": sum(b.rows for b in record.batches.values()),
        "num_received": sum(received.values()),
        "retries": record.retries,
        "throttled": record.throttled,
    }
    sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _emit(report: Report, path: str | None) -> None:
    data = orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2)
    sys.stdout.write(data.decode() + "\n")
    sys.stdout.flush()
    if path:
        try:
            with open(path, "wb") as f:
                f.write(data + b"\n")
        except OSError as exc:  # a full disk: the report on stdout is all there is
            print(f"error: cannot write the report to {path}: {exc}", file=sys.stderr)
    if report.error:
        e = report.error
        print(
            f"error: Graph API {e['code']}/{e['subcode']}: {e['message']}"
            + (f" — {e['user_title']}: {e['user_msg']}" if e.get("user_msg") else ""),
            file=sys.stderr,
        )
    elif report.message:
        print(f"{report.status}: {report.message}", file=sys.stderr)


@contextlib.contextmanager
def _progress_bar(show: bool) -> Iterator[ProgressFn | None]:
    """A progress bar on stderr fed by the job's progress events; nothing when not a terminal."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    with tqdm(unit=" rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True) as bar:

        def update(p: Progress) -> None:
            bar.n = p.rows_read
            bar.set_postfix(
                sent=p.rows_sent,
                batches=f"{p.batches_sent}/{p.batches_total}",
                throttled=p.throttled,
                refresh=False,
            )
            bar.refresh()

        yield update


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake-graph"]:
        # The fake has its own options; hand them over untouched.
        from .testing.fakegraph import serve

        serve(argv[1:])
        return EXIT_OK
    if argv[:1] == ["worker"]:
        from ._worker.app import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return _status(args.checkpoint)
    if args.command == "demo":
        from .testing.demo import demo

        return demo(args.rows)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(_upload(_options(args)))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
