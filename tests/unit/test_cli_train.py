"""`esmm train` arguments become the typed config (no training here)."""

import pytest

from esmm.config.errors import ConfigError
from jobs.cli import build_parser, config_from_args


def test_train_arguments_map_to_config():
    args = build_parser().parse_args(
        [
            "train",
            "--model",
            "escm2-dr",
            "--train-start",
            "2026-11-01",
            "--train-end",
            "2026-11-05",
            "--eval-date",
            "2026-11-06",
            "--eval-date",
            "2026-11-07",
            "--set",
            "model.tower=[64, 32]",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.model.kind == "escm2-dr" and cfg.model.tower == [64, 32]
    assert cfg.train.dates == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]
    assert cfg.train.eval_dates == ["2026-11-06", "2026-11-07"]


def test_bad_window_names_the_key():
    args = build_parser().parse_args(["train", "--train-start", "2026-11-05", "--train-end", "2026-11-01"])
    with pytest.raises(ConfigError, match="train.train_end: 2026-11-01 is before train_start"):
        config_from_args(args)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "dcn"])
