"""The shipped example configs (examples/configs/<command>-*.yaml) load and validate for their command."""

from pathlib import Path

import pytest

from loraplus.cli import _config_classes
from loraplus.configfile import read_config_file

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert {path.name.split("-")[0] for path in CONFIGS} >= {"train", "sweep", "compare"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(path):
    cls = _config_classes()[path.name.split("-")[0]]
    options = read_config_file(path, cls)
    config = cls(**options)
    assert config.output_dir.startswith("runs/")
    if "learning_rate" in options:
        assert isinstance(config.learning_rate, float) and config.learning_rate == float(options["learning_rate"])
