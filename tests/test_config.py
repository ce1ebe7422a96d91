"""YAML run configs: parsed by the scripts' own argparse parser, command line wins, typos are errors."""

import argparse
from pathlib import Path

import pytest

from fmri_diffusers.config import parse_args_with_config, settings_to_argv

import train_ldm
import train_vae

ROOT = Path(__file__).resolve().parents[1]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--hidden_dims", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--hub_model_id", default="default-id")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def write(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_supplies_flags_with_argparse_types(tmp_path):
    cfg = write(tmp_path, "learning_rate: 3.0e-4\nhidden_dims: [8, 4]\nprediction_type: v_prediction\n"
                          "use_ema: true\nseed: 7\n")
    args = parse_args_with_config(make_parser(), ["--config", cfg])
    assert args.learning_rate == pytest.approx(3e-4)
    assert args.hidden_dims == [8, 4]
    assert args.prediction_type == "v_prediction"
    assert args.use_ema is True and args.seed == 7
    assert args.config == cfg


def test_command_line_wins_over_yaml(tmp_path):
    cfg = write(tmp_path, "learning_rate: 3.0e-4\nhidden_dims: [8, 4]\nuse_ema: true\nseed: 7\n")
    args = parse_args_with_config(make_parser(), [f"--config={cfg}", "--learning_rate", "1e-2",
                                                  "--hidden_dims", "16", "--no-use_ema"])
    assert args.learning_rate == pytest.approx(1e-2)
    assert args.hidden_dims == [16]
    assert args.use_ema is False
    assert args.seed == 7  # not on the command line: from the YAML


def test_yaml_null_and_empty_file_keep_defaults(tmp_path):
    assert parse_args_with_config(make_parser(), ["--config", write(tmp_path, "hub_model_id: null\n")]).hub_model_id == "default-id"
    assert parse_args_with_config(make_parser(), ["--config", write(tmp_path, "")]).seed == 0


def test_no_config_is_plain_argparse():
    assert parse_args_with_config(make_parser(), ["--seed", "3"]).seed == 3


def test_unknown_key_names_key_and_file(tmp_path):
    cfg = write(tmp_path, "learning_rat: 1.0e-3\n")
    with pytest.raises(ValueError, match=r"run\.yaml: unknown key 'learning_rat'.*learning_rate"):
        parse_args_with_config(make_parser(), ["--config", cfg])


def test_abbreviation_is_not_accepted_as_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'learn'"):
        parse_args_with_config(make_parser(), ["--config", write(tmp_path, "learn: 1.0\n")])


def test_bad_choice_names_value_key_and_file(tmp_path):
    cfg = write(tmp_path, "prediction_type: noise\n")
    with pytest.raises(ValueError, match=r"run\.yaml: invalid value 'noise' for key 'prediction_type'; expected one of"):
        parse_args_with_config(make_parser(), ["--config", cfg])


@pytest.mark.parametrize("text, match", [
    ("seed: abc\n", r"invalid value 'abc' for key 'seed'"),
    ("hidden_dims: [8, x]\n", r"invalid value 'x' for key 'hidden_dims'"),
    ("seed: [1, 2]\n", r"key 'seed' takes one value, got the list"),
    ("use_ema: yes please\n", r"key 'use_ema' takes true or false"),
    ("config: other.yaml\n", r"unknown key 'config'"),
    ("- seed\n", r"expected a mapping"),
])
def test_bad_values_are_errors(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        parse_args_with_config(make_parser(), ["--config", write(tmp_path, text)])


def test_settings_to_argv_names_where_the_settings_came_from():
    parser = make_parser()
    argv = settings_to_argv(parser, {"hidden_dims": [8, 4], "use_ema": False, "hub_model_id": None}, "main.yaml [ldm]")
    assert argv == ["--hidden_dims", "8", "4", "--no-use_ema"]
    assert parser.parse_args(argv).hidden_dims == [8, 4]
    with pytest.raises(ValueError, match=r"main\.yaml \[ldm\]: unknown key 'lr'"):
        settings_to_argv(parser, {"lr": 1.0}, "main.yaml [ldm]")


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml: file not found"):
        parse_args_with_config(make_parser(), ["--config", str(tmp_path / "nope.yaml")])


def test_parser_must_refuse_abbreviations():
    with pytest.raises(ValueError, match="allow_abbrev=False"):
        parse_args_with_config(argparse.ArgumentParser(), [])


def test_shipped_tiny_configs_parse_with_the_scripts():
    vae_args = train_vae.parse_args(["--config", str(ROOT / "configs/vae_tiny.yaml"),
                                                    "--data_path", "x.npy"])
    assert vae_args.hidden_dims == [32, 16] and vae_args.report_to == "none" and vae_args.data_path == ["x.npy"]
    ldm_args = train_ldm.parse_args(["--config", str(ROOT / "configs/ldm_tiny.yaml"),
                                                    "--pretrained_vae_model_name_or_path", "vae_dir"])
    assert ldm_args.use_ema is True and ldm_args.ddpm_beta_schedule == "squaredcos_cap_v2"
    assert ldm_args.data_path is None  # inherited from the VAE run at main() time


def test_script_yaml_key_of_the_other_script_is_unknown(tmp_path):
    cfg = write(tmp_path, "kl_weight: 0.5\n")  # a VAE flag in an LDM config
    with pytest.raises(ValueError, match="unknown key 'kl_weight'"):
        train_ldm.parse_args(["--config", cfg, "--pretrained_vae_model_name_or_path", "v"])
