"""The README's first lines are a promise: CI must run exactly its install and test commands."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_install_run_and_test():
    install, run, test = _readme_commands()
    assert "pip install" in install
    assert run == "python -m ser_tune.launch"
    assert "pytest" in test


def test_ci_runs_the_readmes_install_and_test_commands():
    install, _, test = _readme_commands()
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
