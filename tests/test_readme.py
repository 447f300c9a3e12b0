"""The README's example runs as written, and CI runs the README's test command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _helpers import script_module
from test_sota_qsm import compose_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
def test_the_hand_written_loop_runs_as_written(tmp_path):
    (example,) = [block for block in python_blocks() if "QSMLoss(actor, critic" in block]
    script = tmp_path / "example.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"eval return -?\d+\.\d", done.stdout)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)[0]
    test_line = [line for line in commands.splitlines() if "pytest" in line][0]
    test_command = test_line.split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    for install in test_line.split("&&")[:-1]:
        assert install.strip().replace("pip install", "python -m pip install") in ci


def script_commands() -> list[list[str]]:
    """The overrides of every ``qsm.py`` command in the README's shell blocks (continued lines joined)."""
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S)).replace("\\\n", " ")
    commands = []
    for line in shell.splitlines():
        if "sota-implementations/qsm/qsm.py" in line:
            words = line.split("#")[0].split("sota-implementations/qsm/qsm.py")[1].split()
            commands.append([w for w in words if "=" in w])
    return commands


@pytest.mark.parametrize("overrides", script_commands(), ids=" ".join)
def test_each_training_command_of_the_readme_is_a_valid_configuration(overrides):
    if any(value.startswith("outputs/") for value in (o.split("=", 1)[1] for o in overrides)):
        overrides = [o for o in overrides if not o.startswith("checkpoint.resume=")]  # a placeholder path
    script_module("config").validate_config(compose_config(*overrides))


def test_every_row_of_the_readme_s_comparison_with_sac_is_a_row_of_the_committed_summary():
    # the README's claims against SAC come from the grid's vs_sac.md (Welch's t over seeds); a row edited by
    # hand, or left behind when the grid's results change, fails here
    committed = set((ROOT / "benchmarks" / "results" / "learning" / "vs_sac.md").read_text().splitlines())
    section = README.split("**Against SAC, with the seeds' spread**", 1)[1].split("\n\n")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 1 and rows[0] in committed  # the header too
    assert [row for row in rows if row not in committed] == []
