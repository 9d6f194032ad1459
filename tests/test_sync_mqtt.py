"""Registry sync end to end against a real Mosquitto broker (started per session, loopback).

Each test uses its own site (its own topics and retained snapshot) and device id (its own
persistent session), so tests share one broker without seeing each other.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

from edge_agent.registry import Person, Registry
from edge_agent.sync import protocol
from edge_agent.sync.admin import Admin, AdminError, keygen
from edge_agent.config import MqttConfig
from edge_agent.sync.device import RegistrySync
from tests.mqtt_broker import Broker, broker, tls_broker  # noqa: F401  (fixtures)

SIG = "mobilefacenet-test"
REPO = Path(__file__).resolve().parents[1]


def unit(k: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((k, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def wait_for(cond, timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


@pytest.fixture(scope="module")
def admin_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("admin")
    keygen(home)
    return home


@pytest.fixture
def site() -> str:
    return "t" + uuid.uuid4().hex[:10]


def mqtt_config(b: Broker, site: str, admin_home: Path, device_id: str = "cam1", **extra) -> MqttConfig:
    return MqttConfig(site=site, device_id=device_id, admin_public_key=admin_home / "admin_ed25519.pub",
                      reconnect_min_s=1, reconnect_max_s=2, keepalive=10, **b.mqtt_settings(), **extra)


def in_sync(reg: Registry, admin: Admin) -> bool:
    return reg.version == admin.registry.version and reg.content_hash() == admin.registry.content_hash()


@pytest.fixture
def make_admin(admin_home, tmp_path):
    admins = []

    def make(cfg: MqttConfig) -> Admin:
        home = tmp_path / f"admin{len(admins)}"
        home.mkdir()
        for name in ("admin_ed25519.key", "admin_ed25519.pub"):
            (home / name).write_bytes((admin_home / name).read_bytes())
        admins.append(Admin(home, cfg.model_copy(update={"device_id": "admin"})))
        return admins[-1]

    yield make
    for a in admins:
        a.close()


# -- the whole loop with real faces ------------------------------------------------------------
def test_enrol_recognise_remove_with_real_faces(shared_dir, models_dir, broker, admin_home, site, tmp_path, capsys):
    import cv2

    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.files import model_signature, resolve
    from edge_agent.models.yunet import YuNet
    from edge_agent.sync import admin_cli

    examples = shared_dir / "faces" / "face_recognition" / "examples"
    embedder_path = resolve(models_dir, "mobilefacenet.onnx")
    detector, embedder = YuNet(resolve(models_dir, "yunet_s_dynamic.onnx")), ArcFaceEmbedder(embedder_path)
    model_sig = model_signature(embedder_path)

    def face_embedding(name: str) -> np.ndarray:
        image = cv2.imread(str(examples / name))
        faces = detector.detect(image)
        assert len(faces) == 1
        return embedder.embed(image, faces)

    probe, stranger = face_embedding("obama2.jpg"), face_embedding("biden.jpg")

    # The running device: the pipeline's gallery is swapped by on_applied, as the agent does.
    registry = Registry(tmp_path / "device.db")
    gallery = {"g": registry.gallery(model_sig), "t": 0.0}

    def on_applied():
        gallery["g"], gallery["t"] = registry.gallery(model_sig), time.perf_counter()

    cfg = mqtt_config(broker, site, admin_home)
    sync = RegistrySync(cfg, registry, model_sig, on_applied=on_applied)
    sync.start()
    assert sync.wait_connected(10)
    cli = ["--home", str(admin_home), "--host", broker.host, "--port", str(broker.port), "--site", site]
    try:
        idx, _ = gallery["g"].match(probe)
        assert idx[0] == -1  # nobody registered yet: the face stays anonymized
        # a group photo is refused (which face would it be?), and nothing is published
        assert admin_cli.main(cli + ["enroll", "--name", "Group", "--models", str(models_dir), str(examples / "two_people.jpg")]) == 1

        assert admin_cli.main(cli + ["enroll", "--name", "Barack Obama", "--models", str(models_dir), str(examples / "obama.jpg")]) == 0
        assert wait_for(lambda: len(gallery["g"]) == 1)
        idx, cos = gallery["g"].match(probe)
        assert gallery["g"].names[idx[0]] == "Barack Obama" and cos[0] > 0.42, cos
        _, cos_stranger = gallery["g"].match(stranger)
        assert cos_stranger[0] < 0.42  # someone else is still not shown

        # Camera-scale templates travel to the device; an existing name needs --replace or --append.
        capsys.readouterr()
        first = len(registry.find("Barack Obama").embeddings)
        assert 2 < first <= cfg.max_embeddings_per_person
        obama2 = str(examples / "obama2.jpg")
        assert admin_cli.main(cli + ["enroll", "--name", "Barack Obama", "--models", str(models_dir), obama2]) == 1
        assert "--replace" in capsys.readouterr().err
        assert admin_cli.main(cli + ["enroll", "--name", "Barack Obama", "--append", "--models", str(models_dir), obama2]) == 0
        assert f"{2 * first} stored" in capsys.readouterr().out
        assert wait_for(lambda: len(registry.find("Barack Obama").embeddings) == 2 * first)
        assert admin_cli.main(cli + ["enroll", "--name", "Barack Obama", "--append", "--models", str(models_dir),
                                     str(examples / "biden.jpg")]) == 1  # someone else's photo is refused
        assert admin_cli.main(cli + ["enroll", "--name", "Barack Obama", "--replace", "--models", str(models_dir),
                                     str(examples / "obama.jpg")]) == 0
        assert wait_for(lambda: len(registry.find("Barack Obama").embeddings) == first)

        capsys.readouterr()
        assert admin_cli.main(cli + ["devices", "--wait", "0.5"]) == 0
        table = capsys.readouterr().out
        assert "cam1" in table and "online" in table and " yes " in table, table

        start = time.perf_counter()
        assert admin_cli.main(cli + ["remove", "Barack Obama"]) == 0
        assert wait_for(lambda: len(gallery["g"]) == 0)
        latency_ms = (gallery["t"] - start) * 1000
        idx, _ = gallery["g"].match(probe)
        assert idx[0] == -1  # anonymized again from the next frame
        with capsys.disabled():
            print(f"\n[sync] obama2 vs enrolled obama: cosine {cos[0]:.3f} (threshold 0.42), biden {cos_stranger[0]:.3f}; "
                  f"remove command → device gallery updated in {latency_ms:.1f} ms")
        assert latency_ms < 5000
    finally:
        sync.stop()
        registry.close()


def start_synced_device(cfg, admin, tmp_path):
    """A device with its own registry file, running and caught up with the admin."""
    registry = Registry(tmp_path / "device.db")
    sync = RegistrySync(cfg, registry, SIG)
    sync.start()
    assert wait_for(lambda: in_sync(registry, admin))
    return registry, sync


# -- catch-up, restarts, crashes -----------------------------------------------------------------
def test_offline_device_catches_up_on_reconnect(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("alice", unit(2, 1), SIG)
    registry, sync = start_synced_device(cfg, admin, tmp_path)
    sync.stop()
    # three changes while the device is away
    admin.enroll("bob", unit(1, 2), SIG)
    admin.enroll("carol", unit(3, 3), SIG)
    admin.remove("alice")
    assert registry.version == 1
    sync = RegistrySync(cfg, registry, SIG)
    sync.start()
    try:
        assert wait_for(lambda: in_sync(registry, admin))
        assert registry.version == 4 and sorted(p.name for p in registry.people()) == ["bob", "carol"]
        assert wait_for(lambda: any(d["status"] == "online" and d.get("version") == 4 for d in admin.devices(0.2)), 5)
    finally:
        sync.stop()
        registry.close()


def test_broker_down_at_start_and_restarted_mid_sync(admin_home, site, tmp_path, make_admin):
    b = Broker(tmp_path / "broker")  # not started yet: the device must keep trying
    cfg = mqtt_config(b, site, admin_home)
    admin = make_admin(cfg)
    registry = Registry(tmp_path / "device.db")
    registry.upsert_person("local", unit(1, 9), SIG)  # whatever it had: kept while the broker is away
    sync = RegistrySync(cfg, registry, SIG)
    sync.start()
    try:
        time.sleep(1.5)
        assert sync.counters()["connects"] == 0 and registry.count() == 1
        b.start()
        assert sync.wait_connected(10)
        admin.enroll("alice", unit(2, 1), SIG)
        assert wait_for(lambda: in_sync(registry, admin))
        # the broker goes away between two changes; the one made meanwhile reaches devices later
        b.stop()
        with pytest.raises(AdminError):
            admin.enroll("bob", unit(1, 2), SIG)
        assert registry.version == 1 and registry.find("bob") is None
        b.start()
        admin.enroll("carol", unit(1, 3), SIG)  # event v3 is a gap for the device: the snapshot closes it
        assert wait_for(lambda: in_sync(registry, admin), 15)
        counters = sync.counters()
        assert counters["connects"] >= 2 and counters["disconnects"] >= 1
        assert sorted(p.name for p in registry.people()) == ["alice", "bob", "carol"]
    finally:
        sync.stop()
        registry.close()
        b.stop()


def test_device_restarted_mid_sync(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("p0", unit(1, 100), SIG)
    registry, sync = start_synced_device(cfg, admin, tmp_path)

    def burst():
        for i in range(1, 16):
            admin.enroll(f"p{i}", unit(1, 100 + i), SIG)

    writer = threading.Thread(target=burst)
    writer.start()
    assert wait_for(lambda: registry.version >= 4)
    sync.stop()  # mid-burst
    sync = RegistrySync(cfg, registry, SIG)
    sync.start()
    writer.join()
    try:
        assert wait_for(lambda: in_sync(registry, admin), 15)
        assert registry.count() == 16
    finally:
        sync.stop()
        registry.close()


def _device_process(cfg: MqttConfig, db: Path, tmp_path: Path) -> subprocess.Popen:
    conf = tmp_path / "mqtt.yaml"
    conf.write_text(yaml.safe_dump({"mqtt": json.loads(cfg.model_dump_json())}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "edge_agent.sync.device", "--mqtt-config", str(conf), "--registry", str(db),
                             "--model-sig", SIG], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _fingerprint(db: Path) -> tuple[int, str]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    registry = Registry(db)
    try:
        return registry.version, registry.content_hash()
    finally:
        registry.close()


def test_sigkill_while_applying_large_snapshot(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home, device_id="killed")
    admin = make_admin(cfg)
    admin.enroll("alice", unit(2, 1), SIG)
    db = tmp_path / "device.db"
    proc = _device_process(cfg, db, tmp_path)
    try:
        assert json.loads(proc.stdout.readline()) == {"applied": 1}
        old = (admin.registry.version, admin.registry.content_hash())
        # a large new registry, published as one snapshot (no event: the device applies it whole)
        people = [Person(uuid.uuid4().hex, f"person {i}", unit(1, 1000 + i), SIG) for i in range(3000)]
        admin.registry.replace_all(people, 50)
        new = (50, admin.registry.content_hash())
        wal = Path(str(db) + "-wal")
        before = wal.stat().st_mtime_ns
        admin.publish_snapshot()
        assert wait_for(lambda: wal.stat().st_mtime_ns != before, 20, 0.002)  # the apply transaction is writing
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        after = _fingerprint(db)
        assert after in (old, new)
        print(f"\n[sync] SIGKILL during a 3000-person snapshot apply left the {'old' if after == old else 'new'} registry; integrity ok")
        # the Last Will marks it offline; on restart it finishes the sync from the retained snapshot
        assert wait_for(lambda: any(d["device_id"] == "killed" and d["status"] == "offline" for d in admin.devices(0.2)), 5)
        proc = _device_process(cfg, db, tmp_path)
        assert wait_for(lambda: _fingerprint(db) == new, 30, 0.2)
    finally:
        proc.terminate()
        proc.wait(10)


# -- hostile messages over the real broker --------------------------------------------------------
def test_bad_messages_over_broker_rejected_counted_acked(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("alice", unit(2, 1), SIG)
    registry = Registry(tmp_path / "device.db")
    sync = RegistrySync(cfg, registry, SIG)
    sync.start()
    acks: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"attacker-{site}")
    client.on_message = lambda c, u, m: acks.append(json.loads(m.payload))
    client.connect(broker.host, broker.port)
    client.subscribe(cfg.topic("devices", "cam1", "ack"), 1)
    client.loop_start()
    try:
        assert wait_for(lambda: in_sync(registry, admin))
        before = (registry.version, registry.content_hash())
        forger = protocol.generate_private_key()
        replay = protocol.sign(protocol.load_private_key(admin.key_path), protocol.event_body(site, 1, "delete", "x"))
        bad = [
            protocol.sign(forger, protocol.event_body(site, 2, "upsert", "p9", "mallory", unit(1, 5), SIG)),
            replay,
            b"\x00" * (10 << 20),
            b"{not json",
            protocol.sign(protocol.load_private_key(admin.key_path),
                          protocol.event_body(site, 2, "upsert", "p9", "mallory", unit(1, 5), "other-model-sig")),
        ]
        # and a handful of random ones: junk bytes, and a genuine next event with bytes flipped in transit
        rng = np.random.default_rng(7)
        genuine = protocol.sign(protocol.load_private_key(admin.key_path),
                                protocol.event_body(site, 2, "upsert", "p9", "mallory", unit(1, 6), SIG))
        sig_at = genuine.index(b'"sig"')
        for _ in range(10):
            bad.append(rng.bytes(int(rng.integers(0, 2000))))
            flipped = bytearray(genuine)
            for i in rng.choice(np.arange(sig_at, len(genuine)), size=int(rng.integers(1, 5)), replace=False):
                flipped[i] ^= int(rng.integers(1, 256))
            bad.append(bytes(flipped))
        for payload in bad:
            client.publish(cfg.topic("registry", "events"), payload, qos=1).wait_for_publish(10)
        # a forged snapshot too
        client.publish(cfg.topic("registry", "snapshot"),
                       protocol.sign(forger, protocol.snapshot_body(site, 99, SIG, [])), qos=1).wait_for_publish(10)
        assert wait_for(lambda: sum(1 for a in acks if a["result"] in ("rejected", "ignored")) >= len(bad) + 1, 15), acks
        assert not any(a["result"] == "applied" or a["message_version"] == 99 for a in acks), acks
        # acks for the admin's own heartbeats count as "ignored" too: wait for the counters themselves
        counts = lambda c: (c["rejected_signature"], c["ignored_replay"], c["rejected_size"], c["rejected_model"])  # noqa: E731
        wait_for(lambda: counts(sync.counters()) == (23, 1, 1, 1), 15)
        c = sync.counters()
        assert counts(c) == (23, 1, 1, 1), c
        assert (registry.version, registry.content_hash()) == before
        # the device still works after all that
        admin.enroll("bob", unit(1, 2), SIG)
        assert wait_for(lambda: in_sync(registry, admin))
        assert all("mallory" not in json.dumps(a) for a in acks)
    finally:
        client.loop_stop()
        client.disconnect()
        sync.stop()
        registry.close()


def test_tls_client_cert_and_password(tls_broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(tls_broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("alice", unit(2, 1), SIG)
    registry = Registry(tmp_path / "device.db")
    sync = RegistrySync(cfg, registry, SIG)
    intruder_db = Registry(tmp_path / "intruder.db")
    intruder = RegistrySync(cfg.model_copy(update={"password": "wrong", "device_id": "intruder"}), intruder_db, SIG)
    sync.start()
    intruder.start()
    try:
        assert wait_for(lambda: in_sync(registry, admin))
        assert sync.counters()["connects"] == 1
        assert intruder.counters()["connects"] == 0 and intruder_db.version == 0
        wrong = make_admin(cfg.model_copy(update={"password": "wrong"}))
        with pytest.raises(AdminError, match="refused"):
            wrong.enroll("bob", unit(1, 2), SIG)
    finally:
        intruder.stop()
        sync.stop()
        registry.close()
        intruder_db.close()
