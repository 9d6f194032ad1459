"""The device's audit trail: who was *shown*, where and when — as intervals, never an image.

The pipeline calls ``AuditSink.shown(person_id, camera, score, t)`` for every face it lets
through. ``AuditLog`` folds those calls into intervals per (person, camera) — first and last
time, frame count, mean score — closes an interval when the person has not been shown for
``gap_s``, and keeps them in their own SQLite file (``data_dir/audit.db``) for
``retention_days``. Open intervals are written every ``flush_s`` too, so a crash loses at most
that much of an interval's tail; an interval left open by a crash is closed at the next start.
Registry sync publishes closed intervals to the admin and marks them published on the broker's
acknowledgement; each has a random id, so a redelivery is recognised and stored once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol

log = logging.getLogger(__name__)

COLUMNS = ("id", "person_id", "camera", "first_seen", "last_seen", "frames", "mean_score")


class AuditSink(Protocol):
    def shown(self, person_id: str, camera: str, score: float, t: float) -> None:
        """One frame in which ``person_id`` was shown on ``camera`` at wall time ``t``."""


class NoAudit:
    """Audit off: nothing is recorded."""

    def shown(self, person_id: str, camera: str, score: float, t: float) -> None:
        return None


@dataclass
class Interval:
    id: str
    person_id: str
    camera: str
    first_seen: float
    last_seen: float
    frames: int = 0
    score_sum: float = 0.0

    def row(self, closed: bool) -> tuple:
        mean = self.score_sum / self.frames if self.frames else 0.0
        return (self.id, self.person_id, self.camera, self.first_seen, self.last_seen, self.frames, mean, int(closed))


class AuditLog:
    def __init__(self, path: Path, retention_days: float = 30.0, gap_s: float = 2.0, flush_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_s = retention_days * 86400.0
        self.gap_s = gap_s
        self.flush_s = flush_s
        self.clock = clock
        self._lock = threading.RLock()
        self._open: dict[tuple[str, str], Interval] = {}
        self._closed: list[Interval] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, person_id TEXT NOT NULL, camera TEXT NOT NULL, "
            "first_seen REAL NOT NULL, last_seen REAL NOT NULL, frames INTEGER NOT NULL, mean_score REAL NOT NULL, "
            "closed INTEGER NOT NULL DEFAULT 0, published INTEGER NOT NULL DEFAULT 0)")
        self.db.execute("CREATE INDEX IF NOT EXISTS audit_pending ON audit(closed, published)")
        self.db.execute("UPDATE audit SET closed = 1 WHERE closed = 0")  # left open by a crash: it ended then

    # -- recording (camera threads) ---------------------------------------------------------------
    def shown(self, person_id: str, camera: str, score: float, t: float) -> None:
        with self._lock:
            key = (person_id, camera)
            interval = self._open.get(key)
            if interval is not None and t - interval.last_seen > self.gap_s:
                self._closed.append(self._open.pop(key))
                interval = None
            if interval is None:
                interval = self._open[key] = Interval(uuid.uuid4().hex, person_id, camera, t, t)
            interval.last_seen = max(interval.last_seen, t)
            interval.frames += 1
            interval.score_sum += float(score)

    # -- persistence ----------------------------------------------------------------------------
    def flush(self, now: Optional[float] = None, close_all: bool = False) -> None:
        """Close intervals idle for more than ``gap_s`` and write everything (one transaction)."""
        now = self.clock() if now is None else now
        with self._lock:
            for key, interval in list(self._open.items()):
                if close_all or now - interval.last_seen > self.gap_s:
                    self._closed.append(self._open.pop(key))
            rows = [i.row(True) for i in self._closed] + [i.row(False) for i in self._open.values()]
            self._closed.clear()
            if not rows:
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT INTO audit (id, person_id, camera, first_seen, last_seen, frames, mean_score, closed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, "
                    "frames = excluded.frames, mean_score = excluded.mean_score, closed = excluded.closed", rows)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def expire(self, now: Optional[float] = None) -> int:
        """Delete intervals that ended more than ``retention_days`` ago (published or not)."""
        now = self.clock() if now is None else now
        with self._lock:
            cur = self.db.execute("DELETE FROM audit WHERE closed = 1 AND last_seen < ?", [now - self.retention_s])
        if cur.rowcount:
            log.info("audit: %d interval(s) past the retention period deleted", cur.rowcount)
        return cur.rowcount

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_expire = -1e18
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
                if time.monotonic() - last_expire > 3600:
                    self.expire()
                    last_expire = time.monotonic()
            except sqlite3.Error as exc:
                log.error("audit: could not write the audit trail (%s)", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush(close_all=True)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- publishing (registry sync worker) ---------------------------------------------------------------
    def pending(self, limit: int = 200, exclude: Iterable[str] = ()) -> list[dict]:
        """Closed, not yet acknowledged intervals, oldest first."""
        skip = set(exclude)
        with self._lock:
            rows = self.db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit WHERE closed = 1 AND published = 0 ORDER BY first_seen, id "
                "LIMIT ?", [limit + len(skip)]).fetchall()
        return [dict(zip(COLUMNS, r)) for r in rows if r[0] not in skip][:limit]

    def mark_published(self, ids: list[str]) -> None:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("UPDATE audit SET published = 1 WHERE id = ?", [(i,) for i in ids])
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def purge(self, person_id: str, before: float) -> int:
        """The admin's signed purge: forget this person's intervals that began before ``before``."""
        with self._lock:
            for key, interval in list(self._open.items()):
                if interval.person_id == person_id and interval.first_seen <= before:
                    del self._open[key]
            self._closed = [i for i in self._closed if not (i.person_id == person_id and i.first_seen <= before)]
            cur = self.db.execute("DELETE FROM audit WHERE person_id = ? AND first_seen <= ?", [person_id, before])
        return cur.rowcount

    def rows(self) -> list[dict]:
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(COLUMNS)}, closed, published FROM audit ORDER BY first_seen, id").fetchall()
        return [dict(zip(COLUMNS + ("closed", "published"), r)) for r in rows]
