"""The README's first two commands are the project's contract with a newcomer, and
.ci/run must run exactly the second one."""

import re

from conftest import ROOT


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("```bash", 1)[0]
    assert head.count("\n") <= 3, "the commands must be the README's first lines"
    run, test = _readme_commands()[:2]
    assert run.startswith("pip install -q torch==2.13.0") and "einsumattn" in run
    assert test.startswith("pip install -q torch==2.13.0") and "pytest" in test


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci
