"""Command-line interface: ``labkit <command> ...``; ``labkit <command> --help`` describes each."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import yaml

from labkit.config import ConfigError, ExperimentConfig

logger = logging.getLogger("labkit")

Handler = Callable[[argparse.Namespace], int]


def parse_assignments(pairs: list[str], source: str = "command line") -> dict:
    """Turn ``key=value`` words into a dict, reading each value as YAML (``lr=1e-3`` is a float)."""
    from labkit.config import _Yaml12Loader

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: expected key=value, got {pair!r}")
        values[key.strip()] = yaml.load(text, Loader=_Yaml12Loader) if text else ""
    return values


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one network into a run folder",
        description="Train one network with the course's recipe. Settings are key=value pairs of "
                    "ExperimentConfig fields, e.g. num_blocks_per_stage=0 bn=true lr=1e-2 data=synthetic.")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="experiment settings")
    parser.add_argument("--out", required=True, type=Path, help="run folder for metrics and checkpoints")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the folder's latest checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace the results already in the folder")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from labkit.trainer import fit

    config = ExperimentConfig.from_dict(parse_assignments(args.settings), source="settings")
    result = fit(config, args.out, resume=args.resume, overwrite=args.overwrite)
    last = result.history[-1] if result.history else {}
    print(f"{config.label} [{result.data_source}] {result.status} after {len(result.history)} epochs: "
          f"val_acc {last.get('val_acc', float('nan')):.4f}, test_acc {result.test.get('test_acc', float('nan')):.4f}")
    return 0


# Each entry adds one subcommand; new commands register their builder here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train]


def _add_report_commands(subparsers: argparse._SubParsersAction) -> None:
    from labkit.report_cli import add_diagnose, add_table

    add_diagnose(subparsers)
    add_table(subparsers)


COMMANDS.append(_add_report_commands)


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    from labkit.runner import add_run_command

    add_run_command(subparsers)


COMMANDS.append(_add_run)


def build_parser() -> argparse.ArgumentParser:
    from labkit import __version__

    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.split(":")[0] + ".")
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv``; return the process exit status."""
    from labkit.data import DataError
    from labkit.runfolder import RunFolderError
    from labkit.trainer import TrainingDiverged, TrainingOutOfMemory

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ConfigError, DataError, RunFolderError, TrainingDiverged, TrainingOutOfMemory, FileNotFoundError) as error:
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
