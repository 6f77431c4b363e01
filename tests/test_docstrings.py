"""Every public callable of the library says what it is for: a docstring on each public class,
function and method of ``zmqkit`` and ``zmqkit.patterns`` (dunder methods and inherited members
aside)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import zmqkit.patterns

import zmqkit


def modules(package: ModuleType) -> Iterator[ModuleType]:
    yield package
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def public_callables(module: ModuleType) -> Iterator[tuple[str, object]]:
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value):
            yield f"{module.__name__}.{name}", value
            for attr, member in vars(value).items():
                if attr.startswith("_"):
                    continue
                function = member.fget if isinstance(member, property) else member
                if isinstance(function, (staticmethod, classmethod)):
                    function = function.__func__
                if inspect.isfunction(function) and not _inherits_doc(value, attr):
                    yield f"{module.__name__}.{name}.{attr}", function
        elif inspect.isfunction(value):
            yield f"{module.__name__}.{name}", value


def _inherits_doc(cls: type, attr: str) -> bool:
    """An override of a documented base method keeps its base's docstring."""
    return any(getattr(getattr(base, attr, None), "__doc__", None) for base in cls.__mro__[1:])


def test_every_public_callable_has_a_docstring() -> None:
    missing = sorted(
        name
        for package in (zmqkit, zmqkit.patterns)
        for module in modules(package)
        if not module.__name__.startswith("zmqkit.demos")
        for name, value in public_callables(module)
        if not (getattr(value, "__doc__", None) or "").strip()
    )
    assert not missing, f"{len(missing)} public callables have no docstring:\n" + "\n".join(missing)
