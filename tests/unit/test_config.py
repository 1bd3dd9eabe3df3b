from pathlib import Path

import pytest
import yaml

from esmm.config.errors import ConfigError
from esmm.config.loader import DEFAULT_CONF, load_config
from esmm.config.schema import Config
from esmm.util.timeutil import date_range, parse_duration


def test_default_yaml_matches_embedded_defaults():
    # conf/default.yaml documents the embedded defaults; the two must not drift.
    assert load_config(use_default_file=True).to_dict() == Config().to_dict()
    assert yaml.safe_load(DEFAULT_CONF.read_text()) == Config().to_dict()


def test_overrides_and_files_layer(tmp_path: Path):
    f = tmp_path / "a.yaml"
    f.write_text("generate:\n  days: 3\n  seed: 7\nlabels:\n  click_window: 2d\n")
    cfg = load_config([f], ["generate.seed=9", "lakehouse.root=/tmp/x"])
    assert (cfg.generate.days, cfg.generate.seed) == (3, 9)
    assert cfg.labels.seconds("click_window") == 2 * 86400
    assert cfg.lakehouse.path("clicks") == "/tmp/x/raw/clicks"


@pytest.mark.parametrize(
    "override, message",
    [
        ("generate.dayz=3", "generate.dayz: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("generate.days=three", "generate.days: expected an integer"),
        ("generate.days=-1", "generate.days: -1 must be >= 1"),
        ("generate.ctr=0.9", "generate.ctr"),
        ("generate.selection_bias=1.5", "generate.selection_bias: 1.5 is outside [-1, 1]"),
        ("labels.click_window=-5m", "labels.click_window: '-5m' is not a duration"),
        ("labels.attribution_window=7 weeks", "labels.attribution_window"),
        ("labels.max_bad_fraction=2", "labels.max_bad_fraction: 2.0 is outside [0, 1]"),
        ("generate.start_date=2026-13-01", "generate.start_date"),
        ("sources.clicks.format=csv", "sources.clicks.format: 'csv' is not one of"),
        ("features.categorical=[{name: a, buckets: 1}]", "features.categorical[0].buckets"),
        ("features.numeric=[{name: price, clip_min: 5, clip_max: 1}]", "features.numeric[0].clip_max"),
        ("generate.days", "must look like key.path=value"),
    ],
)
def test_bad_configuration_names_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(overrides=[override])
    assert message in str(e.value)


def test_bad_file_is_named(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("generate: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config([f])
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config([tmp_path / "missing.yaml"])


def test_dates_and_durations():
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert date_range("2026-01-30", "2026-02-02") == ["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]
    with pytest.raises(ConfigError, match="end date 2026-01-01 is before start date 2026-01-02"):
        date_range("2026-01-02", "2026-01-01")


def test_mapping_id_changes_with_the_spec():
    a = Config().features
    b = load_config(overrides=["features.hash_version=2"]).features
    assert a.mapping_id != b.mapping_id and a.mapping_id == Config().features.mapping_id
