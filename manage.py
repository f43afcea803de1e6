#!/usr/bin/env python3
"""clayops' command-line entry point.

`python3 manage.py up` starts the whole application; `python3 manage.py runtests` installs what the
tests need and runs them. Either first makes sure the project's virtual environment (.venv) exists
and holds the dependencies named in pyproject.toml, then runs inside it (see clayops/bootstrap.py).
"""

import os
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clayops.devtools.venv import ensure_environment

    ensure_environment(sys.argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clayops.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
