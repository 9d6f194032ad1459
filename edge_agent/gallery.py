"""Keeps the pipeline's view of the registry current without a restart.

The registry file can change under a running agent (MQTT sync, or ``edge-agent registry`` from a
shell); polling SQLite's change counter every ``poll_s`` costs microseconds. What the pipeline
gets is the registry filtered by the :class:`~edge_agent.consent.ConsentGate` (periods, clock,
registry age, sync catch-up), re-filtered at the moment its answer can change."""

from __future__ import annotations

import math
import threading
import time
from typing import Optional

from edge_agent.consent import ConsentGate, ConsentStatus
from edge_agent.registry import Gallery, Registry

ISSUED_AT_KEY = "admin_issued_at"  # registry meta: newest signed issue time the device holds


class GalleryProvider:
    def __init__(self, registry: Registry, model_sig: str, dim: int = 128, poll_s: float = 0.5,
                 gate: Optional[ConsentGate] = None) -> None:
        self.registry = registry
        self.model_sig = model_sig
        self.dim = dim
        self.poll_s = poll_s
        self.gate = gate or ConsentGate()
        self._lock = threading.Lock()
        self._token = None
        self._checked = 0.0
        self._base = Gallery.empty(dim)
        self._periods: dict = {}
        self._issued_at: Optional[float] = None
        self._gallery = self._base
        self._until = -math.inf
        self._decided_at = math.inf
        self._generation = -1
        self.status = ConsentStatus()
        self.refresh()

    def refresh(self) -> None:
        """Re-read now (called by the sync client right after it applies a change)."""
        with self._lock:
            self._checked = -math.inf
        self.current()

    def current(self) -> Gallery:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self.poll_s:
                self._checked = now
                token = self.registry.change_token()
                if token != self._token:
                    self._base = self.registry.gallery(self.model_sig, self.dim)
                    self._periods = self.registry.validity()
                    issued = self.registry.get_meta(ISSUED_AT_KEY)
                    self._issued_at = float(issued) if issued is not None else None
                    self._token = token
                    self._until = -math.inf
            wall = self.gate.clock()
            # re-decide when a period edge or the age limit is reached, or the clock went back
            if wall >= self._until or wall < self._decided_at or self.gate.generation != self._generation:
                self._generation, self._decided_at = self.gate.generation, wall
                self._gallery, self._until, self.status = self.gate.decide(self._base, self._periods, self._issued_at, wall)
            return self._gallery
