"""Which methods a service exposes, and how each one runs.

    plain ``def``                  inline, on the server thread, one at a time (fastest)
    ``def`` marked ``@blocking``   in the server's bounded worker pool
    generator ``def``              streams its items, from the worker pool
    ``async def``                  on the server's asyncio loop thread
    ``async def`` generator        streams its items, from the asyncio loop thread

A plain handler runs inline because a thread hop costs more than most handlers do; mark any
handler that may wait (I/O, sleep, a lock, long computation) with ``@blocking`` so that it cannot
hold up other calls.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from zmqkit import ConfigError

from .streams import STREAM_METHOD

__all__ = ["DESCRIBE_METHOD", "Handler", "Mode", "blocking", "collect_handlers"]

DESCRIBE_METHOD = "zmqkit.describe"  # not a Python identifier, so no user method can clash

F = TypeVar("F", bound=Callable[..., Any])


class Mode(enum.Enum):
    """How a handler runs: inline on the server thread, in the pool, or on the loop."""

    INLINE = "inline"
    BLOCKING = "blocking"
    STREAM = "stream"
    ASYNC = "async"
    ASYNC_STREAM = "async-stream"


def blocking(function: F) -> F:
    """Mark a handler that may wait: it then runs in the worker pool, not on the server thread."""
    function.__zmqkit_blocking__ = True  # type: ignore[attr-defined]
    return function


@dataclass(frozen=True, slots=True)
class Handler:
    """One served method: its name, its function, and how it runs."""

    name: str
    function: Callable[..., Any]
    mode: Mode

    @classmethod
    def of(cls, name: str, function: Callable[..., Any]) -> Handler:
        """The handler for ``function``, its mode read from what kind of function it is."""
        if inspect.isasyncgenfunction(function):
            mode = Mode.ASYNC_STREAM
        elif inspect.iscoroutinefunction(function):
            mode = Mode.ASYNC
        elif inspect.isgeneratorfunction(function):
            mode = Mode.STREAM
        elif getattr(function, "__zmqkit_blocking__", False):
            mode = Mode.BLOCKING
        else:
            mode = Mode.INLINE
        return cls(name, function, mode)

    def arguments_misfit(self, args: list[Any], kwargs: dict[str, Any]) -> str | None:
        """Why the handler cannot take these arguments, or None if it can (asked only after a
        TypeError). Read from the signature, so a method's ``self`` is never counted."""
        try:
            inspect.signature(self.function).bind(*args, **kwargs)
        except TypeError as exc:
            return str(exc)
        except ValueError:  # no signature to read (some builtins): cannot tell, assume it fits
            return None
        return None

    def describe(self) -> dict[str, str]:
        """What ``client.methods()`` shows: name, signature, doc and mode."""
        return {
            "name": self.name,
            "signature": f"{self.name}{self.signature()}",
            "doc": inspect.getdoc(self.function) or "",
            "mode": self.mode.value,
        }

    def signature(self) -> str:
        """The signature as text, with annotations resolved where they can be."""
        try:
            return str(inspect.signature(self.function, eval_str=True))
        except (NameError, SyntaxError, TypeError):  # an annotation that does not evaluate here
            return str(inspect.signature(self.function))
        except ValueError:  # no signature to read (some builtins)
            return "(...)"


def collect_handlers(
    target: object | Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
) -> dict[str, Handler]:
    """The handlers of ``target``: an object's public methods, a name->function map, or a list."""
    if isinstance(target, Mapping):
        pairs = list(target.items())
    elif isinstance(target, (list, tuple)):
        pairs = [(function.__name__, function) for function in target]
    elif inspect.isroutine(target):
        pairs = [(target.__name__, target)]
    else:
        pairs = [
            (name, getattr(target, name))
            for name in dir(target)
            if not name.startswith("_") and callable(getattr(target, name))
        ]
    handlers = {name: Handler.of(name, function) for name, function in pairs}
    if DESCRIBE_METHOD in handlers:
        raise ConfigError(f"{DESCRIBE_METHOD!r} is the built-in method list; pick another name")
    if STREAM_METHOD in handlers:
        raise ConfigError(f"{STREAM_METHOD!r} opens the built-in streams; pick another name")
    if not handlers:
        raise ConfigError(f"{target!r} has no public callables to serve")
    return handlers
