"""Device side of registry sync: verify, validate, apply in one transaction, ack, report state.

Threads: paho's network thread only queues incoming messages; one worker thread verifies and
applies them in arrival order and acknowledges each (QoS 1, manual ack) only after it was
applied or rejected, so a crash before the commit gets the message redelivered by the broker
(persistent session), and a crash during the commit leaves the old registry (SQLite rollback).

Version rules (see docs/registry-sync.md): an event with version = local + 1 is applied;
version <= local is a replay or duplicate and is ignored; version > local + 1 is a gap: the
event is held and the retained snapshot is requested; a snapshot newer than the local version
(or equal but with another content hash) replaces the registry, then held events follow.

Freshness: every verified message's signed ``issued_at`` is kept (registry meta); a snapshot
issued before it, or longer ago than ``max_snapshot_age``, is refused (``rejected_stale``). The
admin's small retained *heartbeat* says which version it holds: a device behind it asks for a
snapshot, and from each (re)connect until it holds that version nobody registered is shown
(``ConsentGate.hold``). Closed audit intervals go to ``devices/<id>/audit`` (QoS 1) and are marked
published only on the broker's acknowledgement.
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

from edge_agent.audit import AuditLog
from edge_agent.consent import ConsentGate
from edge_agent.gallery import ISSUED_AT_KEY
from edge_agent.registry import Registry, RegistryError
from edge_agent.sync import protocol
from edge_agent.sync.client import make_client
from edge_agent.config import MqttConfig
from edge_agent.sync.protocol import Event, Heartbeat, Limits, Rejected, Snapshot

log = logging.getLogger("edge_agent.sync")

COUNTERS = (
    "received", "applied", "snapshots_applied", "snapshots_current", "ignored_replay", "gaps",
    "rejected_size", "rejected_signature", "rejected_payload", "rejected_model", "rejected_stale", "apply_errors",
    "connects", "disconnects", "heartbeats", "purges", "audit_published",
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
                 max_embeddings_per_person: int = 32, max_people: int = 100_000,
                 max_snapshot_age: Optional[float] = None, audit: Optional[AuditLog] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.max_snapshot_age = max_snapshot_age
        self.audit = audit
        self.clock = clock
        self.admin_version = 0  # the newest version the admin has signed for (heartbeats, snapshots, events)
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
        return bool(self.held) or self._resync or self.behind

    @property
    def behind(self) -> bool:
        """The admin signed a newer version than this device holds: withdrawals may be pending."""
        return self.admin_version > self.registry.version

    def newest_issued_at(self) -> Optional[float]:
        value = self.registry.get_meta(ISSUED_AT_KEY)
        return float(value) if value is not None else None

    def _heard(self, issued_at: float) -> None:
        """Record the newest signed issue time (inside the caller's transaction, if any)."""
        held = self.newest_issued_at()
        if held is None or issued_at > held:
            self.registry.set_meta(ISSUED_AT_KEY, repr(float(issued_at)))

    _resync = False  # an apply failed (storage error): only a snapshot can tell what was missed

    def handle(self, kind: str, payload: bytes) -> list[Outcome]:
        """``kind`` is ``event`` or ``snapshot`` (from the topic). Never raises for bad input."""
        self.counters["received"] += 1
        limits = self.snapshot_limits if kind == "snapshot" else self.event_limits
        try:
            body = protocol.verify(payload, self.public_key, limits.max_bytes)
            if kind == "snapshot":
                return self._snapshot(protocol.parse_snapshot(body, self.site, limits))
            if kind == "heartbeat":
                return [self._heartbeat(protocol.parse_heartbeat(body, self.site))]
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
        self.admin_version = max(self.admin_version, event.version)
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
        if event.op == "purge" and self.audit is not None:  # idempotent: a redelivery purges nothing more
            self.counters["purges"] += 1
            self.audit.purge(event.person_id, event.issued_at)
        with self.registry.transaction():
            if event.op == "upsert":
                self.registry.upsert_person(event.name, event.embeddings, event.model_sig, event.person_id)
                self.registry.set_validity(event.person_id, event.valid_from, event.valid_until)
            elif event.op == "validity":
                if not self.registry.set_validity(event.person_id, event.valid_from, event.valid_until):
                    raise RegistryError("a validity change for a person this device does not hold")
            elif event.op == "delete":
                self.registry.remove_person(event.person_id)
            self.registry.set_version(event.version)
            self._heard(event.issued_at)

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
            self.counters["snapshots_current"] += 1  # the normal case: the scheduled snapshot
            self._resync = False
            self.admin_version = max(self.admin_version, snap.version)
            with self.registry.transaction():
                self._heard(snap.issued_at)
            return [Outcome("ignored", f"already at snapshot version {local}", snap.version)] + self._drain_held()
        if snap.version < local:
            self.counters["ignored_replay"] += 1
            return [Outcome("ignored", f"snapshot {snap.version} is not newer than {local}", snap.version)] + self._drain_held()
        held = self.newest_issued_at()
        if held is not None and snap.issued_at < held:
            raise Rejected("stale", "snapshot was issued before the newest admin message this device holds")
        if self.max_snapshot_age is not None and self.clock() - snap.issued_at > self.max_snapshot_age:
            raise Rejected("stale", f"snapshot is older than max_snapshot_age ({self.max_snapshot_age:.0f} s)")
        if self.audit is not None:
            for person_id, before in (snap.purges or {}).items():
                self.audit.purge(person_id, before)
        self.admin_version = max(self.admin_version, snap.version)
        with self.registry.transaction():
            self.registry.replace_all(snap.people, snap.version)
            self._heard(snap.issued_at)
        self._hash_cache = (self.registry.change_token(), snap.content_hash)
        self.counters["snapshots_applied"] += 1
        self._resync = False
        self.model_mismatch = False
        self.last_applied_at = time.time()
        return [Outcome("snapshot_applied", f"{len(snap.people)} people", snap.version)] + self._drain_held()

    # -- heartbeats ----------------------------------------------------------------------------
    def _heartbeat(self, beat: Heartbeat) -> Outcome:
        """Fresh only if this device already holds what the admin signed for; else it is behind."""
        self.counters["heartbeats"] += 1
        self.admin_version = max(self.admin_version, beat.version)
        if beat.version > self.registry.version:
            return Outcome("held", f"admin is at version {beat.version}: catching up", beat.version)
        with self.registry.transaction():
            self._heard(beat.issued_at)
        return Outcome("ignored", "heartbeat", beat.version)

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
                 on_applied: Optional[Callable[[], None]] = None, gate: Optional[ConsentGate] = None,
                 audit: Optional[AuditLog] = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.registry = registry
        self.model_sig = model_sig
        self.on_applied = on_applied
        self.gate = gate
        self.audit = audit
        self.applier = RegistryApplier(
            registry, model_sig, protocol.load_public_key(config.admin_public_key), config.site,
            config.max_event_bytes, config.max_snapshot_bytes, config.max_embeddings_per_person, config.max_people,
            config.max_snapshot_age, audit, clock,
        )
        self.events_topic = config.topic("registry", "events")
        self.snapshot_topic = config.topic("registry", "snapshot")
        self.heartbeat_topic = config.topic("registry", "heartbeat")
        self.request_topic = config.topic("devices", config.device_id, "request")
        self.audit_topic = config.topic("devices", config.device_id, "audit")
        self._audit_inflight: dict[int, list[str]] = {}  # MQTT message id -> audit interval ids
        self._marker_seen = False
        self._caught_up = True  # False from each connect until the admin's retained heartbeat confirms it
        self.state_topic = config.topic("devices", config.device_id, "state")
        self.status_topic = config.topic("devices", config.device_id, "status")
        self.ack_topic = config.topic("devices", config.device_id, "ack")
        self._queue: "queue.Queue[Optional[mqtt.MQTTMessage]]" = queue.Queue()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._connected = threading.Event()
        self._last_snapshot_request = 0.0
        self._request_gap = 1.0
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
        client.on_publish = self._on_publish
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
            "admin_version": self.applier.admin_version,
            "newest_issued_at": self.applier.newest_issued_at(),
            "catching_up": not self._caught_up,
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
        # Nobody registered is shown until the admin's retained heartbeat has been seen and its
        # version is held (queued events or a snapshot): withdrawals made while away apply first.
        self._caught_up = self._marker_seen = False
        if self.gate is not None:
            self.gate.hold("registry sync is catching up after a (re)connect")
        self.applier.counters["connects"] += 1
        self._queue.put("reconnected")
        self._connected.set()
        log.info("registry sync: connected to %s:%d", self.config.host, self.config.port)
        # Re-subscribing also makes the broker resend the retained heartbeat and snapshot (in this
        # order): a fresh device, or one that missed events past its queue, catches up from them.
        client.subscribe([(self.events_topic, 1), (self.heartbeat_topic, 1), (self.snapshot_topic, 1)])
        self._queue.put("state")  # computed on the worker (the hash reads the registry)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            self.applier.counters["disconnects"] += 1
            log.warning("registry sync: disconnected (%s); filtering goes on with the current registry", reason_code)
        self._connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        self._queue.put(message)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._queue.put(("published", mid))

    # -- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        next_state = time.monotonic() + self.config.state_interval_s
        next_audit = time.monotonic()
        while True:
            wake = min(next_state, next_audit) if self.audit is not None else next_state
            try:
                item = self._queue.get(timeout=max(0.05, wake - time.monotonic()))
            except queue.Empty:
                item = "tick"
            if item is None or self._stop.is_set():
                return
            if item == "reconnected":
                self._audit_inflight.clear()  # unacknowledged intervals go again; the admin stores each once
                continue
            if isinstance(item, tuple):
                ids = self._audit_inflight.pop(item[1], None)
                if ids and self.audit is not None:
                    self._safe(lambda: self.audit.mark_published(ids))
                    self.applier.counters["audit_published"] += len(ids)
                continue
            if item == "state" or (item == "tick" and time.monotonic() >= next_state):
                self._safe(self._publish_state)
                next_state = time.monotonic() + self.config.state_interval_s
                continue
            if item == "tick":
                if self.audit is not None and time.monotonic() >= next_audit:
                    self._safe(self._publish_audit)
                    next_audit = time.monotonic() + self.config.audit_publish_s
                continue
            self._process(item)

    def _publish_audit(self) -> None:
        """Closed intervals not yet acknowledged, in batches (QoS 1); marked published on PUBACK."""
        if not self._connected.is_set() or len(self._audit_inflight) >= 4:
            return
        sent = [i for ids in self._audit_inflight.values() for i in ids]
        records = self.audit.pending(limit=200, exclude=sent)
        if not records:
            return
        body = {"device_id": self.config.device_id, "records": records}
        info = self.client.publish(self.audit_topic, protocol.canonical_json(body), qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._audit_inflight[info.mid] = [r["id"] for r in records]

    def _process(self, message: mqtt.MQTTMessage) -> None:
        kind = {self.snapshot_topic: "snapshot", self.heartbeat_topic: "heartbeat"}.get(message.topic, "event")
        outcomes = self.applier.handle(kind, message.payload)
        changed = any(o.result in ("applied", "snapshot_applied") for o in outcomes)
        if changed and self.on_applied is not None:
            try:
                self.on_applied()
            except Exception:
                log.exception("registry sync: on_applied callback failed")
        self._safe(lambda: self.client.ack(message.mid, message.qos))
        # The retained heartbeat is the marker: the admin publishes it with every change and every
        # snapshot, so it names the newest version (a retained snapshot may be older).
        if kind == "heartbeat" and outcomes and outcomes[0].result != "rejected":
            self._marker_seen = True
        if self._caught_up and self.applier.behind:  # missed changes (maybe withdrawals): fail closed
            self._caught_up = False
            if self.gate is not None:
                self.gate.hold("behind the admin's registry version: waiting for the missing changes")
        if not self._caught_up and self._marker_seen and not self.applier.needs_snapshot:
            self._caught_up = True
            if self.gate is not None:
                self.gate.release()
            self._request_gap = 1.0
            log.info("registry sync: caught up at version %d", self.registry.version)
        if kind == "heartbeat":
            if self.applier.needs_snapshot:
                self._request_snapshot()
            return
        for outcome in outcomes:
            ack = {"device_id": self.config.device_id, "kind": kind, "result": outcome.result,
                   "reason": outcome.reason, "message_version": outcome.version,
                   "registry_version": self.registry.version, "ts": time.time()}
            self._safe(lambda: self.client.publish(self.ack_topic, protocol.canonical_json(ack), qos=1))
        if changed or any(o.result == "rejected" for o in outcomes):
            self._safe(self._publish_state)
        if self.applier.needs_snapshot:
            self._request_snapshot()

    def _request_snapshot(self) -> None:
        """Ask for the registry again: re-subscribe (the broker resends the retained snapshot) and
        ask the admin's service to publish a current one (the retained one may be older)."""
        if time.monotonic() - self._last_snapshot_request <= self._request_gap:
            return
        self._last_snapshot_request = time.monotonic()
        # the retained snapshot may stay too old until the admin answers: back off (2 s ... 2 min)
        self._request_gap = min(120.0, self._request_gap * 2)
        request = {"device_id": self.config.device_id, "want": "snapshot", "version": self.registry.version, "ts": time.time()}
        self._safe(lambda: self.client.publish(self.request_topic, protocol.canonical_json(request), qos=1))
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
    parser.add_argument("--audit", type=Path, help="audit.db whose closed intervals are published")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raw = yaml.safe_load(args.mqtt_config.read_text()) or {}
    config = MqttConfig.model_validate(raw.get("mqtt", raw))
    registry = Registry(args.registry)
    audit = AuditLog(args.audit) if args.audit else None
    sync = RegistrySync(config, registry, args.model_sig,
                        on_applied=lambda: print(json.dumps({"applied": registry.version}), flush=True), audit=audit)
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
