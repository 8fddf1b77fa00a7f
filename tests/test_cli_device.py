"""README: the subcommands that compute take --device; the rest are listed as file readers."""
import pytest

from toolkit.cli import build_parser

COMPUTE = ("certify", "bounds", "train", "finetune", "demo")


def _sub(name):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


@pytest.mark.parametrize("name", COMPUTE)
def test_computing_subcommands_take_device(name):
    assert any("--device" in a.option_strings for a in _sub(name)._actions)


def test_readme_lists_them():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "(`certify`, `bounds`, `train`, `finetune`, `demo`) take `--device cpu|cuda`" in text
