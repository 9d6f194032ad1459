"""Counters and per-stage latencies, for /api/stats and the Prometheus /metrics text."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

STAGES = ("detect", "detect_wait", "track", "recognise", "anonymize", "encode", "total")  # detect_wait: a file's look-ahead detection not yet done when its frame is filtered
COUNTERS = (
    "frames_in",  # frames taken from the source for filtering
    "frames_out",  # filtered frames published
    "frames_redacted",  # frames that left fully redacted (a stage failed or timed out)
    "frames_dropped",  # frames skipped because filtering was slower than the camera
    "faces_seen",
    "faces_shown",  # registered, verified, left unmodified
    "faces_anonymized",
    "face_fallbacks",  # faces that got the classical redaction because the anonymizer failed or ran late
    "recognitions",
    "errors",
    "source_reconnects",
    "scene_resets",  # every track ended: a whole-frame change or a source reconnect
)


class Ewma:
    """Exponentially weighted mean: recent behaviour, no unbounded history."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


class CameraStats:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.stage_ms = {stage: Ewma() for stage in STAGES}
        self.frame_interval = Ewma()
        self._last_out: float | None = None
        self.last_frame_at: float | None = None

    def add(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[counter] += amount

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_ms[stage].add((time.perf_counter() - start) * 1000.0)

    def frame_published(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.counters["frames_out"] += 1
            if self._last_out is not None:
                self.frame_interval.add(now - self._last_out)
            self._last_out = self.last_frame_at = now

    @property
    def fps(self) -> float:
        interval = self.frame_interval.value
        return 1.0 / interval if interval else 0.0

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "fps": round(self.fps, 2),
                "latency_ms": {k: round(v.value, 2) for k, v in self.stage_ms.items() if v.value is not None},
                **self.counters,
            }


def prometheus_text(cameras: dict[str, CameraStats], extra: dict[str, float], sync_counters: dict[str, int]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    for counter in COUNTERS:
        family(
            f"edge_agent_{counter}_total", "counter", counter.replace("_", " "),
            [(f'{{camera="{c}"}}', s.counters[counter]) for c, s in cameras.items()],
        )
    family("edge_agent_fps", "gauge", "published frames per second", [(f'{{camera="{c}"}}', round(s.fps, 3)) for c, s in cameras.items()])
    family(
        "edge_agent_stage_latency_ms", "gauge", "recent mean latency of a pipeline stage",
        [(f'{{camera="{c}",stage="{st}"}}', round(v.value, 3)) for c, s in cameras.items() for st, v in s.stage_ms.items() if v.value is not None],
    )
    for key, value in extra.items():
        family(f"edge_agent_{key}", "gauge", key.replace("_", " "), [("", value)])
    for key, value in sync_counters.items():
        family(f"edge_agent_sync_{key}_total", "counter", f"registry sync {key.replace('_', ' ')}", [("", value)])
    return "\n".join(lines) + "\n"


StatsSource = Callable[[], dict]
