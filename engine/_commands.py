"""The `inspect` and `audiences` commands: a list looked at before it is sent, and an ad
account's Custom Audiences listed, shown or created (docs/inspect.md, docs/audiences.md)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson

from ._errors import ApiError, InputError, TransportError
from ._graph.audience import CUSTOMER_FILE_SOURCES, AudienceInfo, Audiences
from ._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION
from ._input.remote import is_url, shown
from ._inspect.result import page, table
from ._inspect.run import ainspect
from ._options import Option, job_options

COMMANDS = ("inspect", "audiences")
# The upload options that say how the input reads: `inspect` takes them as `upload` does.
INPUT_OPTIONS = ("schema", "column_map", "format", "prehashed", "default_country_code", "workers")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Argument = Callable[[Option], dict[str, Any]]


def add_commands(sub: Any, argument: Argument, help_of: Callable[[Option], str]) -> None:
    ins = sub.add_parser("inspect", help="look at a people list before sending it")
    ins.add_argument("input", help="file or URL to read (csv, jsonl, parquet, optionally .gz) or -")
    for opt in job_options():
        if opt.field in INPUT_OPTIONS and opt.flag is not None:
            ins.add_argument(opt.flag, dest=opt.field, help=help_of(opt), **argument(opt))
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument("--report", help="write the JSON there")
    ins.add_argument("--html", help="write a self-contained HTML page there")

    aud = sub.add_parser("audiences", help="list, show or create Custom Audiences")
    verbs = aud.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="an ad account's Custom Audiences")
    ls.add_argument("--ad-account", required=True, help="act_ID")
    show = verbs.add_parser("show", help="one Custom Audience")
    show.add_argument("audience", help="its id")
    new = verbs.add_parser("create", help="create a customer-file Custom Audience")
    new.add_argument("--ad-account", required=True, help="act_ID")
    new.add_argument("--name", required=True)
    new.add_argument("--description")
    new.add_argument(
        "--customer-file-source",
        required=True,
        choices=CUSTOMER_FILE_SOURCES,
        help="where the people in it come from",
    )
    new.add_argument(
        "--value-based", action="store_true", help="rows carry a LOOKALIKE_VALUE column"
    )
    for parser in (ls, show, new):
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--api-base", default=DEFAULT_API_BASE, help="Graph API base URL")
        parser.add_argument("--api-version", default=DEFAULT_API_VERSION)


async def run_command(args: argparse.Namespace) -> int:
    if args.command == "inspect":
        return await _inspect(args)
    return await _audiences(args)


async def _inspect(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in INPUT_OPTIONS if getattr(args, k) is not None}
    if isinstance(options.get("column_map"), list):
        options["column_map"] = dict(options["column_map"])
    source: Any = sys.stdin.buffer if args.input == "-" else args.input
    result = await ainspect(source, **options)
    data = orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"
    sys.stdout.write(data.decode() if args.json else table(result))
    _write(args.report, data)
    if args.html:
        _write(args.html, page(result, f"Inspection of {_title(args.input)}").encode())
    return EXIT_OK


def _title(source: str) -> str:
    """The input's file name, for the page's title: a URL's without its query string."""
    return os.path.basename(shown(source) if is_url(source) else source)


def _write(path: str | None, data: bytes) -> None:
    if not path:
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None


async def _audiences(args: argparse.Namespace) -> int:
    try:
        async with Audiences(api_base=args.api_base, api_version=args.api_version) as audiences:
            if args.verb == "list":
                found = await audiences.list(args.ad_account)
            elif args.verb == "show":
                found = [await audiences.show(args.audience)]
            else:
                found = [
                    await audiences.create(
                        args.ad_account,
                        name=args.name,
                        description=args.description,
                        customer_file_source=args.customer_file_source,
                        value_based=args.value_based,
                    )
                ]
    except (ApiError, TransportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        out: Any = [a.to_dict() for a in found] if args.verb == "list" else found[0].to_dict()
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(_listing(found))
    return EXIT_OK


def _size(a: AudienceInfo) -> str:
    low, high = a.approximate_count_lower_bound, a.approximate_count_upper_bound
    if low is None or high is None:
        return "-"
    return f"{low:,}-{high:,}"


def _listing(found: list[AudienceInfo]) -> str:
    lines = [f"{'id':<20}{'subtype':<12}{'size':<22}{'status':<22}name"]
    for a in found:
        lines.append(
            f"{a.id:<20}{a.subtype or '-':<12}{_size(a):<22}{a.operation_status or '-':<22}"
            f"{a.name or ''}"
        )
    return "\n".join(lines) + "\n"
