"""Admin side of registry sync: the authoritative registry, the signing key, the publisher.

The admin's registry is the same SQLite schema as a device's (``edge_agent.registry``); every
change and its new version are one transaction. After each change the admin publishes the
signed event (QoS 1) and then the signed snapshot (retained), holding a lock file so two admin
commands never publish out of order or leave an older snapshot retained.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edge_agent.registry import Registry, RegistryError
from edge_agent.sync import protocol
from edge_agent.sync.client import make_client
from edge_agent.config import MqttConfig

PRIVATE_KEY = "admin_ed25519.key"
PUBLIC_KEY = "admin_ed25519.pub"


class AdminError(Exception):
    """An admin command that cannot be done as asked (worded for the operator)."""


def keygen(home: Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into ``home``: the private key with mode 0600."""
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
        fh.write(protocol.private_key_pem(key))
    os.replace(tmp, private)
    public.write_bytes(protocol.public_key_pem(key.public_key()))
    return private, public


class Admin:
    def __init__(self, home: Path, config: MqttConfig, key_path: Optional[Path] = None) -> None:
        self.home = Path(home)
        self.config = config
        self.key_path = key_path or self.home / PRIVATE_KEY
        self.registry = Registry(self.home / "registry.db")

    def close(self) -> None:
        self.registry.close()

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

    def enroll(self, name: str, embeddings: np.ndarray, model_sig: str, publish: bool = True, existing_ok: bool = False) -> dict:
        """Add ``name`` (or, with ``existing_ok``, replace their templates); returns the signed
        event's body (already published). ``embeddings`` is every template the person keeps."""
        vectors = np.asarray(embeddings, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != protocol.EMBEDDING_DIM:
            raise AdminError(f"embeddings must be [k, {protocol.EMBEDDING_DIM}]")
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
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
                version = self.registry.version + 1
                self.registry.set_version(version)
                self.registry.set_meta("model_sig", model_sig)
            person = self.registry.get(person_id)
            body = protocol.event_body(self.config.site, version, "upsert", person_id, person.name, person.embeddings, model_sig)
            if publish:
                self._publish_change(body)
        return body

    def remove(self, name: str, publish: bool = True) -> dict:
        with self._publish_lock():
            with self.registry.transaction():
                person = self.registry.find(name) or self.registry.get(name)
                if person is None:
                    raise AdminError(f"no person named {name!r} in the admin registry")
                self.registry.remove_person(person.person_id)
                version = self.registry.version + 1
                self.registry.set_version(version)
            body = protocol.event_body(self.config.site, version, "delete", person.person_id)
            if publish:
                self._publish_change(body)
        return body

    def snapshot_body(self) -> dict:
        with self.registry.transaction():  # people and version read consistently
            people = self.registry.people()
            version = self.registry.version
        sig = self.model_sig()
        if sig is None:
            raise AdminError("the registry has never had a model signature: enrol someone first")
        return protocol.snapshot_body(self.config.site, version, sig, people)

    def publish_snapshot(self) -> dict:
        with self._publish_lock():
            body = self.snapshot_body()
            self._publish([(self.config.topic("registry", "snapshot"), body, True)])
        return body

    def _publish_change(self, event: dict) -> None:
        snapshot = self.snapshot_body()
        self._publish([(self.config.topic("registry", "events"), event, False),
                       (self.config.topic("registry", "snapshot"), snapshot, True)])

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
        key = protocol.load_private_key(self.key_path)
        payloads = [(topic, protocol.sign(key, body), retain) for topic, body, retain in messages]
        hint = "; the admin registry has the change: run `edge-admin publish-snapshot` when the broker is reachable"
        client = self._connect(hint)
        try:
            for topic, payload, retain in payloads:
                info = client.publish(topic, payload, qos=1, retain=retain)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    pass
                if not info.is_published():
                    raise AdminError(f"the broker did not confirm the publish{hint}")
        finally:
            client.disconnect()
            client.loop_stop()

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
