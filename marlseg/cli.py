"""The command line every workflow shares.

``python workflows/NN_stage.py config.json [--set section.key=value ...] [--print-config]``.
User-fixable problems print one line, ``error: <field path or file>: <problem>``, and exit with
code 2 (1 for a stage whose blocks failed); nothing is written before the config and the
inputs have been checked.
"""

from __future__ import annotations

import argparse
import logging
import sys

from marlseg.config import dump_config, load_config
from marlseg.errors import MarlsegError
from marlseg.stages import get_stage


def build_parser(stage: str, prog: str | None = None) -> argparse.ArgumentParser:
    cls = get_stage(stage)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(cls.description or cls.__doc__ or stage).strip().splitlines()[0],
        epilog="Config reference: README.md#config. Sizes are in nm (world units).",
    )
    parser.add_argument("config", help="run config (JSON)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (JSON-parsed; repeatable), e.g. --set workers.num_workers=4",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config (with defaults and overrides) and exit",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="forget the blocks done by an earlier run of this stage and recompute them",
    )
    add = getattr(cls, "add_arguments", None)
    if add is not None:
        add(parser)
    return parser


def main(stage: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(stage, prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.set)
        if args.print_config:
            print(dump_config(config))
            return 0
        instance = get_stage(stage)(config)
        instance.options = args
        instance.check()
        instance.run(restart=args.restart)
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"error: {stage}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
