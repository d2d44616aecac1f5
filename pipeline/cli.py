"""The ``segfuse`` command: parses arguments and calls into the modules, nothing more.

Each sub-command lives in its own module exposing ``register(subparsers)``, which
adds a parser and sets ``func``. Those modules import nothing heavy at module
level, so ``segfuse --help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import SegfuseError

log = logging.getLogger("segfuse")

# (module, ...) in the order they appear in --help. Each module has register(subparsers).
COMMAND_MODULES = (
    "pipeline.sim.cli",
    "pipeline.demo",
    "pipeline.run_cli",
    "pipeline.profile_cli",
    "calibration.cli",
    "pipeline.fusion.cli",
    "engines.cli",
    "engines.train_cli",
    "pipeline.listen_cli",
    "pipeline.fleet.cli",
    "pipeline.recover_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segfuse",
        description="Streaming edge perception: DeepLab + Mask R-CNN masks fused with LiDAR.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:      # every one is part of the package: a missing one is an error
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SegfuseError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
