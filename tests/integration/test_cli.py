"""The `esmm` parser: each sub-command's own shortcuts, and a parser that imports no Spark or torch."""

import json
import subprocess
import sys

import pytest

from esmm.config.errors import ConfigError
from esmm.config.schema import ModelConfig
from jobs.cli import COMMANDS, build_parser, config_from_args


def _cfg(*argv):
    args = build_parser().parse_args(list(argv))
    return args, config_from_args(args)


def test_score_model_is_a_registry_id_not_a_kind():
    args, cfg = _cfg("score", "--date", "2026-11-03", "--model", "esmm-20261103-abc123")
    assert args.model == "esmm-20261103-abc123"
    assert cfg.model.kind == ModelConfig().kind  # untouched


def test_train_model_is_a_kind():
    args, cfg = _cfg("train", "--model", "escm2-ips", "--epochs", "3")
    assert (cfg.model.kind, cfg.train.epochs) == ("escm2-ips", 3)
    with pytest.raises(SystemExit):  # argparse: not one of the kinds
        build_parser().parse_args(["train", "--model", "esmm-20261103-abc123"])


def test_shortcuts_belong_to_their_command():
    _, cfg = _cfg("generate", "--days", "2", "--seed", "9")
    assert (cfg.generate.days, cfg.generate.seed) == (2, 9)
    # bench has its own --epochs (passed to the bench), not the train.epochs shortcut
    args, cfg = _cfg("bench", "quality", "--epochs", "5")
    assert args.epochs == 5 and cfg.train.epochs != 5
    # every declared shortcut is an option of its command
    for name, c in COMMANDS.items():
        p = build_parser()._subparsers._group_actions[0].choices[name]
        dests = {a.dest for a in p._actions}
        assert set(c.shortcuts) <= dests, name


def test_a_shortcut_value_is_validated_with_its_key():
    args = build_parser().parse_args(["generate", "--days", "0"])
    with pytest.raises(ConfigError, match="generate.days"):
        config_from_args(args)


def test_building_the_parser_imports_neither_torch_nor_spark():
    code = (
        "import sys, json\n"
        "from jobs.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pyspark', 'petastorm', 'deltalake', 'numpy', 'pandas'))\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
