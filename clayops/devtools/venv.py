"""Create and fill the project's virtual environment, then re-run the command inside it.

Standard library only: this runs before any dependency is installed. The dependency lists are read
from pyproject.toml, so there is one place that names them. A stamp file in .venv remembers what was
installed; a changed pyproject.toml triggers a reinstall of the changed lists only.

Set CLAYOPS_NO_VENV=1 to run in the current interpreter (a container or an environment you manage).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
# Commands that need the test extras (pytest, playwright, ...) on top of the runtime dependencies.
TEST_COMMANDS = {"runtests"}


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def _install(reqs: list[str], label: str) -> None:
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    stamp = VENV / f".clayops-{label}.sha256"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"clayops: installing {label} dependencies into {VENV} ...", flush=True)
    pip = [str(_venv_python()), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", *reqs], check=True)
    stamp.write_text(digest)


def ensure_environment(argv: list[str]) -> None:
    """Make sure .venv is complete for this command, then re-exec inside it if not already there."""
    if os.environ.get("CLAYOPS_NO_VENV") == "1":
        return
    command = argv[1] if len(argv) > 1 else ""
    extras = ["test"] if command in TEST_COMMANDS else []
    if not _venv_python().exists():
        print(f"clayops: creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    _install(_requirements([]), "runtime")
    if extras:
        _install(_requirements(extras), "test")
    if Path(sys.prefix).resolve() != VENV.resolve():
        python = str(_venv_python())
        os.execv(python, [python, *argv])
