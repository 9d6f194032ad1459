"""The admin's copy of every device's audit trail, and the history of consent changes.

``audit.db`` next to the admin's ``registry.db``:

* ``audit``: the intervals devices published, keyed by (device, interval id), so a QoS-1
  redelivery or a device's republish after a crash is stored once (``INSERT OR IGNORE``);
  the device is the one named by the topic (the broker's ACL lets a device write only its own);
* ``consent``: each enrolment, period change, withdrawal and purge, with the name at the time, so
  an operator can still answer "when was Ada shown" after Ada withdrew (her name is what they ask
  for);
* ``purges``: person id -> when their audit rows were purged; later-arriving rows that began
  before it are dropped, and snapshots carry the list so a device that missed the event purges too.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

FIELDS = ("id", "person_id", "camera", "first_seen", "last_seen", "frames", "mean_score")


class AuditRecordError(ValueError):
    """A published record that is not a well-formed interval (stored nowhere)."""


def _record(doc) -> tuple:
    if not isinstance(doc, dict) or set(doc) != set(FIELDS):
        raise AuditRecordError("an audit record has exactly the fields " + ", ".join(FIELDS))
    texts = [doc[k] for k in ("id", "person_id", "camera")]
    if any(not isinstance(t, str) or not 0 < len(t) <= 200 for t in texts):
        raise AuditRecordError("id, person_id and camera are short strings")
    numbers = [doc[k] for k in ("first_seen", "last_seen", "mean_score")]
    if any(isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) for n in numbers):
        raise AuditRecordError("times and score are finite numbers")
    if type(doc["frames"]) is not int or doc["frames"] < 1 or doc["last_seen"] < doc["first_seen"]:
        raise AuditRecordError("an interval has at least one frame and ends after it begins")
    return tuple(doc[k] for k in FIELDS)


class AuditStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS audit (device_id TEXT NOT NULL, id TEXT NOT NULL, person_id TEXT NOT NULL, "
            "camera TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, frames INTEGER NOT NULL, "
            "mean_score REAL NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (device_id, id));"
            "CREATE INDEX IF NOT EXISTS audit_person ON audit(person_id, first_seen);"
            "CREATE TABLE IF NOT EXISTS consent (version INTEGER PRIMARY KEY, person_id TEXT NOT NULL, name TEXT, "
            "op TEXT NOT NULL, valid_from REAL, valid_until REAL, at REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS purges (person_id TEXT PRIMARY KEY, issued_at REAL NOT NULL);")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- from devices -------------------------------------------------------------------------
    def store(self, device_id: str, records: list) -> tuple[int, int]:
        """(new rows, rows already held or purged): one transaction, so a crash stores all or none."""
        rows = [_record(r) for r in records]
        with self._lock:
            purged = dict(self.db.execute("SELECT person_id, issued_at FROM purges").fetchall())
            keep = [r for r in rows if not (r[1] in purged and r[3] <= purged[r[1]])]
            self.db.execute("BEGIN IMMEDIATE")
            try:
                before = self.db.total_changes
                self.db.executemany("INSERT OR IGNORE INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    [(device_id, *r, time.time()) for r in keep])
                new = self.db.total_changes - before
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        return new, len(rows) - new

    def expire(self, retention_days: float, now: Optional[float] = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            return self.db.execute("DELETE FROM audit WHERE last_seen < ?", [now - retention_days * 86400]).rowcount

    # -- consent history ------------------------------------------------------------------------
    def record_change(self, version: int, person_id: str, name: Optional[str], op: str,
                      valid_from: Optional[float] = None, valid_until: Optional[float] = None) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [version, person_id, name, op, valid_from, valid_until, time.time()])

    def person_ids(self, name: str) -> list[str]:
        with self._lock:
            rows = self.db.execute("SELECT DISTINCT person_id FROM consent WHERE name = ?", [name]).fetchall()
        return [r[0] for r in rows]

    def names(self) -> dict[str, str]:
        """person id -> the latest name it had (purged people have none)."""
        with self._lock:
            rows = self.db.execute("SELECT person_id, name FROM consent WHERE name IS NOT NULL ORDER BY version").fetchall()
        return dict(rows)

    def purge(self, person_id: str, issued_at: float) -> int:
        """Delete the person's intervals that began by ``issued_at`` and their name from the history."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                n = self.db.execute("DELETE FROM audit WHERE person_id = ? AND first_seen <= ?", [person_id, issued_at]).rowcount
                self.db.execute("UPDATE consent SET name = NULL WHERE person_id = ?", [person_id])
                self.db.execute("INSERT OR REPLACE INTO purges VALUES (?, ?)", [person_id, issued_at])
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        return n

    def purges(self) -> dict[str, float]:
        with self._lock:
            return dict(self.db.execute("SELECT person_id, issued_at FROM purges").fetchall())

    # -- queries ----------------------------------------------------------------------------------
    def query(self, person_ids: Optional[list[str]] = None, camera: Optional[str] = None,
              since: Optional[float] = None, device: Optional[str] = None) -> list[dict]:
        if person_ids is not None and not person_ids:
            return []
        where, args = [], []
        if person_ids is not None:
            where.append(f"person_id IN ({','.join('?' * len(person_ids))})")
            args += person_ids
        if camera is not None:
            where.append("camera = ?")
            args.append(camera)
        if since is not None:
            where.append("last_seen >= ?")
            args.append(since)
        if device is not None:
            where.append("device_id = ?")
            args.append(device)
        sql = ("SELECT device_id, id, person_id, camera, first_seen, last_seen, frames, mean_score FROM audit"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY first_seen, device_id, id")
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
        names = self.names()
        cols = ("device_id", "id", "person_id", "camera", "first_seen", "last_seen", "frames", "mean_score")
        return [dict(zip(cols, r), name=names.get(r[2])) for r in rows]
