"""Admin side of registry sync: the authoritative registry, the signing key, the publisher.

The admin's registry is the same SQLite schema as a device's (``edge_agent.registry``); every
change and its new version are one transaction. After each change the admin publishes the
signed event (QoS 1) and a small signed retained *heartbeat* (the version it holds, issued now),
holding a lock file so two admin commands never publish out of order. The full snapshot
(retained; 8 MB at 10,000 people) goes out only when devices could not follow by events (the
previous change was never published), on ``publish-snapshot``, on a device's request and on
``serve``'s schedule. ``serve`` also heartbeats and stores the devices' audit intervals.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edge_agent.registry import Registry, RegistryError
from edge_agent.sync import protocol
from edge_agent.sync.audit_store import AuditRecordError, AuditStore
from edge_agent.sync.client import make_client
from edge_agent.config import MqttConfig

log = logging.getLogger("edge_agent.admin")

PRIVATE_KEY = "admin_ed25519.key"
PUBLIC_KEY = "admin_ed25519.pub"
PUBLISHED_KEY = "published_version"  # registry meta: the newest version devices were sent
SNAPSHOT_KEY = "snapshot_version"  # registry meta: the version of the last snapshot published


class AdminError(Exception):
    """An admin command that cannot be done as asked (worded for the operator)."""


def keygen(home: Path, force: bool = False, passphrase: Optional[bytes] = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into ``home``: the private key with mode 0600, encrypted
    with ``passphrase`` when one is given."""
    home.mkdir(parents=True, exist_ok=True)
    private, public = home / PRIVATE_KEY, home / PUBLIC_KEY
    if private.exists() and not force:
        raise AdminError(f"{private} exists; devices trust its public key (use --force to replace it)")
    key = protocol.generate_private_key()
    tmp = private.with_suffix(".tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(protocol.private_key_pem_encrypted(key, passphrase) if passphrase else protocol.private_key_pem(key))
    os.replace(tmp, private)
    public.write_bytes(protocol.public_key_pem(key.public_key()))
    return private, public


class Admin:
    def __init__(self, home: Path, config: MqttConfig, key_path: Optional[Path] = None,
                 passphrase: Optional[bytes] = None) -> None:
        self.home = Path(home)
        self.config = config
        self.key_path = key_path or self.home / PRIVATE_KEY
        self.passphrase = passphrase
        self._signing_key = None
        self.registry = Registry(self.home / "registry.db")
        self.audit = AuditStore(self.home / "audit.db")

    def close(self) -> None:
        self.registry.close()
        self.audit.close()

    def key(self):
        """The signing key, loaded once; loaded *before* any change, so a missing key or a wrong
        passphrase changes nothing (AdminError worded for the operator)."""
        if self._signing_key is None:
            try:
                self._signing_key = protocol.load_private_key(self.key_path, self.passphrase)
            except protocol.KeyFileError as exc:
                raise AdminError(str(exc)) from None
        return self._signing_key

    # -- changes -------------------------------------------------------------------------------
    @contextmanager
    def _publish_lock(self) -> Iterator[None]:
        with open(self.home / ".publish.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def model_sig(self) -> Optional[str]:
        return self.registry.get_meta("model_sig")

    def enroll(self, name: str, embeddings: np.ndarray, model_sig: str, publish: bool = True, existing_ok: bool = False,
               valid_from: Optional[float] = None, valid_until: Optional[float] = None) -> dict:
        """Add ``name`` (or, with ``existing_ok``, replace their templates), consent from ``valid_from``
        until ``valid_until`` (UTC seconds, either open); returns the signed event's body (already
        published). ``embeddings`` is every template the person keeps."""
        vectors = np.asarray(embeddings, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != protocol.EMBEDDING_DIM:
            raise AdminError(f"embeddings must be [k, {protocol.EMBEDDING_DIM}]")
        _check_period(valid_from, valid_until)
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if publish:
            self.key()
        with self._publish_lock():
            with self.registry.transaction():
                current = self.model_sig()
                if current not in (None, model_sig) and self.registry.count():
                    raise AdminError(f"the registry holds embeddings of model {current}; this embedder is {model_sig}: "
                                     "re-enrol everyone with one model")
                existing = self.registry.find(name)
                if existing is not None and not existing_ok:
                    raise AdminError(f"{name!r} is already enrolled ({len(existing.embeddings)} templates): "
                                     "pass --replace to replace them or --append to add these photos")
                if len(vectors) > self.config.max_embeddings_per_person:
                    raise AdminError(f"{len(vectors)} templates, more than a sync payload carries "
                                     f"(mqtt.max_embeddings_per_person {self.config.max_embeddings_per_person})")
                person_id = existing.person_id if existing else uuid.uuid4().hex
                try:
                    self.registry.upsert_person(name, vectors, model_sig, person_id)
                except RegistryError as exc:
                    raise AdminError(str(exc)) from None
                self.registry.set_validity(person_id, valid_from, valid_until)
                version = self.registry.version + 1
                self.registry.set_version(version)
                self.registry.set_meta("model_sig", model_sig)
                self.audit.record_change(version, person_id, name, "enroll", valid_from, valid_until)
            person = self.registry.get(person_id)
            body = protocol.event_body(self.config.site, version, "upsert", person_id, person.name, person.embeddings,
                                       model_sig, valid_from, valid_until)
            if publish:
                self._publish_change(body)
        return body

    def _resolve(self, name: str):
        person = self.registry.find(name) or self.registry.get(name)
        if person is None:
            raise AdminError(f"no person named {name!r} in the admin registry")
        return person

    def set_validity(self, name: str, valid_from: Optional[float], valid_until: Optional[float],
                     publish: bool = True) -> dict:
        """Change a person's consent period (a signed event; None clears that end)."""
        _check_period(valid_from, valid_until)
        if publish:
            self.key()
        with self._publish_lock():
            with self.registry.transaction():
                person = self._resolve(name)
                self.registry.set_validity(person.person_id, valid_from, valid_until)
                version = self.registry.version + 1
                self.registry.set_version(version)
                self.audit.record_change(version, person.person_id, person.name, "validity", valid_from, valid_until)
            body = protocol.event_body(self.config.site, version, "validity", person.person_id,
                                       valid_from=valid_from, valid_until=valid_until)
            if publish:
                self._publish_change(body)
        return body

    def remove(self, name: str, publish: bool = True) -> dict:
        """Withdraw consent. The audit rows stay (they record showing while consent was valid)."""
        if publish:
            self.key()
        with self._publish_lock():
            with self.registry.transaction():
                person = self._resolve(name)
                self.registry.remove_person(person.person_id)
                version = self.registry.version + 1
                self.registry.set_version(version)
                self.audit.record_change(version, person.person_id, person.name, "withdraw")
            body = protocol.event_body(self.config.site, version, "delete", person.person_id)
            if publish:
                self._publish_change(body)
        return body

    def person_ids(self, name_or_id: str) -> list[str]:
        """Everyone who had this name (the consent history keeps names after a withdrawal), or the id itself."""
        person = self.registry.find(name_or_id)
        ids = set(self.audit.person_ids(name_or_id)) | ({person.person_id} if person else set())
        return sorted(ids) or [name_or_id]

    def purge(self, name_or_id: str, publish: bool = True) -> tuple[dict, int]:
        """Delete a person's audit rows here and, by a signed event, on every device."""
        if publish:
            self.key()
        ids = self.person_ids(name_or_id)
        if len(ids) > 1:
            raise AdminError(f"{len(ids)} people had the name {name_or_id!r}: purge by id ({', '.join(ids)})")
        person_id = ids[0]
        try:
            protocol._person_id(person_id)
        except protocol.Rejected:
            raise AdminError(f"{name_or_id!r} is neither a known name nor a person id") from None
        with self._publish_lock():
            issued_at = time.time()
            with self.registry.transaction():
                version = self.registry.version + 1
                self.registry.set_version(version)
                self.audit.record_change(version, person_id, None, "purge")
            removed = self.audit.purge(person_id, issued_at)
            body = protocol.event_body(self.config.site, version, "purge", person_id, issued_at=issued_at)
            if publish:
                self._publish_change(body)
        return body, removed

    def snapshot_body(self) -> dict:
        with self.registry.transaction():  # people and version read consistently
            people = self.registry.people()
            version = self.registry.version
        sig = self.model_sig()
        if sig is None:
            raise AdminError("the registry has never had a model signature: enrol someone first")
        return protocol.snapshot_body(self.config.site, version, sig, people, self.audit.purges())

    def publish_snapshot(self) -> dict:
        self.key()
        with self._publish_lock():
            body = self.snapshot_body()
            self._publish([(self.config.topic("registry", "snapshot"), body, True),
                           (self.config.topic("registry", "heartbeat"), protocol.heartbeat_body(self.config.site, body["version"]), True)])
            self._published(body["version"], snapshot=True)
        return body

    def publish_heartbeat(self) -> dict:
        self.key()
        with self._publish_lock():
            body = protocol.heartbeat_body(self.config.site, self.registry.version)
            self._publish([(self.config.topic("registry", "heartbeat"), body, True)])
        return body

    def _published(self, version: int, snapshot: bool) -> None:
        with self.registry.transaction():
            if int(self.registry.get_meta(PUBLISHED_KEY, "0")) < version:
                self.registry.set_meta(PUBLISHED_KEY, str(version))
            if snapshot:
                self.registry.set_meta(SNAPSHOT_KEY, str(version))

    def _publish_change(self, event: dict) -> None:
        """The event and a heartbeat; the snapshot too when the previous change never went out
        (devices would wait at a gap otherwise)."""
        messages = [(self.config.topic("registry", "events"), event, False)]
        if (int(self.registry.get_meta(PUBLISHED_KEY, "0")) != event["version"] - 1
                or self.registry.get_meta(SNAPSHOT_KEY) is None):
            messages.append((self.config.topic("registry", "snapshot"), self.snapshot_body(), True))
        messages.append((self.config.topic("registry", "heartbeat"), protocol.heartbeat_body(self.config.site, event["version"]), True))
        self._publish(messages)
        self._published(event["version"], snapshot=len(messages) == 3)

    # -- MQTT ------------------------------------------------------------------------------------
    def _connect(self, hint: str = ""):
        """A connected client with its network loop running; AdminError if the broker is away or refuses us."""
        client = make_client(self.config, f"edge-admin-{self.config.site}-{uuid.uuid4().hex[:8]}", clean_session=True)
        answer: dict = {}
        connected = threading.Event()

        def on_connect(client, userdata, flags, reason_code, properties):
            answer["rc"] = reason_code
            connected.set()

        client.on_connect = on_connect
        where = f"{self.config.host}:{self.config.port}"
        try:
            client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)
        except OSError as exc:
            raise AdminError(f"cannot reach the broker at {where} ({exc.strerror or exc}){hint}") from None
        client.loop_start()
        if not connected.wait(10) or answer["rc"].is_failure:
            client.loop_stop()
            reason = answer.get("rc", "no answer in 10 s")
            raise AdminError(f"the broker at {where} refused the connection ({reason}){hint}")
        return client

    def _publish(self, messages: list[tuple[str, dict, bool]], timeout: float = 30.0) -> None:
        hint = "; the admin registry has the change: run `edge-admin publish-snapshot` when the broker is reachable"
        client = self._connect(hint)
        try:
            self._send(client, messages, timeout, hint)
        finally:
            client.disconnect()
            client.loop_stop()

    def _send(self, client, messages: list[tuple[str, dict, bool]], timeout: float = 30.0, hint: str = "") -> None:
        key = self.key()
        for topic, body, retain in messages:
            info = client.publish(topic, protocol.sign(key, body), qos=1, retain=retain)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
            if not info.is_published():
                raise AdminError(f"the broker did not confirm the publish{hint}")

    # -- the admin service ----------------------------------------------------------------------------
    def serve(self, stop: threading.Event, heartbeat_s: float = 60.0, snapshot_s: float = 3600.0,
              retention_days: Optional[float] = None, min_snapshot_gap_s: float = 5.0) -> None:
        """Until ``stop``: a signed heartbeat every ``heartbeat_s`` (devices' freshness), the
        snapshot every ``snapshot_s`` and when a device asks (at most one per
        ``min_snapshot_gap_s``), and the devices' audit intervals stored exactly once. A persistent
        session with manual acknowledgement: an interval is acknowledged only after its commit,
        so a crash here gets it redelivered and the (device, id) key stores it once."""
        self.key()
        inbox: "queue.Queue" = queue.Queue()
        client = make_client(self.config, f"edge-admin-{self.config.site}-serve", clean_session=False, manual_ack=True)
        audit_topic = self.config.topic("devices", "+", "audit")
        request_topic = self.config.topic("devices", "+", "request")
        connected = threading.Event()

        def on_connect(client, userdata, flags, reason_code, properties):
            if reason_code.is_failure:
                log.warning("edge-admin serve: broker refused the connection (%s)", reason_code)
                return
            connected.set()
            client.subscribe([(audit_topic, 1), (request_topic, 1)])

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            # From the first subscription on, the broker queues every device's audit for this
            # session, also while the service is down; audit published before it is not kept.
            log.info("edge-admin serve: subscribed to the devices' audit and request topics")

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = lambda *args: connected.clear()
        client.on_message = lambda client, userdata, message: inbox.put(message)
        client.reconnect_delay_set(1, max(1, int(self.config.reconnect_max_s)))
        client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive)
        client.loop_start()
        next_beat = next_snapshot = next_expire = time.monotonic()
        wanted, last_snapshot = False, -1e18
        try:
            while not stop.is_set():
                try:
                    message = inbox.get(timeout=0.1)
                except queue.Empty:
                    message = None
                if message is not None:
                    wanted |= self._serve_message(message)
                    try:
                        client.ack(message.mid, message.qos)
                    except Exception as exc:  # disconnected: the broker redelivers, stored once
                        log.debug("edge-admin serve: ack failed (%s)", type(exc).__name__)
                if not connected.is_set():
                    continue
                now = time.monotonic()
                try:
                    if now >= next_snapshot or (wanted and now - last_snapshot >= min_snapshot_gap_s):
                        if self.model_sig() is not None:
                            with self._publish_lock():
                                body = self.snapshot_body()
                                self._send(client, [(self.config.topic("registry", "snapshot"), body, True)], 10)
                                self._published(body["version"], snapshot=True)
                        wanted, last_snapshot, next_snapshot = False, now, now + snapshot_s
                        next_beat = now  # a heartbeat right after: devices that asked see they are current
                    if now >= next_beat:
                        with self._publish_lock():
                            beat = protocol.heartbeat_body(self.config.site, self.registry.version)
                            self._send(client, [(self.config.topic("registry", "heartbeat"), beat, True)], 10)
                        next_beat = now + heartbeat_s
                except AdminError as exc:
                    log.warning("edge-admin serve: %s", exc)
                if retention_days is not None and now >= next_expire:
                    self.audit.expire(retention_days)
                    next_expire = now + 3600
        finally:
            client.disconnect()
            client.loop_stop()

    def _serve_message(self, message) -> bool:
        """Store an audit batch (the device is the topic's, not the payload's); True for a snapshot request."""
        parts = message.topic.split("/")
        device, leaf = parts[-2], parts[-1]
        if leaf == "request":
            return True
        try:
            doc = json.loads(message.payload)
            records = doc.get("records") if isinstance(doc, dict) else None
            if not isinstance(records, list) or len(records) > 10_000:
                raise AuditRecordError("an audit message is {device_id, records: [...]}")
            new, held = self.audit.store(device, records)
            log.info("edge-admin serve: %d audit interval(s) from %s stored (%d already held)", new, device, held)
        except (ValueError, AuditRecordError) as exc:
            log.warning("edge-admin serve: an audit message from %s was dropped (%s)", device, type(exc).__name__)
        return False

    def devices(self, wait: float = 1.0) -> list[dict]:
        """Devices from their retained ``state`` (registry numbers, last seen) and ``status``
        (``online``, or ``offline`` from the Last Will) messages."""
        found: dict[str, dict] = {}

        def on_message(client, userdata, message):
            try:
                doc = json.loads(message.payload)
            except ValueError:
                return
            if not isinstance(doc, dict):
                return
            *_, device, leaf = message.topic.split("/")
            entry = found.setdefault(device, {})
            if leaf == "state":
                entry.update({k: v for k, v in doc.items() if k != "status"})
                entry.setdefault("status", doc.get("status"))
            else:
                entry["status"] = doc.get("status")
                entry["status_ts"] = doc.get("ts")

        client = self._connect()
        client.on_message = on_message
        try:
            client.subscribe([(self.config.topic("devices", "+", "state"), 1), (self.config.topic("devices", "+", "status"), 1)])
            time.sleep(wait)
        finally:
            client.disconnect()
            client.loop_stop()
        return [dict(found[k], device_id=k) for k in sorted(found)]


def _check_period(valid_from: Optional[float], valid_until: Optional[float]) -> None:
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise AdminError("--valid-until must be after --valid-from")
