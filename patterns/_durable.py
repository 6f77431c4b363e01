"""The one SQLite file a durable part keeps: a farm submitter's journal, a state replica's store.

stdlib ``sqlite3``, one file in WAL mode (SQLite adds ``-wal`` beside it while it is open), and
three rules that every durable part follows:

- **one owner**: the file is opened by the thread that will use it (a ``sqlite3`` connection
  belongs to its thread) and held in exclusive locking mode, so a second part, in this process
  or another, is refused with ``ConfigError`` instead of sharing it;
- **bounded waits**: every wait for a lock ends after ``timeout`` seconds with an error;
- **a crash loses nothing committed**: ``synchronous=NORMAL`` in WAL mode makes a commit survive
  the process being killed (SIGKILL included); it is the machine losing power that may take the
  last commits, which ``synchronous=FULL`` would keep at the cost of an fsync per commit.

The file records what it is for (``kind``) and whose it is (``owner``: a farm's or a group's
name), so a journal is never read as a store, nor one farm's tasks by another farm. A part's
file is a ``Database``: the farm's ``Journal`` and the state's ``Store`` are two.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from zmqkit import BrokenError, ConfigError, ProtocolError, check_timeout, codec

__all__ = ["DEFAULT_TIMEOUT", "FORMAT", "Database", "check_path", "open_database"]

DEFAULT_TIMEOUT = 2.0  # the longest a durable part waits for the file's lock
FORMAT = 1  # the layout of the tables; a file of another format is refused

_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value)"


def check_path(path: object, what: str) -> Path:
    """``path`` as a ``Path``, if it names a file to keep ``what`` in.

    Raises:
        ConfigError: not a path, or a directory.
    """
    if not isinstance(path, (str, Path)) or not str(path) or str(path) == ":memory:":
        raise ConfigError(f"a {what} is the path of a file, not {path!r}")
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"a {what} is a file; {str(file)!r} is a directory")
    return file


def open_database(path: Path, *, kind: str, owner: str, tables: Sequence[str],
                  timeout: float = DEFAULT_TIMEOUT) -> sqlite3.Connection:
    """Open (or create) the file at ``path`` for this thread alone: WAL, exclusive, its tables.

    Raises:
        ConfigError: the file cannot be opened, is held by another part, is not SQLite, or
            holds another kind of data, another owner's, or another format.
    """
    check_timeout(timeout)
    try:
        connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {str(path)!r}: {exc}") from exc
    try:
        connection.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no shared-memory file
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise ConfigError(f"{str(path)!r} cannot be put in WAL mode (it says {mode!r})")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("BEGIN IMMEDIATE")  # takes the file's lock, kept until closed
        connection.execute(_META)
        for table in tables:
            connection.execute(table)
        _claim(connection, path, {"kind": kind, "owner": owner, "format": FORMAT})
        connection.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        connection.close()
        held = "locked" in str(exc)
        raise ConfigError(f"{str(path)!r} is in use by another {kind} (one owner at a time)"
                          if held else f"cannot use {str(path)!r}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise ConfigError(f"{str(path)!r} is not a {kind}: {exc}") from exc
    except BaseException:
        connection.close()
        raise
    return connection


def _claim(connection: sqlite3.Connection, path: Path, expected: dict[str, object]) -> None:
    """Write ``expected`` into a new file's meta table, or check that an old file matches it."""
    found = dict(connection.execute("SELECT name, value FROM meta").fetchall())
    if not found:
        connection.executemany("INSERT INTO meta VALUES (?, ?)", expected.items())
        return
    for name, value in expected.items():
        if found.get(name) != value:
            raise ConfigError(f"{str(path)!r} is a {found.get('kind')!r} of "
                              f"{found.get('owner')!r} (format {found.get('format')!r}), not a "
                              f"{expected['kind']!r} of {expected['owner']!r} (format {FORMAT})")


class Database:
    """A durable part's file, open for the calling thread alone (see ``open_database``).

    Raises:
        ConfigError: ``path`` is not a file to use, or ``open_database`` refuses it.
    """

    def __init__(self, path: object, *, kind: str, owner: str, tables: Sequence[str],
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = check_path(path, kind)
        self.db = open_database(self.path, kind=kind, owner=owner, tables=tables,
                                timeout=timeout)

    def __repr__(self) -> str:
        return f"<zmqkit {type(self).__name__} {str(self.path)!r}>"

    def close(self) -> None:
        """Close the file (idempotent); what was committed stays."""
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The statements run in the ``with`` block commit together, or not at all.

        Raises:
            BrokenError: the file failed (a full disk, say); nothing of them was kept.
        """
        db = self.db
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BrokenError(f"{str(self.path)!r} failed: {exc}") from exc

    def read_cbor(self, blob: object, what: str) -> Any:
        """A value the part stored as CBOR.

        Raises:
            ConfigError: it cannot be read back (the file was changed by hand?).
        """
        try:
            if type(blob) is not bytes:
                raise ProtocolError(f"a {type(blob).__name__}, not CBOR bytes")
            return codec.loads(blob)
        except ProtocolError as exc:
            raise ConfigError(f"{str(self.path)!r}: {what} cannot be read back: {exc}") from exc
