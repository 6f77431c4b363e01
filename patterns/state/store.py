"""A replica's store: its map, tombstones and per-writer table in one SQLite file.

    entries (key, entry)    the write that holds each key: [writer, seq, op, key, stamp, ...]
    writers (writer, seq)   how far this replica has applied each writer (retired ones too)
    meta    (name, value)   kind, owner (the group), format

Both tables are written in one transaction from one consistent look at the core, so the store
never claims a writer's sequence number without the entries it brought. Values and sequence
numbers are kept as CBOR (a sequence number may exceed SQLite's 63-bit integers). The store is
opened and written by the replica's service thread alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from zmqkit import ConfigError, codec

from .._durable import DEFAULT_TIMEOUT, Database
from .core import Entry
from .wire import is_uint, is_writer, valid_op

__all__ = ["Changes", "Store"]

KIND = "zmqkit state store"
TABLES = (
    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, entry BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS writers (writer BLOB PRIMARY KEY, seq BLOB NOT NULL) WITHOUT ROWID",
)


class Changes(NamedTuple):
    """What a store must write: entries in their wire form (``Entry.as_wire``), and writers'
    progress (None: forgotten)."""

    entries: Sequence[list[Any]]
    writers: Sequence[tuple[bytes, int | None]]


class Store(Database):
    """The replica of group ``group`` kept in the SQLite file at ``path``; used by the thread
    that made it.

    Raises:
        ConfigError: the file cannot be used (see ``_durable.open_database``).
    """

    def __init__(self, path: object, group: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(path, kind=KIND, owner=group, tables=TABLES, timeout=timeout)

    def load(self, wall: int) -> tuple[dict[str, Entry], dict[bytes, int]]:
        """The entries and the per-writer table the file holds (a key whose TTL has passed by
        ``wall`` comes back as a tombstone).

        Raises:
            ConfigError: a row cannot be read back (the file was changed by hand?).
        """
        entries: dict[str, Entry] = {}
        for key, blob in self.db.execute("SELECT key, entry FROM entries"):
            entry = self.read_cbor(blob, f"the entry of {key!r}")
            if (type(entry) is not list or len(entry) != 7 or not is_writer(entry[0])
                    or not is_uint(entry[1]) or not valid_op(entry[2:]) or entry[3] != key):
                raise ConfigError(f"{str(self.path)!r}: the entry of {key!r} is not one")
            entries[key] = Entry.from_wire(entry, wall)
        progress: dict[bytes, int] = {}
        for writer, blob in self.db.execute("SELECT writer, seq FROM writers"):
            seq = self.read_cbor(blob, "a writer's sequence number")
            if not is_writer(writer) or not is_uint(seq):
                raise ConfigError(f"{str(self.path)!r}: a writer's row is not one")
            progress[writer] = seq
        return entries, progress

    def write(self, changes: Changes) -> None:
        """Commit ``changes`` in one transaction.

        Raises:
            BrokenError: the file failed (a full disk, say); nothing of them was kept.
        """
        kept = [(writer, codec.dumps(seq)) for writer, seq in changes.writers if seq is not None]
        gone = [(writer,) for writer, seq in changes.writers if seq is None]
        with self.transaction() as db:
            if changes.entries:
                db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?)",
                               [(entry[3], codec.dumps(entry)) for entry in changes.entries])
            if kept:
                db.executemany("INSERT OR REPLACE INTO writers VALUES (?, ?)", kept)
            if gone:
                db.executemany("DELETE FROM writers WHERE writer = ?", gone)
