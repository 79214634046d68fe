"""Finding what ``--app module:attribute`` names: an engine to operate, a mediator to describe, or both.

The attribute may be a :class:`ReadModels` engine, a :class:`~mediator.Mediator` or
:class:`~mediator.AsyncMediator`, an object with ``.engine`` and/or ``.mediator`` (an application's composition
root, like the reference shop's ``Shop``), or a function taking no arguments that returns any of those.
What cannot be found is a :class:`BadAppError` (the command line is wrong: exit status 2); an application that
raises while it is imported or built is an :class:`AppFailedError` (exit status 1), or the framework error it
raised (a database that is not there).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from types import ModuleType
from typing import Any

import attrs

from .. import AsyncMediator, Mediator, MediatorError
from .._messages import qualname
from ._engine import ReadModels

_KINDS = "a ReadModels engine, a Mediator, an object with .engine and/or .mediator, or a function returning one"


class BadAppError(MediatorError, LookupError):
    """``--app`` names something that is not there, or nothing the command can use."""


class AppFailedError(MediatorError, RuntimeError):
    """Importing the ``--app`` module, or calling its factory, raised; the error is the ``__cause__``."""


@attrs.frozen
class App:
    """What ``--app`` gave, as the commands use it; either part may be missing."""

    spec: str
    engine: ReadModels | None
    mediator: Mediator | AsyncMediator | None

    def need_engine(self, command: str) -> ReadModels:
        """The read-model engine, which ``command`` needs.

        Raises:
            BadAppError: if the app has none.
        """
        if self.engine is None:
            raise BadAppError(f"`{command}` needs a read-model engine, and --app {self.spec} gave a mediator alone; "
                              "name the engine, an object with .engine, or a function returning either.")
        return self.engine

    def close(self) -> None:
        """Close the engine's storage (its connections), if there is one."""
        if self.engine is not None:
            self.engine.storage.close()


def load(spec: str) -> App:
    """Import ``module:attribute`` (the attribute may be dotted), call it if it is a factory, and say what it is.

    Raises:
        BadAppError: ``spec`` is malformed, or names a module or attribute that is not there, or an object that
            is neither an engine nor a mediator.
        AppFailedError: importing the module or calling the factory raised (not a framework error).
        MediatorError: what the application raised, if it is a framework error (a database that is not there).
    """
    module_name, colon, attribute = spec.partition(":")
    if not (colon and module_name and attribute):
        raise BadAppError(f"--app {spec!r} must look like package.module:attribute.")
    target: Any = _import(module_name)
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(target, part):
            owner = module_name if depth == 0 else f"{module_name}:{'.'.join(attribute.split('.')[:depth])}"
            close = difflib.get_close_matches(part, [n for n in dir(target) if not n.startswith("_")], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise BadAppError(f"{owner} has no attribute {part!r} (from --app {spec}){hint}")
        target = getattr(target, part)
    if _parts(target) == (None, None) and callable(target):
        target = _call(target, spec)
    engine, mediator = _parts(target)
    if engine is None and mediator is None:
        raise BadAppError(f"--app {spec} is a {qualname(type(target))}; name {_KINDS}.")
    return App(spec, engine, mediator)


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise BadAppError(f"No module named {exc.name!r} (from --app {module_name}:...); run from the directory "
                              f"that holds it or add that to PYTHONPATH (working directory: {os.getcwd()}).") from None
        raise _failed(f"importing {module_name}", exc) from exc
    except MediatorError:
        raise
    except Exception as exc:  # anything the application's own import raises: one line, not a trace
        raise _failed(f"importing {module_name}", exc) from exc


def _call(factory: Any, spec: str) -> Any:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        needs = ", ".join(inspect.signature(factory).parameters)
        raise BadAppError(f"--app {spec} needs arguments ({needs}); name a function that takes none, or an "
                          "object.") from None
    except ValueError:
        pass  # no signature to read (some built-ins): calling it tells
    try:
        return factory()
    except MediatorError:
        raise
    except Exception as exc:
        raise _failed(f"calling {spec}", exc) from exc


def _parts(target: Any) -> tuple[ReadModels | None, Mediator | AsyncMediator | None]:
    """The engine and the mediator ``target`` is or holds (``.engine``, ``.mediator``)."""
    if isinstance(target, ReadModels):
        return target, None
    if isinstance(target, Mediator | AsyncMediator):
        return None, target
    engine = getattr(target, "engine", None)
    mediator = getattr(target, "mediator", None)
    return (engine if isinstance(engine, ReadModels) else None,
            mediator if isinstance(mediator, Mediator | AsyncMediator) else None)


def _failed(doing: str, exc: Exception) -> AppFailedError:
    lines = str(exc).strip().splitlines()
    return AppFailedError(f"{doing} raised {qualname(type(exc))}" + (f": {lines[0]}" if lines else ""))
