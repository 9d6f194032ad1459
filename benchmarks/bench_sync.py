"""Registry-sync benchmark: snapshot apply, publish-to-applied latency (enrolment and
withdrawal, each p50/p99 over ``--events`` events), gallery matching.

    python benchmarks/bench_sync.py [--people 10000] [--events 200]

Needs the mosquitto binary (a broker is started on a free loopback port). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from edge_agent.consent import ConsentGate  # noqa: E402
from edge_agent.gallery import GalleryProvider  # noqa: E402
from edge_agent.registry import Person, Registry  # noqa: E402
from edge_agent.sync import protocol  # noqa: E402
from edge_agent.sync.admin import Admin, keygen  # noqa: E402
from edge_agent.config import MqttConfig  # noqa: E402
from edge_agent.sync.device import RegistryApplier, RegistrySync  # noqa: E402

SIG = "mobilefacenet-bench"
SITE = "bench"


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_snapshot(tmp: Path, n: int, key) -> tuple[list, Registry]:
    vectors = unit(n, 0)
    people = [Person(uuid.uuid4().hex, f"person {i}", vectors[i:i + 1], SIG) for i in range(n)]
    payload = protocol.sign(key, protocol.snapshot_body(SITE, 1, SIG, people))
    del people
    rows = [("snapshot payload", f"{len(payload) / 1e6:.1f} MB", f"{n} people x 1 embedding")]
    change = (len(protocol.sign(key, protocol.event_body(SITE, 2, "upsert", uuid.uuid4().hex, "someone", unit(1, 99), SIG)))
              + len(protocol.sign(key, protocol.heartbeat_body(SITE, 2))))
    withdrawal = len(protocol.sign(key, protocol.event_body(SITE, 3, "delete", uuid.uuid4().hex))) + len(
        protocol.sign(key, protocol.heartbeat_body(SITE, 3)))
    rows.append(("published per change (event + heartbeat)", f"{change / 1e3:.1f} KB",
                 f"enrolment; {withdrawal / 1e3:.2f} KB a withdrawal (the snapshot goes on schedule/request only)"))
    # timed run (no tracing)
    registry = Registry(tmp / "timed.db")
    applier = RegistryApplier(registry, SIG, key.public_key(), SITE, max_snapshot_bytes=256 << 20)
    t0 = time.perf_counter()
    body = protocol.verify(payload, key.public_key(), 256 << 20)
    t1 = time.perf_counter()
    snap = protocol.parse_snapshot(body, SITE, applier.snapshot_limits)
    t2 = time.perf_counter()
    del body, snap
    outcome = applier.handle("snapshot", payload)
    t3 = time.perf_counter()
    assert outcome[0].result == "snapshot_applied", outcome
    rows += [
        ("  verify signature + JSON", f"{(t1 - t0) * 1000:.0f} ms", ""),
        ("  validate (dims, finite, unit, hash)", f"{(t2 - t1) * 1000:.0f} ms", ""),
        ("  full apply (verify..commit)", f"{t3 - t2:.2f} s", "one SQLite transaction (Registry.replace_all)"),
    ]
    # memory run
    registry2 = Registry(tmp / "traced.db")
    applier2 = RegistryApplier(registry2, SIG, key.public_key(), SITE, max_snapshot_bytes=256 << 20)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    applier2.handle("snapshot", payload)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    registry2.close()
    import resource

    rows.append(("  peak Python memory during apply", f"{peak / 1e6:.0f} MB", "tracemalloc, payload itself excluded"))
    rows.append(("  process max RSS so far", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB",
                 "whole benchmark process, incl. building the payload"))
    return rows, registry


def bench_matching(registry: Registry) -> list:
    gallery = registry.gallery(SIG)
    probe = unit(1, 12345)
    for _ in range(50):
        gallery.match(probe)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        gallery.match(probe)
        times.append(time.perf_counter() - t)
    four = unit(4, 7)
    times4 = []
    for _ in range(500):
        t = time.perf_counter()
        gallery.match(four)
        times4.append(time.perf_counter() - t)
    return [
        (f"match 1 face vs {len(gallery)} people", f"{statistics.median(times) * 1e6:.0f} µs",
         f"p99 {np.percentile(times, 99) * 1e6:.0f} µs; one [1,128]x[128,{gallery.matrix.shape[0]}] product"),
        (f"match 4 faces vs {len(gallery)} people", f"{statistics.median(times4) * 1e6:.0f} µs", "one frame with 4 faces"),
    ]


def bench_latency(tmp: Path, events: int) -> list:
    from mqtt_broker import Broker

    broker = Broker(tmp / "broker").start()
    home = tmp / "admin"
    keygen(home)
    cfg = MqttConfig(host=broker.host, port=broker.port, site=SITE, device_id="bench-cam",
                     admin_public_key=home / "admin_ed25519.pub", reconnect_min_s=1, reconnect_max_s=2)
    admin = Admin(home, cfg.model_copy(update={"device_id": "admin"}))
    registry = Registry(tmp / "device.db")
    gallery = GalleryProvider(Registry(tmp / "device.db"), SIG, gate=ConsentGate())
    applied = {}
    done = threading.Event()

    def on_applied():
        gallery.refresh()  # as the agent does: the next frame matches against the new gallery
        applied[registry.version] = time.time()
        done.set()

    sync = RegistrySync(cfg, registry, SIG, on_applied=on_applied, gate=gallery.gate)
    sync.start()
    sync.wait_connected(10)
    latencies: dict[str, list] = {"enrol": [], "withdraw": []}

    def wait_applied(body: dict) -> float:
        while body["version"] not in applied:
            done.wait(5)
            done.clear()
        return applied[body["version"]] - body["issued_at"]  # issued_at is stamped just before signing

    try:
        for i in range(events):
            done.clear()
            latencies["enrol"].append(wait_applied(admin.enroll(f"person {i}", unit(1, i), SIG)))
        for i in range(events):
            done.clear()
            latencies["withdraw"].append(wait_applied(admin.remove(f"person {i}")))
            assert f"person {i}" not in gallery.current().names
    finally:
        sync.stop()
        registry.close()
        gallery.registry.close()
        admin.close()
        broker.stop()
    rows = []
    for what, values in latencies.items():
        ms = np.array(values) * 1000
        rows.append((f"{what} publish→device gallery, {events} events", f"p50 {np.percentile(ms, 50):.1f} ms",
                     f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms (sign, broker, verify, commit, gallery rebuilt)"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    key = protocol.generate_private_key()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows, registry = bench_snapshot(tmp, args.people, key)
        rows += bench_matching(registry)
        registry.close()
        rows += bench_latency(tmp, args.events)
    print(f"registry sync benchmark — {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}, numpy {np.__version__}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0].ljust(w[0])}  {r[1].rjust(w[1])}  {r[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
