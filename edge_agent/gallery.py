"""Keeps the pipeline's view of the registry current without a restart.

The registry file can change under a running agent (MQTT sync, or ``edge-agent registry`` from a
shell); polling SQLite's change counter every ``poll_s`` costs microseconds."""

from __future__ import annotations

import threading
import time

from edge_agent.registry import Gallery, Registry


class GalleryProvider:
    def __init__(self, registry: Registry, model_sig: str, dim: int = 128, poll_s: float = 0.5) -> None:
        self.registry = registry
        self.model_sig = model_sig
        self.dim = dim
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._token = None
        self._checked = 0.0
        self._gallery = Gallery.empty(dim)
        self.refresh()

    def refresh(self) -> None:
        """Re-read now (called by the sync client right after it applies a change)."""
        with self._lock:
            self._checked = 0.0
        self.current()

    def current(self) -> Gallery:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.poll_s:
                return self._gallery
            self._checked = now
            token = self.registry.change_token()
            if token != self._token:
                self._gallery = self.registry.gallery(self.model_sig, self.dim)
                self._token = token
            return self._gallery
