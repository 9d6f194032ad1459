"""The consent registry: people who may be shown, their ArcFace embeddings, in one SQLite file.

Every change is one SQLite transaction, so a crash leaves the old or the new registry, never a
mix. Embeddings are stored as float32 bytes next to the signature of the model that made them;
embeddings from another model are never matched (their geometry is meaningless to ours).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import sqlite_utils


class RegistryError(Exception):
    """A registry operation that cannot be done as asked (worded for the operator)."""


@dataclass
class Person:
    person_id: str
    name: str
    embeddings: np.ndarray  # [k, dim] float32, unit rows
    model_sig: str
    valid_from: Optional[float] = None  # UTC seconds; consent starts here (None: always started)
    valid_until: Optional[float] = None  # UTC seconds; consent ends here, exclusive (None: no end)


@dataclass
class Gallery:
    """An immutable snapshot for matching: one matrix product per frame, whatever the size."""

    person_ids: list[str]
    names: list[str]
    matrix: np.ndarray  # [rows, dim]
    owner: np.ndarray  # [rows] index into person_ids
    version: int

    @classmethod
    def empty(cls, dim: int = 128) -> "Gallery":
        return cls([], [], np.zeros((0, dim), np.float32), np.zeros(0, np.int64), 0)

    def __len__(self) -> int:
        return len(self.person_ids)

    def only(self, keep: set) -> "Gallery":
        """The same gallery restricted to the person ids in ``keep`` (consent in force now)."""
        if all(pid in keep for pid in self.person_ids):
            return self
        kept = [i for i, pid in enumerate(self.person_ids) if pid in keep]
        remap = np.full(len(self.person_ids), -1, np.int64)
        remap[kept] = np.arange(len(kept))
        rows = np.isin(self.owner, kept)
        return Gallery([self.person_ids[i] for i in kept], [self.names[i] for i in kept],
                       self.matrix[rows], remap[self.owner[rows]], self.version)

    def match(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best person index (-1 when the gallery is empty) and its cosine, per query row."""
        n = embeddings.shape[0]
        if not self.person_ids or n == 0:
            return np.full(n, -1, np.int64), np.zeros(n, np.float32)
        sims = embeddings @ self.matrix.T
        best_row = np.argmax(sims, axis=1)
        return self.owner[best_row], sims[np.arange(n), best_row]

    def person_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """[n, people]: each query's best cosine over each person's templates (rows are grouped
        by person, so one matrix product and one segmented max)."""
        if not self.person_ids:
            return np.zeros((embeddings.shape[0], 0), np.float32)
        starts = np.flatnonzero(np.r_[True, self.owner[1:] != self.owner[:-1]])
        return np.maximum.reduceat(embeddings @ self.matrix.T, starts, axis=1)


def _blob(vectors: np.ndarray) -> bytes:
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def hash_people(people: list[Person]) -> str:
    """sha256 over people and embeddings in a canonical order: equal registries, equal hashes.
    The sync protocol checks a snapshot against its signed hash with this before applying it."""
    digest = hashlib.sha256()
    for person in sorted(people, key=lambda p: p.person_id):
        digest.update(f"{person.person_id}\x00{person.name}\x00{person.model_sig}\x00".encode())
        digest.update(_blob(person.embeddings))
        if person.valid_from is not None or person.valid_until is not None:  # unchanged hash without a period
            digest.update(f"\x01{person.valid_from!r}\x00{person.valid_until!r}\x00".encode())
    return digest.hexdigest()


def _private_files(path: Path) -> None:
    """The registry holds biometric data: its directory 0700, the database and its WAL/SHM 0600,
    whatever the umask. The database is created here, 0600 from its first byte, so SQLite (which
    gives the WAL and SHM the database's mode) never makes a readable file."""
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(parents=True, mode=0o700)
    info = directory.stat()
    # A shared directory (sticky, like /tmp) or another user's is left alone: the files are 0600.
    if info.st_mode & 0o077 and not info.st_mode & stat.S_ISVTX and info.st_uid == os.getuid():
        os.chmod(directory, 0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:
            os.chmod(file, 0o600)


class Registry:
    """Thread-safe access to the registry file (the API, the pipeline and MQTT sync share it)."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.path = path
        self._lock = threading.RLock()
        conn = None
        try:
            _private_files(path)
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self.db = sqlite_utils.Database(conn)
            self._ensure_schema()
            _private_files(path)  # the -wal and -shm files SQLite just made
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()  # a half-opened registry must not keep its file (or a mount) busy
            reason = (exc.strerror or exc) if isinstance(exc, OSError) else exc
            raise RegistryError(f"cannot use the registry {path}: {reason} (is {path.parent} writable?)") from None

    def _ensure_schema(self) -> None:
        with self.transaction():
            if "people" not in self.db.table_names():
                self.db["people"].create(
                    {"person_id": str, "name": str, "created_at": float, "updated_at": float}, pk="person_id"
                )
                self.db["people"].create_index(["name"], unique=True)
            if "embeddings" not in self.db.table_names():
                self.db["embeddings"].create(
                    {"id": int, "person_id": str, "model_sig": str, "dim": int, "vector": bytes},
                    pk="id",
                    foreign_keys=[("person_id", "people", "person_id")],
                )
                self.db.execute("CREATE INDEX IF NOT EXISTS embeddings_person ON embeddings(person_id)")
            if "meta" not in self.db.table_names():
                self.db["meta"].create({"key": str, "value": str}, pk="key")
            columns = self.db["people"].columns_dict
            for column in ("valid_from", "valid_until"):  # in-place migration of older files
                if column not in columns:
                    self.db.execute(f"ALTER TABLE people ADD COLUMN {column} REAL")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic change; nested use joins the outer transaction."""
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:
                yield
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # -- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str, default: Optional[str] = None) -> Optional[str]:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db["meta"].upsert({"key": key, "value": str(value)}, pk="key")

    @property
    def version(self) -> int:
        return int(self.get_meta("version", "0"))

    def set_version(self, version: int) -> None:
        self.set_meta("version", str(int(version)))

    def change_token(self) -> tuple[int, int]:
        """Differs after any commit, by this connection or another process: cheap to poll."""
        with self._lock:
            other = self.db.execute("PRAGMA data_version").fetchone()[0]
            own = self.db.execute("SELECT total_changes()").fetchone()[0]
        return int(other), int(own)

    # -- people -------------------------------------------------------------------------------
    def upsert_person(self, name: str, embeddings: np.ndarray, model_sig: str, person_id: Optional[str] = None) -> str:
        """Insert or replace a person and all their embeddings; returns the person id."""
        name = name.strip()
        if not name:
            raise RegistryError("a person needs a non-empty name")
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0 or not np.all(np.isfinite(vectors)):
            raise RegistryError("embeddings must be a non-empty [k, dim] array of finite numbers")
        now = time.time()
        with self.transaction():
            existing = self.find(name)
            if person_id is None:
                person_id = existing.person_id if existing else uuid.uuid4().hex
            elif existing and existing.person_id != person_id:
                raise RegistryError(f"the name {name!r} already belongs to another person")
            old = self.db.execute("SELECT created_at FROM people WHERE person_id = ?", [person_id]).fetchone()
            self.db.execute("DELETE FROM embeddings WHERE person_id = ?", [person_id])
            self.db["people"].upsert(
                {"person_id": person_id, "name": name, "created_at": old[0] if old else now, "updated_at": now},
                pk="person_id",
            )
            self.db["embeddings"].insert_all(
                {"person_id": person_id, "model_sig": model_sig, "dim": int(v.shape[0]), "vector": _blob(v)}
                for v in vectors
            )
        return person_id

    def remove_person(self, name_or_id: str) -> bool:
        with self.transaction():
            person = self.find(name_or_id) or self.get(name_or_id)
            if person is None:
                return False
            self.db.execute("DELETE FROM embeddings WHERE person_id = ?", [person.person_id])
            self.db.execute("DELETE FROM people WHERE person_id = ?", [person.person_id])
        return True

    def replace_all(self, people: list[Person], version: int) -> None:
        """Swap the whole registry for ``people`` at ``version``, atomically (bulk inserts: a
        10,000-person snapshot is one transaction of two multi-row inserts)."""
        names = [p.name.strip() for p in people]
        if len(set(names)) != len(names) or len({p.person_id for p in people}) != len(people):
            raise RegistryError("duplicate person name or id in the new registry")
        for person in people:
            vectors = np.asarray(person.embeddings, dtype=np.float32)
            if not person.name.strip() or vectors.ndim != 2 or vectors.shape[0] == 0 or not np.all(np.isfinite(vectors)):
                raise RegistryError(f"person {person.person_id}: needs a name and finite [k, dim] embeddings")
        now = time.time()
        with self.transaction():
            self.db.execute("DELETE FROM embeddings")
            self.db.execute("DELETE FROM people")
            self.db["people"].insert_all(
                ({"person_id": p.person_id, "name": p.name.strip(), "created_at": now, "updated_at": now,
                  "valid_from": p.valid_from, "valid_until": p.valid_until} for p in people),
                batch_size=500,
            )
            self.db["embeddings"].insert_all(
                (
                    {"person_id": p.person_id, "model_sig": p.model_sig, "dim": int(v.shape[0]), "vector": _blob(v)}
                    for p in people
                    for v in np.asarray(p.embeddings, dtype=np.float32)
                ),
                batch_size=500,
            )
            self.set_version(version)

    def set_validity(self, person_id: str, valid_from: Optional[float], valid_until: Optional[float]) -> bool:
        """Set (or clear, with None) a person's consent period; False when there is no such person."""
        with self.transaction():
            cur = self.db.execute("UPDATE people SET valid_from = ?, valid_until = ?, updated_at = ? WHERE person_id = ?",
                                  [valid_from, valid_until, time.time(), person_id])
            return cur.rowcount > 0

    def validity(self) -> dict[str, tuple[Optional[float], Optional[float]]]:
        """Consent periods of the people who have one: {person_id: (valid_from, valid_until)}."""
        with self._lock:
            rows = self.db.execute("SELECT person_id, valid_from, valid_until FROM people "
                                   "WHERE valid_from IS NOT NULL OR valid_until IS NOT NULL").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def _person(self, row) -> Person:
        person_id, name, valid_from, valid_until = row
        rows = self.db.execute(
            "SELECT model_sig, dim, vector FROM embeddings WHERE person_id = ? ORDER BY id", [person_id]
        ).fetchall()
        sig = rows[0][0] if rows else ""
        vectors = (
            np.stack([np.frombuffer(r[2], dtype="<f4", count=r[1]) for r in rows]).astype(np.float32)
            if rows
            else np.zeros((0, 0), np.float32)
        )
        return Person(person_id, name, vectors, sig, valid_from, valid_until)

    def find(self, name: str) -> Optional[Person]:
        with self._lock:
            row = self.db.execute("SELECT person_id, name, valid_from, valid_until FROM people WHERE name = ?", [name.strip()]).fetchone()
            return self._person(row) if row else None

    def get(self, person_id: str) -> Optional[Person]:
        with self._lock:
            row = self.db.execute("SELECT person_id, name, valid_from, valid_until FROM people WHERE person_id = ?", [person_id]).fetchone()
            return self._person(row) if row else None

    def people(self) -> list[Person]:
        with self._lock:
            rows = self.db.execute("SELECT person_id, name, valid_from, valid_until FROM people ORDER BY name").fetchall()
            return [self._person(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM people").fetchone()[0])

    def content_hash(self) -> str:
        return hash_people(self.people())

    def model_signatures(self) -> dict[str, int]:
        with self._lock:
            rows = self.db.execute("SELECT model_sig, count(DISTINCT person_id) FROM embeddings GROUP BY model_sig").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def gallery(self, model_sig: str, dim: int = 128) -> Gallery:
        """The people whose embeddings were made by ``model_sig``, ready for matching."""
        with self._lock:
            rows = self.db.execute(
                "SELECT p.person_id, p.name, e.dim, e.vector FROM embeddings e JOIN people p USING (person_id) "
                "WHERE e.model_sig = ? ORDER BY p.person_id, e.id",
                [model_sig],
            ).fetchall()
            version = self.version
        if not rows:
            gallery = Gallery.empty(dim)
            gallery.version = version
            return gallery
        ids: list[str] = []
        names: list[str] = []
        owner = np.empty(len(rows), np.int64)
        vectors = np.empty((len(rows), rows[0][2]), np.float32)
        for i, (pid, name, d, blob) in enumerate(rows):
            if not ids or ids[-1] != pid:
                ids.append(pid)
                names.append(name)
            owner[i] = len(ids) - 1
            vectors[i] = np.frombuffer(blob, dtype="<f4", count=d)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return Gallery(ids, names, vectors, owner, version)
