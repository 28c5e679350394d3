"""`python -m engine fake-graph`: the fake's options, and serving it until stopped."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from ..throttle import ThrottleSpec
from .config import FakeConfig
from .server import FakeGraph


def serve(argv: Sequence[str] | None = None) -> None:
    """`python -m engine fake-graph ...`: serve until SIGINT or SIGTERM."""
    args = _parser().parse_args(argv)
    config = FakeConfig(
        token=args.token,
        app_secret=args.app_secret,
        latency=args.latency_ms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        throttle=args.throttle,
        rate_limit=args.rate_limit,
        time_scale=args.time_scale,
        lean=args.lean,
        seed=args.seed,
        replace_settle_s=args.replace_settle_s,
    )
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except OSError as exc:  # the port is taken, the address is not this host's...
        raise SystemExit(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}"
        ) from None


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    graph = FakeGraph(config)
    url = await graph.start(host, port)
    print(f"fake Graph API listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await graph.close()
    print("fake Graph API stopped", file=sys.stderr, flush=True)


def _latency_ms(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    lo = float(low) / 1000
    return lo, float(high) / 1000 if high else lo


def _rate(text: str) -> tuple[int, float]:
    calls, _, seconds = text.partition("/")
    return int(calls), float(seconds or 3600)


def _throttle(text: str) -> ThrottleSpec:
    try:
        return ThrottleSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine fake-graph",
        description="Run an offline fake of Meta's Custom Audience upload API.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--latency-ms", type=_latency_ms, default=(0.0, 0.0), metavar="A[-B]")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of HTTP 500 answers")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped connections")
    quota = p.add_mutually_exclusive_group()
    quota.add_argument(
        "--throttle",
        type=_throttle,
        metavar="NAME=VALUE,...",
        help="per ad account: shape=sliding|fixed|bucket, rate (calls/s), window_s (model "
        "seconds), time_scale (model seconds per second), kind=buc|app|ad_account, spent "
        "(share of the cap used before the first call)",
    )
    quota.add_argument(
        "--rate-limit", type=_rate, metavar="CALLS/SECONDS", help="per ad account, sliding"
    )
    p.add_argument("--token", help="the only access token accepted (default: any)")
    p.add_argument("--app-secret", help="require appsecret_proof made with this secret")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies Meta's 90 minutes")
    p.add_argument("--replace-settle-s", type=float, default=0.0)
    p.add_argument("--lean", action="store_true", help="count rows only (benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    return p
