"""The farm's messages: envelopes of docs/protocol.md with reserved method names. Pure.

    worker ──► submitter   REQUEST  zmqkit.farm.ready   args [free, last_dispatch, held]
    worker ──► submitter   REQUEST  zmqkit.farm.leave   args []
    submitter ──► worker   REQUEST  zmqkit.farm.task    call_id = task id, [dispatch, payload]
    worker ──► submitter   REPLY or ERROR               call_id = task id
    submitter ──► worker   CANCEL                       call_id = task id

docs/protocol.md (section 9.1) is the normative description. Reading a frame gives one of the
small tuples below, or raises ``ProtocolError``; nothing here touches a socket or a clock.
"""

from __future__ import annotations

import uuid as uuid_module
from typing import Any, NamedTuple

from zmqkit import ConfigError, ProtocolError, RemoteError, codec, remote_error
from zmqkit.codec import Kind

__all__ = [
    "LEAVE_METHOD",
    "READY_METHOD",
    "TASK_METHOD",
    "CancelTask",
    "Leave",
    "Ready",
    "Result",
    "Stranger",
    "TaskFrame",
    "TaskMessage",
    "check_farm_name",
    "encode_leave",
    "encode_ready",
    "read_from_submitter",
    "read_from_worker",
    "role_of",
    "worker_node",
    "worker_routing_id",
]

READY_METHOD = "zmqkit.farm.ready"
LEAVE_METHOD = "zmqkit.farm.leave"
TASK_METHOD = "zmqkit.farm.task"
ROLE_PREFIX = "farm:"
ROUTING_MARK = b"W"  # libzmq reserves routing ids that start with a zero byte; a UUID may
MAX_FARM_NAME_BYTES = 64
MAX_HELD = 100_000  # a READY listing more held tasks than this is refused as garbage


def check_farm_name(name: object) -> str:
    """A farm name is 1 to 64 bytes of UTF-8 text, like a node name.

    Raises:
        ConfigError: it is not.
    """
    try:
        size = len(name.encode()) if isinstance(name, str) else 0
    except UnicodeEncodeError:
        size = 0
    if not 0 < size <= MAX_FARM_NAME_BYTES:
        raise ConfigError(f"a farm name is 1 to {MAX_FARM_NAME_BYTES} bytes of text, not {name!r}")
    return name  # type: ignore[return-value]


def role_of(farm: str) -> str:
    """The beacon role under which a submitter of ``farm`` advertises its ROUTER."""
    return ROLE_PREFIX + check_farm_name(farm)


def worker_routing_id(node_uuid: uuid_module.UUID, instance: int) -> bytes:
    """``W`` + the worker node's 16-byte UUID + a 4-byte instance number: 21 bytes."""
    return ROUTING_MARK + node_uuid.bytes + instance.to_bytes(4, "big")


def worker_node(routing_id: bytes) -> uuid_module.UUID | None:
    """The node UUID in a worker's routing id; None for a routing id of another shape."""
    if len(routing_id) != 21 or routing_id[:1] != ROUTING_MARK:
        return None
    return uuid_module.UUID(bytes=routing_id[1:17])


# -- worker to submitter -------------------------------------------------------------------------


class Ready(NamedTuple):
    """A worker's state, sent on connecting, after each result and every second."""

    free: int  # tasks it takes now, beyond those it holds
    last_dispatch: int  # the highest dispatch number it received from this submitter (0: none)
    held: list[int]  # task ids from this submitter it received and has not answered


class Leave(NamedTuple):
    """A worker that stops: give what it holds to others."""


class Result(NamedTuple):
    task_id: int
    value: Any
    error: RemoteError | None


class Stranger(NamedTuple):
    """A request the farm does not know (an RPC client at the wrong door): answered, an error."""

    call_id: int
    method: str


def encode_ready(seq: int, free: int, last_dispatch: int, held: list[int]) -> bytes:
    """A worker's READY: how many more tasks it takes, the last dispatch seen, the tasks held."""
    return codec.encode_request(seq, READY_METHOD, [free, last_dispatch, held], {})


def encode_leave(seq: int) -> bytes:
    """A worker's LEAVE: it hands back every task it holds and asks for no more."""
    return codec.encode_request(seq, LEAVE_METHOD, [], {})


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


def read_from_worker(frame: bytes) -> Ready | Leave | Result | Stranger:
    """What a frame from a worker says.

    Raises:
        ProtocolError: not a valid envelope, or not a farm message.
    """
    message = codec.decode(frame)
    kind = message[1]
    if kind == Kind.REPLY:
        return Result(message[2], message[3], None)
    if kind == Kind.ERROR:
        return Result(message[2], None, remote_error(message[3], message[4], message[5]))
    if kind != Kind.REQUEST:
        raise ProtocolError(f"a worker sends REQUEST, REPLY or ERROR, not kind {kind}")
    method, args = message[3], message[4]
    if method == READY_METHOD:
        if (len(args) != 3 or not _is_uint(args[0]) or not _is_uint(args[1])
                or type(args[2]) is not list or len(args[2]) > MAX_HELD
                or not all(_is_uint(task_id) for task_id in args[2])):
            raise ProtocolError("ready args are [free, last_dispatch, [task ids]], all unsigned")
        return Ready(args[0], args[1], args[2])
    if method == LEAVE_METHOD:
        return Leave()
    return Stranger(message[2], method)


# -- submitter to worker -------------------------------------------------------------------------


class TaskMessage(NamedTuple):
    task_id: int
    dispatch: int
    payload: Any


class CancelTask(NamedTuple):
    task_id: int


class TaskFrame:
    """One task, encoded once at submit; each dispatch only splices in its dispatch number.

    The frame is ``[1, 1, task_id, "zmqkit.farm.task", [dispatch, payload], {}]``. Encoding it
    with dispatch 0 (one byte, ``00``) checks that the payload can travel, and a resend to another
    worker costs a byte copy, not a second encoding of the payload.
    """

    __slots__ = ("head", "tail")

    def __init__(self, task_id: int, payload: Any) -> None:
        frame = codec.encode_request(task_id, TASK_METHOD, [0, payload], {})  # EncodeError here
        split = 3 + len(codec.dumps(task_id)) + len(_TASK_METHOD_CBOR) + 1  # up to the args head
        self.head, self.tail = frame[:split], frame[split + 1:]

    def encode(self, dispatch: int) -> bytes:
        """The frame with ``dispatch`` (from the core's counter: 1 and up) spliced in."""
        return self.head + codec.dumps(dispatch) + self.tail

    @property
    def payload(self) -> bytes:
        """The payload as CBOR: the tail less the empty kwargs map (one byte, ``a0``)."""
        return self.tail[:-1]


_TASK_METHOD_CBOR = codec.dumps(TASK_METHOD)


def read_from_submitter(frame: bytes) -> TaskMessage | CancelTask:
    """What a frame from a submitter says.

    Raises:
        ProtocolError: not a valid envelope, or not a task or a cancel.
    """
    message = codec.decode(frame)
    kind = message[1]
    if kind == Kind.CANCEL:
        return CancelTask(message[2])
    if kind != Kind.REQUEST or message[3] != TASK_METHOD:
        raise ProtocolError(f"a submitter sends {TASK_METHOD} requests and cancels only")
    args = message[4]
    if len(args) != 2 or not _is_uint(args[0]) or args[0] == 0:
        raise ProtocolError("task args are [dispatch, payload] with dispatch from 1")
    return TaskMessage(message[2], args[0], args[1])
