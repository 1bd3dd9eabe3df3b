"""The ``esmm`` command: one sub-command per job.

Every sub-command takes ``--conf FILE`` (repeatable, later files win) and
``--set key.path=value`` (repeatable, wins over files); a sub-command's own
shortcuts (``train --model KIND`` = ``--set model.kind=KIND``) are declared with
it and win over both. The configuration is built and validated once, here,
before any Spark or torch work starts. Building the parser imports neither
Spark nor torch: each command imports its job when it runs.

Under spark-submit run this file itself::

    spark-submit --packages io.delta:delta-spark_2.12:3.3.3 jobs/cli.py generate --set ...

under torchrun run the module: ``torchrun --nproc_per_node N -m jobs.cli train ...``.

Exit codes of every command (``nightly`` adds its own: 3 a step failed, 75 lock held):
0 done; 2 configuration or usage error (nothing ran); 65 an input table, one of its
files or its Delta log cannot be read (the message names the file; nothing written);
74 an output table cannot be written (read-only path, disk full; nothing committed,
the table stays at its previous version); 1 anything else (``labels``: the
bad-record gate), with the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Importing the command modules registers their commands, in this order.
import jobs.data_commands  # noqa: F401
import jobs.model_commands  # noqa: F401
import jobs.serving_commands  # noqa: F401
from esmm.config.errors import ConfigError
from esmm.config.loader import load_config
from esmm.config.schema import Config
from esmm.util.process import end_process
from jobs.commands import COMMANDS, EXIT_INPUT_UNREADABLE, EXIT_WRITE_FAILED
from pipelines.io.errors import TableReadError, TableWriteError

__all__ = [
    "COMMANDS",
    "EXIT_INPUT_UNREADABLE",
    "EXIT_WRITE_FAILED",
    "build_parser",
    "config_from_args",
    "main",
    "entry",
]


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esmm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, c in COMMANDS.items():
        p = sub.add_parser(name, help=c.help)
        p.add_argument(
            "--conf",
            action="append",
            default=[],
            metavar="FILE",
            help="YAML configuration file (repeatable; later files win)",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="overrides",
            help="override one key, e.g. --set generate.days=3 (repeatable)",
        )
        c.add_args(p)
    return parser


DEMO_CONF = Path(__file__).resolve().parents[1] / "conf" / "demo.yaml"


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.command == "demo":
        args.conf = [str(DEMO_CONF), *args.conf]
    for attr, key in COMMANDS[args.command].shortcuts.items():
        v = getattr(args, attr, None)
        if v is not None:
            overrides.append(f"{key}={v}")
    return load_config(args.conf, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"esmm {args.command}: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(cfg, args)
    except TableReadError as e:
        print(f"esmm {args.command}: {e}", file=sys.stderr)
        return EXIT_INPUT_UNREADABLE
    except TableWriteError as e:
        print(f"esmm {args.command}: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED


def entry() -> None:
    """The process entry (the ``esmm`` script, ``python -m jobs.cli``, spark-submit, torchrun):
    :func:`main`, then the process ends with its exit code (:func:`esmm.util.process.end_process`)."""
    end_process(main)


if __name__ == "__main__":
    entry()
