"""What a durable submitter's journal must still write: noted by the core, taken by the owner.

The core notes each change (a task submitted, a result back, a result delivered) as it happens,
under the submitter's lock or on its loop; the thread or loop that owns the journal takes the
changes as one ``Batch`` and commits them in one transaction. Changes are numbered, so a caller
that must not return before its change is on disk waits until ``written`` reaches its number.
Pure: no file, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .core import TaskResult

__all__ = ["Batch", "Ledger"]


class Batch(NamedTuple):
    """What the journal must write in one transaction, and the ledger mark it brings it to."""

    submitted: list[tuple[int, bytes]]  # (task id, payload as CBOR)
    finished: list[TaskResult]
    delivered: list[int]
    next_id: int
    mark: int


@dataclass(slots=True)
class Ledger:
    """What happened since the journal last wrote, in order, numbered: each change gets the next
    number of ``noted``, and ``written`` is the number the journal has committed up to."""

    submitted: list[tuple[int, bytes]] = field(default_factory=list)
    finished: list[TaskResult] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    next_id: int = 1
    noted: int = 0
    written: int = 0

    def note_submitted(self, task_id: int, payload: bytes) -> int:
        """A task was submitted; returns the mark the journal must reach to hold it."""
        self.submitted.append((task_id, payload))
        self.next_id = task_id + 1
        return self._note()

    def note_finished(self, result: TaskResult) -> int:
        """A task's result came back (or it was given up)."""
        self.finished.append(result)
        return self._note()

    def note_delivered(self, task_id: int) -> int:
        """A task's result was taken by the user's code: its row goes."""
        self.delivered.append(task_id)
        return self._note()

    def _note(self) -> int:
        self.noted += 1
        return self.noted

    @property
    def pending(self) -> bool:
        """Whether anything waits to be written."""
        return self.noted > self.written

    def take(self) -> Batch:
        """Everything noted so far, as one batch (the ledger is empty afterwards)."""
        batch = Batch(self.submitted, self.finished, self.delivered, self.next_id, self.noted)
        self.submitted, self.finished, self.delivered = [], [], []
        return batch
