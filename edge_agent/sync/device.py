"""Device side of registry sync: verify, validate, apply in one transaction, ack, report state.

Threads: paho's network thread only queues incoming messages; one worker thread verifies and
applies them in arrival order and acknowledges each (QoS 1, manual ack) only after it was
applied or rejected, so a crash before the commit gets the message redelivered by the broker
(persistent session), and a crash during the commit leaves the old registry (SQLite rollback).

Version rules (see docs/registry-sync.md): an event with version = local + 1 is applied;
version <= local is a replay or duplicate and is ignored; version > local + 1 is a gap: the
event is held and the retained snapshot is requested; a snapshot newer than the local version
(or equal but with another content hash) replaces the registry, then held events follow.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.registry import Registry, RegistryError
from edge_agent.sync import protocol
from edge_agent.sync.client import make_client
from edge_agent.config import MqttConfig
from edge_agent.sync.protocol import Event, Limits, Rejected, Snapshot

log = logging.getLogger("edge_agent.sync")

COUNTERS = (
    "received", "applied", "snapshots_applied", "snapshots_current", "ignored_replay", "gaps",
    "rejected_size", "rejected_signature", "rejected_payload", "rejected_model", "apply_errors",
    "connects", "disconnects",
)
MAX_HELD_EVENTS = 1000


class Outcome(NamedTuple):
    result: str  # applied | snapshot_applied | ignored | held | rejected | error
    reason: str
    version: int  # the message's version (0 when unknown)


class RegistryApplier:
    """The MQTT-free core: one message in, one outcome out, the registry changed atomically or not
    at all. Not thread-safe by itself: one caller (the sync worker, or a test) at a time."""

    def __init__(self, registry: Registry, model_sig: str, public_key: Ed25519PublicKey, site: str,
                 max_event_bytes: int = 1 << 20, max_snapshot_bytes: int = 64 << 20,
                 max_embeddings_per_person: int = 32, max_people: int = 100_000) -> None:
        self.registry = registry
        self.model_sig = model_sig
        self.public_key = public_key
        self.site = site
        self.event_limits = Limits(max_event_bytes, max_embeddings_per_person, max_people)
        self.snapshot_limits = Limits(max_snapshot_bytes, max_embeddings_per_person, max_people)
        self.counters: Counter = Counter({name: 0 for name in COUNTERS})
        self.held: dict[int, Event] = {}
        self.model_mismatch = False
        self.last_applied_at: Optional[float] = None

    @property
    def needs_snapshot(self) -> bool:
        return bool(self.held) or self._resync

    _resync = False  # an apply failed (storage error): only a snapshot can tell what was missed

    def handle(self, kind: str, payload: bytes) -> list[Outcome]:
        """``kind`` is ``event`` or ``snapshot`` (from the topic). Never raises for bad input."""
        self.counters["received"] += 1
        limits = self.snapshot_limits if kind == "snapshot" else self.event_limits
        try:
            body = protocol.verify(payload, self.public_key, limits.max_bytes)
            if kind == "snapshot":
                return self._snapshot(protocol.parse_snapshot(body, self.site, limits))
            outcome = self._event(protocol.parse_event(body, self.site, limits))
            return [outcome] + (self._drain_held() if outcome.result == "applied" else [])
        except Rejected as exc:
            self.counters[f"rejected_{exc.kind}"] += 1
            if exc.kind == "model":
                self.model_mismatch = True
            log.warning("registry sync: rejected a %s message of %d bytes (%s)", kind, len(payload), exc)
            return [Outcome("rejected", str(exc), 0)]
        except Exception as exc:  # a bug or a storage failure: registry rolled back, keep running
            self.counters["apply_errors"] += 1
            self._resync = True
            log.error("registry sync: could not apply a %s message (%s)", kind, type(exc).__name__)
            return [Outcome("error", type(exc).__name__, 0)]

    # -- events --------------------------------------------------------------------------------
    def _event(self, event: Event) -> Outcome:
        if event.op == "upsert" and event.model_sig != self.model_sig:
            raise Rejected("model", "embeddings come from another model than this device's")
        local = self.registry.version
        if event.version <= local:
            self.counters["ignored_replay"] += 1
            return Outcome("ignored", f"version {event.version} is not newer than {local}", event.version)
        if event.version > local + 1:
            if event.version not in self.held:
                self.counters["gaps"] += 1
            if len(self.held) < MAX_HELD_EVENTS:
                self.held[event.version] = event
            return Outcome("held", f"gap after version {local}: waiting for the snapshot", event.version)
        try:
            self._apply_event(event)
        except RegistryError:
            # Diverged from the admin (e.g. a name held by another id): only a snapshot can mend it.
            self.held[event.version] = event
            self.counters["gaps"] += 1
            return Outcome("held", "event conflicts with the local registry: waiting for the snapshot", event.version)
        self.counters["applied"] += 1
        self.model_mismatch = False
        self.last_applied_at = time.time()
        return Outcome("applied", event.op, event.version)

    def _apply_event(self, event: Event) -> None:
        with self.registry.transaction():
            if event.op == "upsert":
                self.registry.upsert_person(event.name, event.embeddings, event.model_sig, event.person_id)
            else:
                self.registry.remove_person(event.person_id)
            self.registry.set_version(event.version)

    def _drain_held(self) -> list[Outcome]:
        outcomes = []
        local = self.registry.version
        for version in sorted(self.held):
            if version <= local:
                del self.held[version]
        while local + 1 in self.held:
            event = self.held.pop(local + 1)
            try:
                self._apply_event(event)
            except RegistryError:
                break
            self.counters["applied"] += 1
            outcomes.append(Outcome("applied", event.op, event.version))
            local = event.version
        return outcomes

    # -- snapshots -----------------------------------------------------------------------------
    def _snapshot(self, snap: Snapshot) -> list[Outcome]:
        if snap.model_sig != self.model_sig:
            raise Rejected("model", "snapshot embeddings come from another model than this device's")
        local = self.registry.version
        if snap.version == local and snap.content_hash == self.local_hash():
            self.counters["snapshots_current"] += 1  # the normal case: the snapshot after each event
            self._resync = False
            return [Outcome("ignored", f"already at snapshot version {local}", snap.version)] + self._drain_held()
        if snap.version < local:
            self.counters["ignored_replay"] += 1
            return [Outcome("ignored", f"snapshot {snap.version} is not newer than {local}", snap.version)] + self._drain_held()
        self.registry.replace_all(snap.people, snap.version)
        self._hash_cache = (self.registry.change_token(), snap.content_hash)
        self.counters["snapshots_applied"] += 1
        self._resync = False
        self.model_mismatch = False
        self.last_applied_at = time.time()
        return [Outcome("snapshot_applied", f"{len(snap.people)} people", snap.version)] + self._drain_held()

    _hash_cache: tuple = ((), "")

    def local_hash(self) -> str:
        """The registry's content hash, recomputed only after a change (it reads every row)."""
        token = self.registry.change_token()
        if self._hash_cache[0] != token:
            self._hash_cache = (token, self.registry.content_hash())
        return self._hash_cache[1]


class RegistrySync:
    """Keeps the local registry equal to the admin's, over MQTT, until ``stop()``.

    ``on_applied`` is called (from the sync worker thread) after every committed change, so the
    pipeline can rebuild its gallery at once; it must not block for long.
    """

    def __init__(self, config: MqttConfig, registry: Registry, model_sig: str,
                 on_applied: Optional[Callable[[], None]] = None) -> None:
        self.config = config
        self.registry = registry
        self.model_sig = model_sig
        self.on_applied = on_applied
        self.applier = RegistryApplier(
            registry, model_sig, protocol.load_public_key(config.admin_public_key), config.site,
            config.max_event_bytes, config.max_snapshot_bytes, config.max_embeddings_per_person, config.max_people,
        )
        self.events_topic = config.topic("registry", "events")
        self.snapshot_topic = config.topic("registry", "snapshot")
        self.state_topic = config.topic("devices", config.device_id, "state")
        self.status_topic = config.topic("devices", config.device_id, "status")
        self.ack_topic = config.topic("devices", config.device_id, "ack")
        self._queue: "queue.Queue[Optional[mqtt.MQTTMessage]]" = queue.Queue()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._connected = threading.Event()
        self._last_snapshot_request = 0.0
        self._started_at = time.time()
        self.client = self._make_client()

    # -- lifecycle -------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = make_client(cfg, cfg.effective_client_id, clean_session=False, manual_ack=True)
        client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_s)), max_delay=max(1, int(cfg.reconnect_max_s)))
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Returns at once; connects in the background and keeps reconnecting (broker down is fine)."""
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="registry-sync", daemon=True)
        self._worker.start()
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._connected.is_set():
            try:
                self.client.publish(self.state_topic, protocol.canonical_json(self.state("offline")), qos=1, retain=True)
                info = self.client.publish(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
                info.wait_for_publish(timeout=min(timeout, 2.0))
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        if self._worker is not None:
            self._worker.join(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- observability ---------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return dict(self.applier.counters)

    def state(self, status: Optional[str] = None) -> dict:
        status = status or ("online" if self._connected.is_set() else "offline")
        return {
            "device_id": self.config.device_id,
            "status": status,
            "version": self.registry.version,
            "hash": self.applier.local_hash(),
            "model_sig": self.model_sig,
            "count": self.registry.count(),
            "model_mismatch": self.applier.model_mismatch,
            "waiting_for_snapshot": self.applier.needs_snapshot,
            "rejected": sum(v for k, v in self.applier.counters.items() if k.startswith("rejected_")),
            "ts": time.time(),
        }

    def _status_payload(self, status: str) -> bytes:
        return protocol.canonical_json({"device_id": self.config.device_id, "status": status, "ts": time.time()})

    def _publish_state(self) -> None:
        """Retained ``state`` (numbers, kept while offline) and retained ``status`` (the Last Will's topic)."""
        self.client.publish(self.state_topic, protocol.canonical_json(self.state("online")), qos=1, retain=True)
        self.client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)

    # -- paho callbacks (network thread) -------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("registry sync: broker refused the connection (%s)", reason_code)
            return
        self.applier.counters["connects"] += 1
        self._connected.set()
        log.info("registry sync: connected to %s:%d", self.config.host, self.config.port)
        # Re-subscribing also makes the broker resend the retained snapshot: a fresh device, or
        # one that missed events past its queue, catches up from it.
        client.subscribe([(self.events_topic, 1), (self.snapshot_topic, 1)])
        self._queue.put("state")  # computed on the worker (the hash reads the registry)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            self.applier.counters["disconnects"] += 1
            log.warning("registry sync: disconnected (%s); filtering goes on with the current registry", reason_code)
        self._connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        self._queue.put(message)

    # -- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        next_state = time.monotonic() + self.config.state_interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.05, next_state - time.monotonic()))
            except queue.Empty:
                item = "state"
            if item is None or self._stop.is_set():
                return
            if item == "state":
                self._safe(self._publish_state)
                next_state = time.monotonic() + self.config.state_interval_s
                continue
            self._process(item)

    def _process(self, message: mqtt.MQTTMessage) -> None:
        kind = "snapshot" if message.topic == self.snapshot_topic else "event"
        outcomes = self.applier.handle(kind, message.payload)
        changed = any(o.result in ("applied", "snapshot_applied") for o in outcomes)
        if changed and self.on_applied is not None:
            try:
                self.on_applied()
            except Exception:
                log.exception("registry sync: on_applied callback failed")
        self._safe(lambda: self.client.ack(message.mid, message.qos))
        for outcome in outcomes:
            ack = {"device_id": self.config.device_id, "kind": kind, "result": outcome.result,
                   "reason": outcome.reason, "message_version": outcome.version,
                   "registry_version": self.registry.version, "ts": time.time()}
            self._safe(lambda: self.client.publish(self.ack_topic, protocol.canonical_json(ack), qos=1))
        if changed or any(o.result == "rejected" for o in outcomes):
            self._safe(self._publish_state)
        if self.applier.needs_snapshot and time.monotonic() - self._last_snapshot_request > 2.0:
            self._last_snapshot_request = time.monotonic()
            self._safe(lambda: self.client.subscribe(self.snapshot_topic, 1))

    @staticmethod
    def _safe(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # a publish while disconnected: the next connect republishes state
            log.debug("registry sync: %s", type(exc).__name__)


def main(argv: Optional[list[str]] = None) -> int:
    """Run sync alone against a registry file (for tests, benchmarks and bring-up):
    ``python -m edge_agent.sync.device --mqtt-config mqtt.yaml --registry r.db --model-sig SIG``."""
    import yaml

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--mqtt-config", type=Path, required=True, help="YAML file holding the mqtt: block")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--model-sig", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raw = yaml.safe_load(args.mqtt_config.read_text()) or {}
    config = MqttConfig.model_validate(raw.get("mqtt", raw))
    registry = Registry(args.registry)
    sync = RegistrySync(config, registry, args.model_sig,
                        on_applied=lambda: print(json.dumps({"applied": registry.version}), flush=True))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sync.start()
    done.wait()
    sync.stop()
    registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
