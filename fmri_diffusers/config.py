"""YAML run configs for the training scripts, parsed by the scripts' own argparse parser.

A run YAML holds the same settings as the command line: its keys are the flag names without the
leading dashes, e.g. ::

    # run.yaml
    data_path: data/sub-01.npz
    learning_rate: 1.0e-4
    hidden_dims: [512, 256]
    use_ema: true

``python train_vae.py --config run.yaml --learning_rate 3e-4`` then trains with ``learning_rate=3e-4``:
a flag given on the command line wins over the YAML. Every YAML value goes through the same argparse
action (its ``type``, ``choices`` and ``nargs``) as a command-line value would, so a misspelt key or a
value outside the allowed choices is an error naming the key and the file, never a silent default.
:func:`settings_to_argv` does the conversion for any mapping (``main.py`` uses it for its YAML sections).
"""

import argparse
import sys
from pathlib import Path

import yaml


def _config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config x`` or ``--config=x``), or None."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config


def _value_tokens(action: argparse.Action, key: str, value, where: str) -> list[str]:
    """argv tokens that make ``action`` receive ``value``, e.g. ``hidden_dims: [8, 4]`` -> ``--hidden_dims 8 4``.

    The value is checked here as argparse would check it on the command line, so the error can name ``where``.
    """
    flag = f"--{key}"
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: key {key!r} takes true or false, got {value!r}")
        return [flag] if value else [f"--no-{key}"]
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ValueError(f"{where}: key {key!r} takes true or false, got {value!r}")
        return [flag] if value == (action.const is True) else []
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and action.nargs not in ("+", "*"):
        raise ValueError(f"{where}: key {key!r} takes one value, got the list {value!r}")
    if isinstance(value, dict) or not values:
        raise ValueError(f"{where}: key {key!r} takes a value or a list of values, got {value!r}")
    for v in values:
        try:
            converted = action.type(str(v)) if action.type is not None else str(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"{where}: invalid value {v!r} for key {key!r}: {err}") from None
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise ValueError(f"{where}: invalid value {v!r} for key {key!r}; expected one of {choices}")
    return [flag, *map(str, values)]


def settings_to_argv(parser: argparse.ArgumentParser, settings: dict, where: str) -> list[str]:
    """argv tokens for a mapping of flag names (without dashes) to values, checked as argparse checks them.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser whose flags the keys must name.
    settings : dict
        E.g. ``{"learning_rate": 1e-4, "hidden_dims": [512, 256], "use_ema": True}``; a ``None`` value is
        skipped (the parser's default stays).
    where : str
        Where the settings came from (a file name, a YAML section), for the error messages.

    Raises
    ------
    ValueError
        If ``settings`` is not a mapping, or a key is not a flag of ``parser``, or a value is rejected by
        the flag's type or choices, or a list is given for a single-valued flag.
    """
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected a mapping of flag names to values, got {type(settings).__name__}")
    actions = {opt[2:]: a for a in parser._actions for opt in a.option_strings if opt.startswith("--")}
    argv = []
    for key, value in settings.items():
        action = actions.get(str(key))
        if action is None or key in ("config", "help") or key.startswith("no-"):
            known = sorted(k for k in actions if k not in ("config", "help") and not k.startswith("no-"))
            raise ValueError(f"{where}: unknown key {key!r}; the keys are the flag names: {', '.join(known)}")
        if value is not None:
            argv += _value_tokens(action, key, value, where)
    return argv


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, taking defaults for unset flags from the YAML named by ``--config``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser; it must define ``--config`` and use ``allow_abbrev=False``.
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The YAML's values, converted by :func:`settings_to_argv`, are placed *before* the command line's
        tokens, so that argparse (last occurrence wins) gives the command line priority.

    Raises
    ------
    ValueError
        If the YAML file is missing or not valid YAML, or as :func:`settings_to_argv` says (errors name the
        file and the key).
    """
    if parser.allow_abbrev:
        raise ValueError("parse_args_with_config needs a parser built with allow_abbrev=False")
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    if path is None:
        return parser.parse_args(argv)
    if not Path(path).is_file():
        raise ValueError(f"--config {path}: file not found")
    try:
        settings = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML: {err}") from None
    return parser.parse_args(settings_to_argv(parser, settings, path) + argv)
