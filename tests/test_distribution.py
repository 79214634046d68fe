"""The wheel is the framework alone, typed, and installs beside a service that has packages of the same names.

The wheel is built from the files git tracks (what a clean clone has), into a temporary folder; the second
test installs it into a fresh virtual environment, so it needs PyPI for the dependencies (it skips, or in CI
fails, without it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
SHOP = ("domain", "handlers", "adapters", "benchmarks", "tests")
EXTRAS = {"mediator.readmodels.postgres": "postgres", "mediator.fastapi": "fastapi", "mediator.otel": "otel",
          "mediator.nats": "nats", "mediator.readmodels.redis": "redis", "mediator.rabbitmq": "rabbitmq",
          "mediator.redis_streams": "redis"}


def _tracked_copy(into: Path) -> Path:
    """The files git tracks (or, outside a checkout, the tree without build leftovers), copied to ``into``."""
    source = into / "source"
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".venv", ".git", "build", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    for name in names:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    return source


def _run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    source = _tracked_copy(folder)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", folder / "dist", source)
    if built.returncode != 0:
        skip_or_fail(f"cannot build the wheel (pip needs setuptools from PyPI): {built.stderr[-800:]}")
    (found,) = (folder / "dist").glob("mediator_cqrs-*.whl")
    return found


def test_the_wheel_holds_the_mediator_package_alone_typed_throughout(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["mediator"]
    metadata = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert {n.split("/")[0] for n in names} - metadata == {"mediator"}
    assert not [n for n in names if n.split("/")[0] in SHOP]
    assert "mediator/py.typed" in names  # PEP 561: the marker at the top covers every subpackage
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert {"mediator", "mediator/readmodels"} <= packages
    for package in packages:
        covered = [p for p in ("mediator/py.typed", f"{package}/py.typed") if p in names]
        assert covered, f"{package} has no py.typed coverage"
    assert "mediator/readmodels/contract.py" in names  # the storage contract ships, for third-party backends


SERVICE_PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "scratch-service"
version = "1.0"

[tool.setuptools.packages.find]
include = ["adapters*", "domain*", "handlers*"]
"""

APP = '''
"""A small service of its own, on the framework's embedded SQLite storage."""

import sys
import attrs
from pathlib import Path

import adapters, domain, handlers  # the service's own packages, not the framework's
from mediator import Command, Event, Query, Registry
from mediator.readmodels import Delivery, EventTypes, Projection, ProjectionSession, ReadModels, UnitOfWork, on
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import settle

assert adapters.OWNER == domain.OWNER == handlers.OWNER == "scratch", "the service's packages were replaced"


@attrs.frozen(kw_only=True)
class Greet(Command[int]):
    name: str


@attrs.frozen(kw_only=True)
class Greeted(Event):
    name: str


@attrs.frozen(kw_only=True)
class CountGreetings(Query[int]):
    reads = ("greetings",)


class Greetings(Projection):
    name = "greetings"

    def setup(self, session: ProjectionSession) -> None:
        session.handle.execute(f"CREATE TABLE IF NOT EXISTS {session.table('count')} (n INTEGER)")

    @on(Greeted)
    def greeted(self, event: Greeted, session: ProjectionSession) -> None:
        session.handle.execute(f"INSERT INTO {session.table('count')} VALUES (1)")


types = EventTypes()
types.register(Greeted)
storage = SqliteStorage(Path(sys.argv[1]))
engine = ReadModels(storage, types).add(Greetings(), delivery=Delivery.BACKGROUND)
registry = Registry()
engine.install(registry)


def greet(command: Greet, uow: UnitOfWork) -> int:
    uow.record(Greeted(name=command.name))
    return 1


def count(query: CountGreetings) -> int:
    table = engine.table("greetings", "count")
    return int(storage.read_connection().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


registry.handle(Greet).by(greet)
registry.handle(CountGreetings).by(count)
mediator = registry.build()
for name in ("ada", "bo"):
    mediator.send(Greet(name=name))
settle(engine)
print("greetings:", mediator.ask(CountGreetings()))
storage.close()
'''

TYPED = '''
"""Type-checked with mypy --strict against the installed wheel: storage, the FastAPI embedding, the testing kit."""

from typing import assert_type

import attrs
from mediator import Command, Registry
from mediator.fastapi import MediatorMiddleware, install_error_handlers
from mediator.readmodels import EventTypes, ReadModels
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import MediatorStub, recording_mediator


@attrs.frozen(kw_only=True)
class Double(Command[int]):
    value: int


def double(command: Double) -> int:
    return command.value * 2


registry = Registry()
registry.handle(Double).by(double)
mediator, recording = recording_mediator(registry)
assert_type(mediator.send(Double(value=2)), int)
storage = SqliteStorage("typed.db")
engine = ReadModels(storage, EventTypes())
assert_type(engine.storage.head(), int)
stub = MediatorStub().on(Double, 4)
middleware: type[MediatorMiddleware] = MediatorMiddleware
handlers = install_error_handlers
'''


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("venv")
    made = _run(sys.executable, "-m", "venv", folder / "env")
    if made.returncode != 0:
        skip_or_fail(f"cannot make a virtual environment: {made.stderr[-400:]}")
    return folder / "env" / "bin" / "python"


def _service(folder: Path) -> Path:
    service = folder / "service"
    for package in ("adapters", "domain", "handlers"):
        (service / package).mkdir(parents=True)
        (service / package / "__init__.py").write_text('OWNER = "scratch"\n')
    (service / "pyproject.toml").write_text(SERVICE_PYPROJECT)
    (service / "app.py").write_text(APP)
    (service / "typed.py").write_text(TYPED)
    return service


def test_the_wheel_installs_beside_a_service_with_packages_of_the_same_names(
        wheel: Path, venv: Path, tmp_path: Path) -> None:
    service = _service(tmp_path)
    pip = (venv, "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    # The service first, into site-packages, then the framework's wheel, bare (no extras).
    for target in (service, wheel):
        installed = _run(*pip, target)
        if installed.returncode != 0:
            skip_or_fail(f"cannot install {target.name} (needs PyPI): {installed.stderr[-800:]}")
    site = Path(_run(venv, "-c", "import domain, os; print(os.path.dirname(os.path.dirname(domain.__file__)))",
                     cwd=tmp_path).stdout.strip())
    for package in ("adapters", "domain", "handlers"):
        assert (site / package / "__init__.py").read_text() == 'OWNER = "scratch"\n', package

    # Without its extra, each integration says which extra to install, in the framework's error tree.
    for module, extra in EXTRAS.items():
        probe = _run(venv, "-c", f"import {module}", cwd=tmp_path)
        assert probe.returncode != 0, module
        assert "MissingExtraError" in probe.stderr, probe.stderr
        assert f"mediator-cqrs[{extra}]" in probe.stderr, probe.stderr

    # With the extras: every public module of the framework imports.
    extras = _run(*pip, f"{wheel}[{','.join(sorted(set(EXTRAS.values())))}]", "mypy")
    if extras.returncode != 0:
        skip_or_fail(f"cannot install the extras (needs PyPI): {extras.stderr[-800:]}")
    every = ("import importlib, pkgutil, mediator\n"
             "names = ['mediator'] + [m.name for m in pkgutil.walk_packages(mediator.__path__, 'mediator.')\n"
             "        if not any(part.startswith('_') for part in m.name.split('.'))]\n"
             "for name in names: importlib.import_module(name)\n"
             "print(len(names), 'modules:', ' '.join(sorted(names)))\n")
    imported = _run(venv, "-c", every, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    for module in ("mediator.readmodels.sqlite", "mediator.readmodels.contract", "mediator.wsgi", *EXTRAS):
        assert module in imported.stdout

    # A small app on the embedded SQLite storage, run from the service's folder (its packages first on the path).
    app = _run(venv, service / "app.py", tmp_path / "app.db", cwd=service)
    assert app.returncode == 0, app.stderr
    assert app.stdout.strip() == "greetings: 2"

    # A user module that imports the storage, the FastAPI embedding and the testing kit passes mypy --strict.
    env = {**os.environ, "MYPYPATH": ""}
    typed = _run(venv, "-m", "mypy", "--strict", "--no-incremental", "--python-version", "3.11", service / "typed.py",
                 cwd=service, env=env)
    assert typed.returncode == 0, typed.stdout + typed.stderr

    # Uninstalling the framework leaves the service's packages where they were.
    removed = _run(venv, "-m", "pip", "uninstall", "--yes", "--quiet", "mediator-cqrs")
    assert removed.returncode == 0, removed.stderr
    for package in ("adapters", "domain", "handlers"):
        assert (site / package / "__init__.py").read_text() == 'OWNER = "scratch"\n', package
    assert not (site / "mediator").exists()


def test_no_code_outside_the_framework_imports_its_private_modules() -> None:
    """The shop and the benchmarks use the framework's public modules only (tests may test internals)."""
    import ast

    offenders = []
    for package in ("domain", "handlers", "adapters", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    if name.split(".")[0] == "mediator" and any(p.startswith("_") for p in name.split(".")):
                        offenders.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)} imports {name}")
    assert offenders == []


def test_the_shops_wsgi_app_needs_no_web_framework() -> None:
    blocked = textwrap.dedent("""
        import sys
        for name in ("fastapi", "starlette", "pydantic", "uvicorn"):
            sys.modules[name] = None  # importing any of them now fails
        import adapters.shop_wsgi, mediator.wsgi, mediator.http
        print("ok")
    """)
    result = _run(sys.executable, "-c", blocked, cwd=ROOT)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
