#!/usr/bin/env python
"""Print the config reference (every flag, its default, what it does) from the scripts' own parsers.

    python scripts/config_reference.py            # Markdown, as pasted into README.md
    python scripts/config_reference.py --check    # exit 1 if README.md's copy is out of date

The README's section lies between the markers below; tests/test_readme.py runs --check.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import main  # noqa: E402
import train_ldm  # noqa: E402
import train_vae  # noqa: E402

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS:
        return ""
    return " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)


def table(parser: argparse.ArgumentParser, skip=()) -> str:
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or flag in ("--help",) or flag in skip:
            continue
        help_text = (action.help or "").replace("|", "\\|").replace("\n", " ")
        if action.choices:
            help_text = f"{help_text} One of: {', '.join(map(str, action.choices))}.".strip()
        rows.append(f"| `{flag}` | {_default(action)} | {help_text} |")
    return "\n".join(rows)


def reference() -> str:
    vae, ldm = train_vae.build_parser(), train_ldm.build_parser()
    shared = {o for a in vae._actions for o in a.option_strings}
    return "\n\n".join([
        START,
        "#### `train_vae.py` (run, data and VAE flags; the run and data flags are shared with `train_ldm.py`)",
        table(vae),
        "#### `train_ldm.py` (its own flags; it also takes every run and data flag above)",
        table(ldm, skip=shared),
        "#### `main.py`",
        table(main.build_parser()),
        "#### `main.py` YAML section `evaluate:`",
        table(main.evaluation_parser()),
        END,
    ])


if __name__ == "__main__":
    text = reference()
    if "--check" in sys.argv[1:]:
        readme = (ROOT / "README.md").read_text()
        if START not in readme or END not in readme:
            sys.exit("README.md has no config reference markers")
        current = readme[readme.index(START):readme.index(END) + len(END)]
        if current != text:
            sys.exit("README.md's config reference is out of date: run python scripts/config_reference.py "
                     "and paste its output between the markers")
        print("README.md config reference is up to date")
    else:
        print(text)
