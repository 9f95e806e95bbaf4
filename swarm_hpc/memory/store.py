"""The persistent store: facts that outlive a job, in one SQLite database in a folder the spec names.

`[memory] store = "PATH"` names a folder; the facts live in PATH/facts.sqlite3. SQLite (the standard library's
sqlite3) does what a store shared by several jobs needs: every write is one transaction, so a job killed at any
moment leaves each fact either written whole or not at all, and writers take turns through its file locks
(`busy_timeout`: a writer waits for the other instead of failing). The journal is SQLite's rollback journal,
not WAL: WAL needs shared memory between the writers and breaks on network file systems, and the store of a
SLURM array job sits on shared storage, written from several nodes; `synchronous = FULL` makes a committed
fact survive a power cut.

A fact is one line of text with where it came from (`user`, or the run that concluded it) and when; adding
a fact the store already has (same words, case and spacing aside) returns the one it has. An FTS5 index over
the text serves the lexical retrieval (retrieval.py); the `vectors` table keeps each fact's embedding, one per
model, for the retrieval by meaning above this package (swarm_hpc/knowledge/recall.py): bytes here, written like
facts (one transaction), and removed with their fact by a trigger, whoever forgets it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swarm_hpc.errors import UserError
from swarm_hpc.memory.facts import normal

DB_FILE = "facts.sqlite3"
BUSY_MS = 60_000       # how long a writer waits for another one before it gives up
MAX_CHARS = 4000       # one fact; a longer text is an error, not a silently cut fact

SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    text    TEXT NOT NULL,
    key     TEXT NOT NULL UNIQUE,
    source  TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS facts_fts USING fts5(text, content='facts', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS facts_ai AFTER INSERT ON facts BEGIN
    INSERT INTO facts_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS facts_ad AFTER DELETE ON facts BEGIN
    INSERT INTO facts_fts(facts_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS vectors (
    fact    INTEGER NOT NULL,
    model   TEXT NOT NULL,
    vector  BLOB NOT NULL,
    PRIMARY KEY (fact, model)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS vectors_ad AFTER DELETE ON facts BEGIN
    DELETE FROM vectors WHERE fact = old.id;
END;
"""


@dataclass(frozen=True)
class Fact:
    id: int
    text: str
    source: str
    created: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _fact(row: tuple[Any, ...]) -> Fact:
    return Fact(int(row[0]), str(row[1]), str(row[2]), float(row[3]))


class Store:
    """One store folder. Cheap to open; every method is its own transaction."""

    def __init__(self, folder: str | Path, where: str = "", field: str = "", create: bool = True):
        self.folder = Path(folder)
        self.path = self.folder / DB_FILE
        where = where or str(self.folder)
        if not create and not self.path.is_file():
            raise UserError(where, f"{str(self.folder)!r} is not a memory store (no {DB_FILE} in it)",
                            "give the folder a spec names in `[memory] store`, or add a fact to make one", field)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            self.db.execute("PRAGMA synchronous = FULL")
            with self._write() as db:
                for statement in _statements(SCHEMA):
                    db.execute(statement)
        except (OSError, sqlite3.Error) as e:
            raise UserError(where, f"cannot open the memory store {str(self.folder)!r}: {e}",
                            "give a folder you can write to (or whose facts.sqlite3 is a swarm-hpc store)",
                            field) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE: no deadlock between two readers turning writers)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- facts ----------------------------------------------------------------------------------------------

    def add(self, text: str, source: str = "user") -> Fact:
        """Teach one fact (the one the store already has, when it has it)."""
        text = " ".join(text.split())
        if not text:
            raise UserError(str(self.folder), "the fact is empty", "give the fact's text, e.g. \"The lab's printer is on floor 3.\"")
        if len(text) > MAX_CHARS:
            raise UserError(str(self.folder), f"the fact has {len(text)} characters, more than {MAX_CHARS}",
                            "split it into shorter facts")
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO facts(text, key, source, created) VALUES (?, ?, ?, ?)",
                       (text, normal(text), source, time.time()))
            row = db.execute("SELECT id, text, source, created FROM facts WHERE key = ?", (normal(text),)).fetchone()
        return _fact(row)

    def all(self) -> list[Fact]:
        return [_fact(r) for r in self.db.execute("SELECT id, text, source, created FROM facts ORDER BY id")]

    def get(self, ids: list[int]) -> list[Fact]:
        marks = ",".join("?" * len(ids))
        return [_fact(r) for r in self.db.execute(
            f"SELECT id, text, source, created FROM facts WHERE id IN ({marks}) ORDER BY id", ids)]

    def forget(self, fact_id: int) -> bool:
        """Remove one fact; False when there was none with that id."""
        with self._write() as db:
            return db.execute("DELETE FROM facts WHERE id = ?", (fact_id,)).rowcount > 0

    # --- vectors (one per fact and embedding model) --------------------------------------------------------------

    def with_vectors(self, model: str) -> list[tuple[Fact, bytes | None]]:
        """Every fact, oldest first, with its vector by `model` (None when it has none yet): one read, so one
        state of the store."""
        rows = self.db.execute(
            "SELECT f.id, f.text, f.source, f.created, v.vector FROM facts f "
            "LEFT JOIN vectors v ON v.fact = f.id AND v.model = ? ORDER BY f.id", (model,)).fetchall()
        return [(_fact(r), None if r[4] is None else bytes(r[4])) for r in rows]

    def put_vectors(self, model: str, vectors: dict[int, bytes]) -> int:
        """Keep facts' vectors by `model` (replacing any), in one transaction; a fact forgotten meanwhile gets
        none. Returns how many were written."""
        with self._write() as db:
            return sum(db.execute("INSERT OR REPLACE INTO vectors(fact, model, vector) SELECT ?, ?, ? "
                                  "WHERE EXISTS (SELECT 1 FROM facts WHERE id = ?)",
                                  (fact, model, vector, fact)).rowcount for fact, vector in vectors.items())

    def drop_other_versions(self, model: str) -> int:
        """Remove the vectors an earlier file of the same model left ("name@sha256:<another>"): a changed model file
        embeds every fact again, and its old vectors would otherwise stay. Other models' vectors stay. Returns how
        many rows went."""
        name = model.split("@", 1)[0]
        with self._write() as db:
            return db.execute("DELETE FROM vectors WHERE substr(model, 1, ?) = ? AND model != ?",
                              (len(name) + 1, name + "@", model)).rowcount

    def check(self) -> str:
        """SQLite's own integrity check ("ok")."""
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])


def _statements(script: str) -> list[str]:
    """The schema's statements one by one (executescript would COMMIT the transaction they must share)."""
    out, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out
