"""``python -m mlxctl.gateway --config FILE --host H --port P`` (key in the environment)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from mlxctl.gateway.server import serve
from mlxctl.machine.clock import SystemClock
from mlxctl.runtimes import server_log


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mlxctl.gateway")
    parser.add_argument("--config", type=Path, required=True, help="the routes file (JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    clock = SystemClock()
    server_log.keep_log(clock)  # its log, rotated by size (mlxctl started it with one)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional: asyncio's loop serves too, a bit slower
        pass
    asyncio.run(serve(args.config, args.host, args.port, clock=clock))


if __name__ == "__main__":
    main()
