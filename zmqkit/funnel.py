"""Sending from any thread onto one socket that one service thread owns.

A ZeroMQ socket must stay in one thread, yet a user's publisher is called from RPC handlers,
callbacks and threads of their own. ``Funnel`` keeps both promises: each sending thread gets a
PUSH socket of its own (made on its first send), and a service thread owns the target socket and
a PULL that gathers those pushes, forwarding them onto the target inside libzmq (``zmq.proxy``,
no Python per message and no GIL). The sending thread pays for one send, as it would on the
target itself; the frames of one thread keep their order.

This is the layout of ipykernel's IOPub thread, with the forwarding done in C.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from .errors import ClosedError
from .service import ServiceThread
from .sockets import Socket, SocketKind, SocketOptions, forward

__all__ = ["Funnel"]

_numbers = itertools.count()


class Funnel:
    """One socket, fed from any thread: ``send`` anywhere; ``close`` once, from any thread.

    Args:
        name: the service thread's name.
        make_target: makes the target socket; called in the service thread, which owns it.
        options: the per-thread PUSH and the PULL's options (high-water marks, message size).
    """

    def __init__(self, name: str, make_target: Callable[[], Socket], *,
                 options: SocketOptions) -> None:
        self.options = options
        self.target: Socket | None = None
        self._address = f"inproc://zmqkit-funnel-{next(_numbers)}"
        self._make_target = make_target
        self._local = threading.local()
        self._pushes: list[Socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._service = ServiceThread(name, self._run)
        self._service.start()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.endpoint
        return f"<zmqkit.Funnel {self._service.name!r} {state}>"

    @property
    def endpoint(self) -> str:
        """Where the target socket is bound ("" if it is not)."""
        return self.target.endpoint if self.target is not None else ""

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def send(self, frame: bytes) -> None:
        """Send ``frame`` from the calling thread (any thread).

        Raises:
            ClosedError: the funnel is closed.
            Timeout: the service thread has not taken frames for ``options.send_timeout``.
        """
        push: Socket | None = getattr(self._local, "push", None)
        if push is None:
            push = self._push_for_this_thread()
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        push.send(frame)

    def _push_for_this_thread(self) -> Socket:
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            push = Socket(SocketKind.PUSH, options=self.options)
            push.connect(self._address)
            self._pushes.append(push)
        self._local.push = push
        return push

    def close(self) -> None:
        """Forward what was sent, stop the service thread and close every socket. Idempotent.

        The sending threads' PUSH sockets are closed here, by whichever thread closes: no
        thread sends on them any more (``send`` refuses once closed).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pushes, self._pushes = self._pushes, []
        if self._service.alive:
            # held open until the thread ends: an inproc message whose sender closes before the
            # receiver has attached the pipe is lost, and the proxy would never stop
            with Socket(SocketKind.PAIR) as control:
                control.connect(self._address + "-control")
                control.send(b"TERMINATE")
                self._service.stop()  # it forwards what the pushes queued (inproc: at the PULL)
        self._service.stop()
        for push in pushes:  # after the proxy ended: closing a pipe under it makes it fail
            push.close()

    def _run(self, service: ServiceThread) -> None:
        pull = Socket(SocketKind.PULL, options=self.options)
        control = Socket(SocketKind.PAIR)
        target = None
        try:
            pull.bind_endpoint(self._address)
            control.bind_endpoint(self._address + "-control")
            target = self.target = self._make_target()
            service.ready()
            forward(pull, target, control)
            while (frame := pull.try_recv()) is not None:  # sent before close: deliver it
                target.try_send(frame)
        finally:
            for sock in (pull, control, target):
                if sock is not None:
                    sock.close()
