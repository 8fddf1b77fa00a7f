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


def test_every_training_setting_has_its_option():
    """Training options are declared once in TrainConfig and once as a CLI option whose dest is the field
    name (cmd_train.config_kwargs maps them by name): a new field without an option, or an option renamed
    away from its field, fails here."""
    from dataclasses import fields

    from toolkit.train.api import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    for cmd, missing in (("train", set()), ("finetune", {"ibp_init"})):  # finetune keeps the model's weights
        dests = {a.dest for a in _sub(cmd)._actions}
        assert names - dests == missing, cmd


def test_config_kwargs_round_trip():
    from toolkit.cli.cmd_train import config_kwargs

    args = build_parser().parse_args(["train", "mlp_2x100", "--eps", "0.1", "--out", "m.onnx", "--reg-d", "0.2",
                                      "--reg-agg", "mean", "--eval-method", "ibp, fastlin", "--no-progress"])
    kw = config_kwargs(args)
    assert kw["lam"] == 0.2 and kw["aggregate"] == "mean" and kw["eval_methods"] == ["ibp", "fastlin"]
    assert kw["progress"] is False and "mtl_alpha" not in kw and "eps" not in kw and "out" not in kw
