"""The ``esmm`` sub-command registry: :func:`command` registers one, ``jobs/cli.py`` builds
the parser from :data:`COMMANDS`. Also the exit codes every command shares and the
SparkSession a command starts."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable

from esmm.config.schema import Config

EXIT_INPUT_UNREADABLE = 65  # EX_DATAERR: fix or restore the named file, then re-run
EXIT_WRITE_FAILED = 74  # EX_IOERR: make the path writable or free space, then re-run


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Config, argparse.Namespace], int]
    shortcuts: dict[str, str] = field(default_factory=dict)  # argparse dest -> config key


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help_: str,
    add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
    shortcuts: dict[str, str] | None = None,
):
    """Register ``esmm <name>``. ``shortcuts``: this command's options that are
    ``--set`` in disguise (``{"days": "generate.days"}``); an option not listed there
    is the command's own argument (``score --model`` is a registry id)."""

    def deco(fn: Callable[[Config, argparse.Namespace], int]):
        COMMANDS[name] = Command(help_, add_args, fn, dict(shortcuts or {}))
        return fn

    return deco


def spark_for(cfg: Config):
    from pipelines.io.session import get_spark

    spark = get_spark(cfg.spark)
    print(f"esmm: spark master {spark.sparkContext.master}, lakehouse {cfg.lakehouse.root}", file=sys.stderr)
    return spark


def print_df(df, n: int = 50) -> None:
    pdf = df.limit(n).toPandas()
    print(pdf.to_string(index=False))
