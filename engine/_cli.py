"""Command line: `python -m engine upload INPUT [options]` and friends.

A thin layer: it turns options into an UploadJob, runs it, prints the report and maps
the outcome to an exit code. The library underneath never exits or touches signals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
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
from ._commands import COMMANDS, add_commands, run_command
from ._errors import InputError
from ._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION
from ._hints import did_you_mean
from ._options import Option, check_bounds, job_options
from ._quota.limiter import LimiterConfig
from ._report import Progress, ProgressFn, Report
from ._status import default_checkpoint, default_checkpoints, job_status

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


def _argument(opt: Option) -> dict[str, Any]:
    """How argparse reads one job option."""
    if opt.kind is bool:
        return {"action": "store_true", "default": None}
    if opt.kind is dict:  # column_map: --map KEY=column, repeatable
        return {"action": "append", "type": _map_option, "metavar": "KEY=column"}
    assert opt.flag is not None
    metavar = None if opt.choices else opt.flag[2:].upper().replace("-", "_")
    return {"type": opt.kind, "choices": opt.choices, "metavar": metavar}


# Options an environment variable may set when neither the command line nor --config does.
_ENV_DEFAULTS = {
    "api_base": "META_API_BASE",
    "api_version": "META_API_VERSION",
    "redis_url": "AUDIENCE_ENGINE_REDIS_URL",
}

_UPLOAD_EPILOG = """\
environment:
  META_ACCESS_TOKEN   the access token (required unless --dry-run; never on the command line)
  META_APP_SECRET     the app secret: turns on appsecret_proof (optional)
  META_API_BASE, META_API_VERSION   defaults of --api-base and --api-version
  AUDIENCE_ENGINE_REDIS_URL   default of --redis-url

exit codes:
  0  completed (or a dry run)
  1  the API refused the job, retries ran out, or the input broke after batches went out
  2  bad usage or input: nothing was sent
  3  interrupted (SIGINT/SIGTERM): run the same command again to resume
"""


def _help(opt: Option) -> str:
    if (env := _ENV_DEFAULTS.get(opt.field)) is not None:
        return f"{opt.help} (default ${env}, else {opt.default})"
    if opt.kind is bool or opt.default in (None, {}, ""):
        return opt.help
    return f"{opt.help} (default {opt.default})"


def _version() -> str:
    try:
        return importlib.metadata.version("audience-engine")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audience-engine", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "upload",
        help="upload a people list to a Custom Audience",
        epilog=_UPLOAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _job_arguments(up, "input")
    # Each has its own options (`worker --help`, `fake-graph --help`): main() hands them over.
    worker = sub.add_parser(
        "worker", help="run the job service pipelines hand uploads to over HTTP", add_help=False
    )
    worker.add_argument("args", nargs=argparse.REMAINDER)
    fake = sub.add_parser("fake-graph", help="run the built-in fake Graph API", add_help=False)
    fake.add_argument("args", nargs=argparse.REMAINDER)
    status = sub.add_parser(
        "status",
        help="show a job's progress from its checkpoint",
        description="Show a job's progress from its checkpoint, without calling the API: "
        "--checkpoint PATH, or the upload's own arguments (INPUT --audience --ad-account "
        "[--mode]) to find its default checkpoint.",
    )
    _job_arguments(status, "?")
    status.add_argument(
        "--list", action="store_true", help="list the checkpoints in the default folder"
    )
    demo = sub.add_parser("demo", help="upload a generated file to the built-in fake Graph API")
    demo.add_argument("--rows", type=int, default=50_000)
    add_commands(sub, _argument, _help)
    return parser


def _job_arguments(up: argparse.ArgumentParser, input_nargs: str) -> None:
    """An upload's arguments (status takes them too, to find the upload's checkpoint)."""
    # Every default is None so a --config file can fill what the command line leaves out.
    up.add_argument(
        "input",
        nargs=None if input_nargs == "input" else input_nargs,
        help="file or URL (s3://, gs://, az://, https://) to read (csv, jsonl, parquet, "
        "optionally .gz), or - for stdin",
    )
    up.add_argument("--config", help="TOML file with options; command-line values win")
    for opt in job_options():
        if opt.flag is not None:
            up.add_argument(opt.flag, dest=opt.field, help=_help(opt), **_argument(opt))
    up.add_argument("--report", help="write the JSON report there")
    up.add_argument(
        "--no-checkpoint", action="store_true", default=None, help="keep no progress file"
    )
    up.add_argument(
        "--grace",
        type=float,
        help=f"seconds in-flight requests get after a signal (default {DEFAULT_GRACE_S:g})",
    )
    limits = LimiterConfig()
    up.add_argument(
        "--rate",
        type=float,
        help=f"requests/s per ad account at full speed (default {limits.rate:g})",
    )
    up.add_argument(
        "--burst",
        type=int,
        help=f"requests an ad account may send at once after a lull (default {limits.burst})",
    )
    up.add_argument(
        "--max-throttle-wait",
        type=float,
        help=f"longest pause on a throttle, seconds (default {limits.max_throttle_wait_s:g})",
    )
    up.add_argument(
        "--redis-url",
        metavar="URL",
        help="share each ad account's quota through this Redis with every process given it "
        "(other uploads, a fleet of workers); needs the fleet extra",
    )
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    up.add_argument("-v", "--verbose", action="store_true", help="log retries and throttles")


# Options of the process, beside the job's (`job_options()`): their config-file names.
_PROCESS_KEYS = {
    "report": "report",
    "no-checkpoint": "no_checkpoint",
    "grace": "grace",
    "rate": "rate",
    "burst": "burst",
    "max-throttle-wait": "max_throttle_wait",
    "redis-url": "redis_url",
    "quiet": "quiet",
    "verbose": "verbose",
}


def _config_keys() -> dict[str, str]:
    """A config file's keys (the long option names) and the option each sets."""
    keys = {opt.flag[2:]: opt.field for opt in job_options() if opt.flag is not None}
    keys["column-map"] = "column_map"  # a TOML table reads better under its own name
    return {**keys, **_PROCESS_KEYS}


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read config {path}: {exc}") from None
    known = _config_keys()
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise InputError(f"config {path}: unknown option {key!r}{did_you_mean(key, known)}")
        options[known[key]] = value
    return options


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line values over the --config file's."""
    merged = _read_config(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if v is not None}
    if isinstance(given.get("column_map"), list):  # --map pairs
        given["column_map"] = dict(given["column_map"])
    merged.update(given)
    if isinstance(merged.get("column_map"), dict):
        merged["column_map"] = {k.upper(): v for k, v in merged["column_map"].items()}
    return merged


def _upload_options(options: dict[str, Any]) -> dict[str, Any]:
    """`Uploader.upload`'s keywords from the merged options."""
    for required in ("audience_id", "ad_account"):
        if not options.get(required):
            raise InputError(f"--{required.removesuffix('_id').replace('_', '-')} is required")
    kwargs = {
        opt.keyword: options[opt.field]
        for opt in job_options()
        if opt.keyword and opt.field in options
    }
    # A mirror keeps its progress beside its state (--state-dir), not in a checkpoint.
    if options.get("no_checkpoint") or options.get("dry_run") or options.get("mode") == "mirror":
        kwargs.pop("checkpoint", None)
    elif not options.get("checkpoint"):
        kwargs["checkpoint"] = default_checkpoint(options)
    return kwargs


def _status_command(args: argparse.Namespace) -> int:
    if args.list:
        _print_json(default_checkpoints())
        return EXIT_OK
    options = _options(args)
    if not options.get("checkpoint") and not (
        options.get("input") and options.get("audience_id") and options.get("ad_account")
    ):
        raise InputError(
            "status needs --checkpoint PATH, --list, or the upload's INPUT --audience "
            "--ad-account (and --mode) to find its checkpoint"
        )
    _print_json(job_status(options.get("checkpoint") or default_checkpoint(options)))
    return EXIT_OK


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


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
    if not options.get("dry_run") and not os.environ.get("META_ACCESS_TOKEN"):
        raise InputError("no access token: set META_ACCESS_TOKEN")
    env = {field: os.environ.get(name) for field, name in _ENV_DEFAULTS.items()}
    uploader = Uploader(
        api_base=options.get("api_base") or env["api_base"] or DEFAULT_API_BASE,
        api_version=options.get("api_version") or env["api_version"] or DEFAULT_API_VERSION,
        limits=_limits(options),
        redis_url=options.get("redis_url") or env["redis_url"],
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
        from ._worker.main import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "status":
        try:
            return _status_command(args)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "demo":
        from .testing.demo import demo

        return demo(args.rows)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command in COMMANDS:
            return _run(run_command(args))
        return _run(_upload(_options(args)))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
