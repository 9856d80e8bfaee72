"""The README's test command (`pip install -r requirements-test.txt && python -m pytest -q`) runs every test that
CI runs: whatever a test would skip when missing is installed by requirements-test.txt, which CI installs too."""

import re

from tests.scripts import REPO


def required_packages(name: str) -> set[str]:
    """The package names a requirements file installs, following its `-r OTHER.txt` lines."""
    packages = set()
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            packages |= required_packages(line.removeprefix("-r ").strip())
        elif line:
            packages.add(re.split(r"[<>=!~\[ ;]", line)[0].lower())
    return packages


def test_every_package_a_test_would_skip_without_is_in_requirements_test():
    skipped_without = {
        match.group(1).lower()
        for path in (REPO / "tests").rglob("*.py")
        for match in re.finditer(r"importorskip\(\"([\w.-]+)\"", path.read_text())
    }
    assert skipped_without >= {"onnx", "onnxscript", "onnxruntime"}  # the pattern still finds them
    assert skipped_without <= required_packages("requirements-test.txt")


def test_ci_installs_what_the_readme_test_command_installs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -r requirements-test.txt && python -m pytest -q" in (REPO / "README.md").read_text()
    assert "-r requirements-test.txt" in ci and "\npython -m pytest -q\n" in ci
