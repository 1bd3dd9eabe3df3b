"""``python -m esmm.training --conf FILE [--result-json PATH]``: one training rank.

What a launcher runs on every rank (``torchrun --nproc_per_node N -m esmm.training ...``,
the nightly's ``train_launcher: torchrun``): ``train(config)`` on the configuration in
FILE; rank 0 writes its :class:`~esmm.training.result.TrainResult` to PATH. Exits 0 when
the training finished, 2 on a configuration error, 1 with the traceback otherwise.
"""

from __future__ import annotations

import argparse
import sys

from esmm.config.errors import ConfigError
from esmm.config.loader import load_config
from esmm.util.process import end_process


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esmm.training", description=__doc__.split("\n")[0])
    p.add_argument("--conf", action="append", default=[], metavar="FILE", help="YAML configuration (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--result-json", metavar="PATH", help="rank 0 writes its TrainResult here")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.conf, args.overrides)
    except ConfigError as e:
        print(f"esmm.training: configuration error: {e}", file=sys.stderr)
        return 2
    from esmm.training.trainer import train

    r = train(cfg)
    if r.rank == 0 and args.result_json:
        r.write_json(args.result_json)
    return 0


if __name__ == "__main__":
    end_process(main)
