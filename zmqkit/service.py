"""Owners: the thread or loop that runs a part's sockets, and how other threads reach them.

Every part that owns sockets in a thread of its own (a server, a subscriber, a farm submitter...)
runs on a ``ServiceThread``: started, ready, failed, stopped and joined in one place, so every part
behaves the same when it starts, fails or closes. An asyncio part owns its sockets on its loop;
``call_on_loop`` runs its closing there from whatever thread closes it (``Node.close`` included).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from .deadline import check_timeout
from .errors import BrokenError, ClosedError, Timeout, WrongThread, ZmqkitError
from .wakeup import Wakeup

__all__ = ["LoopOwner", "ServiceThread", "call_on_loop"]

log = logging.getLogger("zmqkit.service")

T = TypeVar("T")


class ServiceThread:
    """A named thread that owns a part's sockets.

        service = ServiceThread("zmqkit-pump:ticks", self._run)
        service.start()              # returns once _run called service.ready(), or raises

        def _run(self, service: ServiceThread) -> None:
            sock = node.server_socket(SocketKind.ROUTER)       # made in the thread that uses it
            poller = Poller([sock, service.wakeup])
            service.ready()
            try:
                while not service.stopping:
                    for ready in poller.poll(0.5): ...
            finally:
                sock.close()

        service.stop()               # from any thread: wakes the loop and joins it

    ``wakeup`` wakes the thread's poll from any thread (``wake``). An error raised by ``run``
    before ``ready`` is raised again by ``start``; one raised after it is kept in ``error`` and
    logged, so that the part can report it to its next caller.
    """

    def __init__(self, name: str, run: Callable[[ServiceThread], None]) -> None:
        self.name = name
        self._wakeup: Wakeup | None = None  # made by start(): an unstarted service holds nothing
        self.error: BaseException | None = None
        self._startup_error: BaseException | None = None  # raised by run before ready()
        self._run = run
        self._ready = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "alive" if self.alive else "idle"
        return f"<zmqkit.ServiceThread {self.name!r} {state}>"

    def start(self, timeout: float = 5.0) -> None:
        """Start the thread and wait until it is ready to serve.

        Raises:
            ZmqkitError: what ``run`` raised before it was ready (a ``ZmqkitError`` as it is,
                anything else as ``BrokenError`` from it); the thread is joined.
            Timeout: it was not ready within ``timeout`` seconds; it is told to stop.
        """
        self._wakeup = Wakeup()
        self._thread.start()
        if not self._ready.wait(check_timeout(timeout)):
            self.stop()
            raise Timeout(f"{self.name} was not ready in {timeout:g} s")
        error = self._startup_error
        if error is not None:
            self.stop()
            if isinstance(error, ZmqkitError):
                raise error
            raise BrokenError(f"{self.name} failed to start: {error!r}") from error

    def ready(self) -> None:
        """Called by ``run`` once its sockets are made: ``start`` returns."""
        self._ready.set()

    @property
    def wakeup(self) -> Wakeup:
        """What the thread polls to be woken (made by ``start``)."""
        if self._wakeup is None:
            raise ClosedError(f"{self!r} was never started")
        return self._wakeup

    @property
    def stopping(self) -> bool:
        """True once ``stop`` was called: ``run`` should return soon."""
        return self._stopping

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    @property
    def is_current(self) -> bool:
        """Whether the caller runs in this service's thread."""
        return threading.current_thread() is self._thread

    def wake(self) -> None:
        """Wake the thread's poll (from any thread; before ``start``, nothing to wake)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask ``run`` to return and join the thread; True once it has ended.

        Called from the service thread itself (a callback that closes its own part), it only
        asks: the thread ends when the callback returns to its loop.
        """
        self._stopping = True
        self.wake()
        if self.is_current:
            return False
        if self._thread.ident is None:  # never started
            return True
        self._thread.join(check_timeout(timeout))
        if self._thread.is_alive():
            log.warning("%s did not stop within %g s", self.name, timeout)
            return False
        return True

    def _main(self) -> None:
        try:
            self._run(self)
        except BaseException as exc:
            self.error = exc
            if self._ready.is_set():  # start() returns (or has returned) without it: log it
                log.exception("%s failed", self.name)
            else:
                self._startup_error = exc
        finally:
            self._ready.set()
            self.wakeup.close()  # a late wake() after this is quiet


def call_on_loop(loop: asyncio.AbstractEventLoop, function: Callable[[], T],
                 timeout: float = 2.0) -> T | None:
    """Run ``function`` on ``loop``'s thread and return its result, from any thread.

    On the loop's own thread, or when the loop is closed or no longer running (nothing can
    race with it then), it runs at once. Otherwise it is scheduled there and waited for at most
    ``timeout`` seconds; None if the loop did not get to it in time.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop or loop.is_closed() or not loop.is_running():
        return function()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(function())
        except BaseException as exc:
            done.set_exception(exc)

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # closed meanwhile
        return function()
    try:
        return done.result(check_timeout(timeout))
    except concurrent.futures.TimeoutError:
        log.warning("the loop of %r did not run %r within %g s", loop, function, timeout)
        return None


class LoopOwner:
    """The event loop an asyncio part belongs to, and the one check that it is used there.

        self._owner = LoopOwner("an AsyncSubmitter", instead="farm.Submitter")  # in __init__
        self._owner.check(self)          # first thing in every method but close and stats
        self._owner.call(self._close)    # close from any thread: runs on the part's loop

    Made inside a coroutine (on the running loop); elsewhere ``WrongThread`` says to use
    ``instead``, the part's blocking twin.
    """

    def __init__(self, part: str, *, instead: str) -> None:
        self.instead = instead
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongThread(
                f"{part} is made in a coroutine, on the event loop that will use it; "
                f"in plain threads, use {instead}"
            ) from None
        self.thread = threading.get_ident()

    def check(self, part: object) -> None:
        """Raise ``WrongThread`` unless called on the part's own loop, running.

        On its thread but with that loop stopped (or another loop running there), the part's
        sockets cannot be waited on either: that is the wrong place too.
        """
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop:
            raise WrongThread(
                f"{part!r} belongs to the event loop it was made on; from another thread or "
                f"loop, use {self.instead}, or asyncio.run_coroutine_threadsafe(..., its loop)"
            )

    @property
    def is_current(self) -> bool:
        """Whether the caller runs on the part's loop thread."""
        return threading.get_ident() == self.thread

    def call(self, function: Callable[[], T], timeout: float = 2.0) -> T | None:
        """``call_on_loop`` on the part's loop: run ``function`` there, from any thread."""
        return call_on_loop(self.loop, function, timeout)
