"""Whose consent is in force right now, judged on the device by its own clock, with no message.

The registry says who consented; this module says who may be shown *at this moment*:

* a person with a validity period is shown only inside it (``valid_from <= now < valid_until``);
* a clock that reads earlier than the newest signed admin message the device holds (minus
  ``clock_skew_s``) is a reset clock: every person with a period counts as expired until it is
  sane again (the period cannot be judged);
* with ``max_registry_age`` set (registry sync on), a registry whose newest signed admin message
  is older than that hides every registered person (fail closed: withdrawals may be waiting
  somewhere) — and so do a registry that never heard from the admin and an insane clock, since
  the age cannot be known;
* while registry sync is catching up after a (re)connect, nobody is shown (``hold``): pending
  withdrawals are applied before anyone is shown again.

``decide`` also returns the next moment its answer can change, so the gallery is re-filtered at
the exact second a period ends instead of polling.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from edge_agent.registry import Gallery

Period = tuple[Optional[float], Optional[float]]


@dataclass
class ConsentStatus:
    """What the page and /api/health show: why registered people are hidden, if they are."""

    registered_hidden: bool = False  # every registered person hidden (stale registry, bad clock, catching up)
    reason: Optional[str] = None
    registry_age_s: Optional[float] = None
    max_registry_age_s: Optional[float] = None
    clock_sane: bool = True
    expired: int = 0  # people with a period that is not in force now
    catching_up: bool = False

    def as_dict(self) -> dict:
        age = None if self.registry_age_s is None else round(self.registry_age_s, 1)
        return {"registered_hidden": self.registered_hidden, "reason": self.reason, "registry_age_s": age,
                "max_registry_age_s": self.max_registry_age_s, "clock_sane": self.clock_sane,
                "expired": self.expired, "catching_up": self.catching_up}


class ConsentGate:
    def __init__(self, max_registry_age: Optional[float] = None, clock_skew_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_registry_age = max_registry_age
        self.clock_skew_s = clock_skew_s
        self.clock = clock
        self._lock = threading.Lock()
        self._hold: Optional[str] = None
        self.generation = 0  # bumped on hold/release: cached decisions are stale

    def hold(self, reason: str) -> None:
        """Show nobody registered until ``release`` (registry sync is catching up)."""
        with self._lock:
            if self._hold != reason:
                self._hold = reason
                self.generation += 1

    def release(self) -> None:
        with self._lock:
            if self._hold is not None:
                self._hold = None
                self.generation += 1

    @property
    def held(self) -> Optional[str]:
        return self._hold

    def decide(self, gallery: Gallery, periods: dict[str, Period], newest_issued_at: Optional[float],
               now: Optional[float] = None) -> tuple[Gallery, float, ConsentStatus]:
        """(the people who may be shown now, when this answer can next change, the status)."""
        now = self.clock() if now is None else now
        status = ConsentStatus(max_registry_age_s=self.max_registry_age)
        until = math.inf
        if newest_issued_at is not None:
            status.registry_age_s = now - newest_issued_at
            status.clock_sane = now >= newest_issued_at - self.clock_skew_s
        hold = self._hold
        reason = None
        if hold is not None:
            status.catching_up = True
            reason = hold
        elif self.max_registry_age is not None:
            if newest_issued_at is None:
                reason = "no signed word from the admin yet"
            elif not status.clock_sane:
                reason = "the clock reads before the newest admin message: registry age unknown"
            elif status.registry_age_s > self.max_registry_age:
                reason = f"no word from the admin for {status.registry_age_s:.0f} s (max_registry_age {self.max_registry_age:.0f} s)"
            else:
                until = newest_issued_at + self.max_registry_age
        if reason is not None:
            status.registered_hidden, status.reason = True, reason
            status.expired = sum(1 for pid in gallery.person_ids if pid in periods)
            empty = Gallery.empty(gallery.matrix.shape[1] if gallery.matrix.ndim == 2 else 128)
            empty.version = gallery.version
            return empty, until, status
        if not status.clock_sane:  # a reset clock: periods cannot be judged
            until = min(until, newest_issued_at - self.clock_skew_s)
        keep = set()
        for pid in gallery.person_ids:
            period = periods.get(pid)
            if period is None:
                keep.add(pid)
                continue
            if not status.clock_sane:
                continue
            start, end = period
            if (start is None or start <= now) and (end is None or now < end):
                keep.add(pid)
            for edge in (start, end):
                if edge is not None and edge > now:
                    until = min(until, edge)
        status.expired = len(gallery.person_ids) - len(keep)
        return gallery.only(keep), until, status
