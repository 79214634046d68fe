"""Run the whole test suite: pytest, mypy --strict, ruff and the import-layer contracts.

``python -m tests`` from the project root, in an environment with the ``dev``
extra installed. Every step runs even when an earlier one fails; the exit code
is non-zero if any failed.
"""

import subprocess
import sys

LINT_IMPORTS = "from importlinter.cli import lint_imports_command as run; run(['--no-cache'])"
STEPS = (
    ("pytest", [sys.executable, "-m", "pytest", *sys.argv[1:]]),
    ("mypy --strict", [sys.executable, "-m", "mypy"]),
    ("ruff", [sys.executable, "-m", "ruff", "check", "."]),
    ("import layers", [sys.executable, "-c", LINT_IMPORTS]),
)


def main() -> int:
    failed = []
    for name, command in STEPS:
        print(f"==> {name}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
    print("==> " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
