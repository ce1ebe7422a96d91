"""The README's promises that a test can hold: the config reference matches the parsers, the commands exist."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    result = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/run_tests.sh" in readme and "bash scripts/run_demo.sh" in readme
    assert "bash scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()
    assert "PLACEHOLDER" not in readme
