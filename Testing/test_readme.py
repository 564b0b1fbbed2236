"""The README's two commands are the ones CI and users run: keep them true."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = _bash_blocks(readme)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    assert "pip install torch==2.13.0" in test_command
    assert '".[test,mrml]"' in test_command  # the MRML tests run on slicer-core in CI


def test_ci_fails_when_the_mrml_tests_skip():
    """.ci/run sets SEMISUPSEG_REQUIRE_SLICER=1 before the test command; Testing/mrml/conftest.py then
    turns "slicer cannot be imported" into an error instead of a skip."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    command = next(i for i, line in enumerate(ci) if "pytest" in line and not line.startswith("#"))
    assert "export SEMISUPSEG_REQUIRE_SLICER=1" in ci[:command]
    conftest = (REPO / "Testing" / "mrml" / "conftest.py").read_text()
    assert 'os.environ.get("SEMISUPSEG_REQUIRE_SLICER") == "1"' in conftest


def test_readme_demo_command_installs_and_runs_the_demo():
    demo = next(b for b in _bash_blocks((REPO / "README.md").read_text()) if "demo" in b)
    assert demo.startswith("pip install torch==2.13.0") and demo.endswith("semisupseg demo")


def test_readme_lists_every_cli_command():
    from SemiSupSegLib.cli import build_parser

    readme = (REPO / "README.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in commands:
        assert f"semisupseg {name}" in readme, name
