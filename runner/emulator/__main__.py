"""CLI: ``python -m runner.emulator --port 8321 [--time-scale 0.05] [--faults 0.2]
[--region intl] [--latency lognormal:8:60] [--no-timestamps]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import structlog

from runner.emulator.config import EmulatorConfig
from runner.emulator.faults import FaultConfig
from runner.emulator.latency import parse_profile
from runner.emulator.server import Emulator


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not within [0, 1]")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.emulator",
        description="Serve a local DashScope image-API emulator until Ctrl-C.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    add("--port", type=int, default=0, help="port (default: a free one)")
    add("--time-scale", type=_non_negative, default=1.0,
        help="latency multiplier: 1 real, 0.05 fast, 0 instant (default 1)")
    add("--seed", type=int, default=0, help="seed for latencies and faults")
    add("--faults", type=_fraction, default=0.0,
        help="share of answers that get a transient fault, e.g. 0.2")
    add("--no-quotas", action="store_true", help="disable quotas and rate limits")
    add("--api-key", action="append", dest="api_keys",
        help="accept only this key (repeatable; default: any key)")
    add("--region", choices=("cn", "intl"), default="cn",
        help="which region's models to serve when the Host names none (default cn)")
    add("--latency", action="append", default=[], metavar="[MODEL=]PROFILE",
        help="latency profile, uniform:MIN:MAX or lognormal:MEDIAN:P99 (seconds, scaled by "
        "--time-scale), for every model or one (repeatable)")
    add("--no-timestamps", action="store_true",
        help="polls omit submit_time/scheduled_time/end_time")
    add("--verbose", action="store_true", help="log debug events")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a valid port")
    try:
        args.latency = _latency(args.latency)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _latency(items: list[str]) -> str | dict[str, str] | None:
    """["lognormal:8:60"] -> the profile; ["qwen-image-edit=uniform:5:15", ...] -> a dict."""
    if not items:
        return None
    table: dict[str, str] = {}
    for item in items:
        model, sep, profile = item.rpartition("=")
        table[model if sep else "*"] = profile
    for profile in table.values():
        parse_profile(profile)
    return table["*"] if list(table) == ["*"] else table


async def serve(config: EmulatorConfig) -> None:
    async with Emulator(config) as emu:
        print(f"DashScope emulator: base URL {emu.base_url}", flush=True)
        print(f"  export DASHSCOPE_HTTP_BASE_URL={emu.base_url}", flush=True)
        print(f"  judge (OpenAI-compatible): {emu.compatible_url}", flush=True)
        print(f"  stats: {emu.root_url}/_emulator/stats   (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    # Logs to stderr: stdout carries only the URLs, for scripts that read them.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        time_scale=args.time_scale,
        seed=args.seed,
        quotas_enabled=not args.no_quotas,
        faults=FaultConfig(transient=args.faults),
        api_keys=frozenset(args.api_keys) if args.api_keys else None,
        region=args.region,
        latency=args.latency,
        timestamps=not args.no_timestamps,
    )
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        print("emulator stopped", file=sys.stderr)
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
