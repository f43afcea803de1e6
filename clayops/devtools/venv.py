"""Create and fill the project's virtual environment, then re-run the command inside it.

Standard library only: this runs before any dependency is installed. Dependencies are named in
pyproject.toml and installed from the locked, hashed files made from it (requirements/runtime.txt,
and requirements/test.txt for the test command), in pip's hash-checking mode. A stamp file in .venv
remembers what was installed; a changed lock file triggers a reinstall. `python3 manage.py lock`
re-resolves both files to the newest versions pyproject.toml allows.

Set CLAYOPS_NO_VENV=1 to run in the current interpreter (a container or an environment you manage).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
# Commands that need the test extras (pytest, playwright, ...) on top of the runtime dependencies.
TEST_COMMANDS = {"runtests"}


def _venv_python() -> Path:
    return VENV / "bin" / "python"


# Locked, hashed dependency sets, made from pyproject.toml by pip-tools (`python3 manage.py lock`).
LOCKS = {"runtime": ROOT / "requirements" / "runtime.txt", "test": ROOT / "requirements" / "test.txt"}
LOCK_ARGS = [
    "--generate-hashes",
    "--allow-unsafe",
    "--strip-extras",
    "--no-emit-index-url",
    "--no-emit-find-links",
]


def _install(label: str) -> None:
    """Install the lock file `label` exactly (pip's hash-checking mode), unless already installed."""
    lock = LOCKS[label]
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    stamp = VENV / f".clayops-{label}.sha256"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"clayops: installing {label} dependencies ({lock.relative_to(ROOT)}) into {VENV} ...", flush=True)
    pip = [str(_venv_python()), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--require-hashes", "-r", str(lock)], check=True)
    stamp.write_text(digest)


def lock(upgrade: bool = True) -> None:
    """`python3 manage.py lock`: re-resolve pyproject.toml into the lock files (newest allowed versions)."""
    pip = [str(_venv_python()), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "pip-tools>=7.4"], check=True)
    compile_ = [str(VENV / "bin" / "pip-compile"), "--quiet", *LOCK_ARGS, *(["--upgrade"] if upgrade else [])]
    env = dict(os.environ, PIP_FIND_LINKS="", PIP_CONSTRAINT="")
    for label, path in LOCKS.items():
        extra = ["--extra", label] if label != "runtime" else []
        subprocess.run(
            [*compile_, *extra, "-o", str(path), str(ROOT / "pyproject.toml")], check=True, env=env
        )
        print(f"clayops: wrote {path.relative_to(ROOT)}", flush=True)


def ensure_environment(argv: list[str]) -> None:
    """Make sure .venv is complete for this command, then re-exec inside it if not already there."""
    if os.environ.get("CLAYOPS_NO_VENV") == "1":
        return
    command = argv[1] if len(argv) > 1 else ""
    extras = ["test"] if command in TEST_COMMANDS else []
    if not _venv_python().exists():
        print(f"clayops: creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if command == "lock":
        lock()
        sys.exit(0)
    _install("test" if extras else "runtime")
    if Path(sys.prefix).resolve() != VENV.resolve():
        python = str(_venv_python())
        os.execv(python, [python, *argv])
