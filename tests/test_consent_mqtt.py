"""Consent lifecycle end to end over a real Mosquitto broker, real SQLite files, real processes:
expiry online and offline, a reset clock, withdrawal while offline (applied before anyone is
shown again), registry age (in /api/health of the running agent), stale snapshots, snapshots on
request rather than per change, the audit trail exact over SIGKILL of device and admin, purge,
and the shipped broker ACL. Clocks are injected; nothing sleeps to let a period run out."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import yaml

from edge_agent.audit import AuditLog
from edge_agent.consent import ConsentGate
from edge_agent.gallery import GalleryProvider
from edge_agent.registry import Registry
from edge_agent.sync import protocol
from edge_agent.sync.admin import Admin
from edge_agent.sync.device import RegistrySync
from tests.mqtt_broker import Broker, broker  # noqa: F401  (fixture)
from tests.test_sync_mqtt import SIG, admin_home, in_sync, make_admin, mqtt_config, site, unit, wait_for  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Device:
    """A device as the agent wires it: registry, consent gate, gallery provider, sync, audit."""

    def __init__(self, cfg, folder: Path, clock=None, max_registry_age=None, audit: bool = False) -> None:
        self.clock = clock or Clock()
        self.registry = Registry(folder / "device.db")
        self.gate = ConsentGate(max_registry_age, cfg.clock_skew_s, clock=self.clock)
        self.gallery = GalleryProvider(Registry(folder / "device.db"), SIG, poll_s=0.0, gate=self.gate)
        self.audit = AuditLog(folder / "audit.db", clock=self.clock) if audit else None
        self.cfg = cfg
        self.sync = None
        self.start()

    def start(self) -> None:
        self.sync = RegistrySync(self.cfg, self.registry, SIG, on_applied=self.gallery.refresh, gate=self.gate,
                                 audit=self.audit, clock=self.clock)
        self.sync.start()

    def stop(self) -> None:
        self.sync.stop()

    def shown(self) -> list[str]:
        g = self.gallery.current()
        return sorted(g.names)

    def close(self) -> None:
        self.sync.stop()
        self.registry.close()
        self.gallery.registry.close()
        if self.audit is not None:
            self.audit.close()


def caught_up(device: Device, admin: Admin) -> bool:
    return in_sync(device.registry, admin) and device.gate.held is None


# -- validity periods -------------------------------------------------------------------------------
def test_expiry_online_and_offline_with_no_message(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    now = time.time()
    admin.enroll("ann", unit(1, 1), SIG, valid_until=now + 100)
    admin.enroll("bob", unit(1, 2), SIG)
    admin.enroll("carol", unit(1, 3), SIG, valid_from=now - 10, valid_until=now + 300)
    admin.publish_snapshot()  # the scheduled snapshot a device joining later starts from
    device = Device(cfg, tmp_path)
    try:
        assert wait_for(lambda: caught_up(device, admin))
        assert device.shown() == ["ann", "bob", "carol"]
        device.clock.offset = 100  # ann's consent ends: hidden at once, nothing was sent
        assert device.shown() == ["bob", "carol"]
        admin.set_validity("bob", None, now + 200)  # a period set later travels as a signed event
        assert wait_for(lambda: device.registry.get(admin.registry.find("bob").person_id).valid_until == now + 200)
        assert device.shown() == ["bob", "carol"]
        device.clock.offset = 200
        assert device.shown() == ["carol"]
        device.stop()  # offline: carol's period still ends on the device's own clock
        device.clock.offset = 300
        assert device.shown() == [] and device.gallery.status.expired == 3
        assert device.registry.count() == 3  # expired is not withdrawn: the registry is unchanged
    finally:
        device.close()


def test_reset_clock_expires_people_with_a_period(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("dave", unit(1, 4), SIG)
    admin.enroll("erin", unit(1, 5), SIG, valid_until=time.time() + 365 * 86400)
    admin.publish_snapshot()  # the scheduled snapshot a device joining later starts from
    device = Device(cfg, tmp_path)
    try:
        assert wait_for(lambda: caught_up(device, admin))
        assert device.shown() == ["dave", "erin"]
        device.clock.offset = -2 * 86400  # the RTC jumped back two days (before the newest admin message)
        assert device.shown() == ["dave"] and device.gallery.status.clock_sane is False
        device.clock.offset = 0
        assert device.shown() == ["dave", "erin"]
    finally:
        device.close()


# -- withdrawal ---------------------------------------------------------------------------------------
def test_withdrawal_while_offline_applied_before_anyone_is_shown(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("ann", unit(1, 1), SIG)
    admin.enroll("bob", unit(1, 2), SIG)
    admin.publish_snapshot()  # the scheduled snapshot a device joining later starts from
    device = Device(cfg, tmp_path)
    try:
        assert wait_for(lambda: caught_up(device, admin))
        device.stop()
        admin.remove("ann")  # withdrawn while the device is away
        admin.enroll("frank", unit(1, 6), SIG)
        assert device.shown() == ["ann", "bob"]  # offline, within max_registry_age: the registry it has
        samples: list[tuple[int, list[str]]] = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                connects = device.sync.counters()["connects"] if device.sync else 0
                samples.append((connects, device.shown()))
                time.sleep(0.0005)

        device.start()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            assert wait_for(lambda: caught_up(device, admin), 15)
            assert wait_for(lambda: samples and samples[-1][1] == ["bob", "frank"])
        finally:
            done.set()
            sampler.join()
        after_connect = [names for connects, names in samples if connects >= 1]
        assert after_connect and not any("ann" in names for names in after_connect), "ann was shown after the reconnect"
        print(f"\n[consent] reconnect: {len(after_connect)} gallery reads after connect, ann in none of them; "
              f"{sum(1 for n in after_connect if not n)} read(s) empty while catching up")
    finally:
        device.close()


def test_registry_age_fail_closed_until_a_heartbeat(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("ann", unit(1, 1), SIG)
    device = Device(cfg, tmp_path, max_registry_age=60)
    try:
        assert wait_for(lambda: caught_up(device, admin))
        assert device.shown() == ["ann"]
        device.clock.offset = 61  # a minute without a signed word from the admin
        assert device.shown() == []
        assert device.gallery.status.registered_hidden and "no word from the admin" in device.gallery.status.reason
        # the admin's heartbeat (signed, small, retained) makes the registry fresh again
        beat = protocol.heartbeat_body(site, admin.registry.version, issued_at=time.time() + 30)
        admin._publish([(cfg.topic("registry", "heartbeat"), beat, True)])
        assert wait_for(lambda: device.shown() == ["ann"])
    finally:
        device.close()


# -- freshness of snapshots --------------------------------------------------------------------------
def test_old_signed_snapshot_refused_by_a_new_device(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home, max_snapshot_age=3600)
    admin = make_admin(cfg)
    admin.enroll("ann", unit(1, 1), SIG)
    admin.enroll("mallory", unit(1, 7), SIG)
    old = admin.snapshot_body()
    admin.remove("mallory")
    # an attacker on the broker kept the old (genuinely signed) snapshot and retains it again
    old = dict(old, issued_at=time.time() - 7200)
    key = protocol.load_private_key(admin.key_path)
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"attacker-{site}")
    attacker.connect(broker.host, broker.port)
    attacker.loop_start()
    attacker.publish(cfg.topic("registry", "heartbeat"), b"", qos=1, retain=True).wait_for_publish(5)
    attacker.publish(cfg.topic("registry", "snapshot"), protocol.sign(key, old), qos=1, retain=True).wait_for_publish(5)
    device = Device(cfg, tmp_path)
    try:
        assert wait_for(lambda: device.sync.counters()["rejected_stale"] >= 1)
        assert device.registry.version == 0 and device.shown() == []
        admin.publish_snapshot()  # the current one
        assert wait_for(lambda: caught_up(device, admin))
        assert device.shown() == ["ann"]
        # and once it holds that, the old snapshot is refused for its issue time too (a higher version would not help)
        attacker.publish(cfg.topic("registry", "snapshot"), protocol.sign(key, dict(old, version=99, issued_at=time.time() - 60)),
                         qos=1, retain=False).wait_for_publish(5)
        assert wait_for(lambda: device.sync.counters()["rejected_stale"] >= 2)
        assert device.registry.version == admin.registry.version and device.shown() == ["ann"]
    finally:
        attacker.loop_stop()
        attacker.disconnect()
        device.close()


def test_changes_travel_as_events_snapshot_on_request(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    seen = {"events": 0, "snapshot": 0, "heartbeat": 0}
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{site}")
    watcher.on_message = lambda c, u, m: seen.__setitem__(m.topic.rsplit("/", 1)[1], seen[m.topic.rsplit("/", 1)[1]] + 1)
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *args: subscribed.set()
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    watcher.subscribe(cfg.topic("registry", "#"), 1)
    assert subscribed.wait(10)
    for i in range(5):
        admin.enroll(f"p{i}", unit(1, 10 + i), SIG)
    assert wait_for(lambda: seen["events"] == 5 and seen["heartbeat"] == 5)
    assert seen["snapshot"] == 1  # only the first change (no snapshot was retained yet)
    stop = threading.Event()
    server = threading.Thread(target=admin.serve, args=(stop,), kwargs={"heartbeat_s": 3600, "snapshot_s": 3600})
    device = None
    try:
        # a new device gets the retained snapshot (version 1) and the heartbeat (version 5): it is
        # behind, shows nobody, asks, and the admin service answers with a current snapshot
        device = Device(cfg, tmp_path)
        assert wait_for(lambda: device.sync.applier.admin_version == 5 and device.registry.version == 1)
        assert device.shown() == [] and device.gate.held is not None
        server.start()
        assert wait_for(lambda: caught_up(device, admin), 15)
        assert device.shown() == [f"p{i}" for i in range(5)]
    finally:
        stop.set()
        if server.is_alive():
            server.join(10)
        watcher.loop_stop()
        watcher.disconnect()
        if device is not None:
            device.close()


# -- the audit trail over crashes --------------------------------------------------------------------
def _device_process(cfg, db: Path, audit: Path, tmp_path: Path) -> subprocess.Popen:
    conf = tmp_path / "device-mqtt.yaml"
    conf.write_text(yaml.safe_dump({"mqtt": json.loads(cfg.model_dump_json())}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "edge_agent.sync.device", "--mqtt-config", str(conf), "--registry", str(db),
                             "--model-sig", SIG, "--audit", str(audit)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _serve_process(home: Path, broker: Broker, site: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(home / "serve.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "edge_agent.sync.admin_cli", "--home", str(home), "--host", broker.host,
                             "--port", str(broker.port), "--site", site, "serve", "--heartbeat-s", "5"],
                            env=env, stdout=log, stderr=log)


def _count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_audit_exact_over_sigkill_of_device_and_admin(broker, admin_home, site, tmp_path):
    n = 2000
    cfg = mqtt_config(broker, site, admin_home, device_id="audited", audit_publish_s=0.2)  # 200 per batch
    device_audit = tmp_path / "device-audit.db"
    log = AuditLog(device_audit, gap_s=1.0)
    t0 = time.time() - 3600
    for i in range(n):  # n intervals (each person/camera pair returns after 6 s > gap_s): two people, three cameras
        log.shown(f"p{i % 2}", f"cam{i % 3}", 0.5 + (i % 7) / 20, t0 + i)
    log.flush(close_all=True)
    expected = {(r["id"], r["person_id"], r["camera"], r["first_seen"], r["last_seen"], r["frames"], r["mean_score"])
                for r in log.rows()}
    log.close()
    assert len(expected) == n
    home = tmp_path / "admin"
    home.mkdir()
    for name in ("admin_ed25519.key", "admin_ed25519.pub"):
        (home / name).write_bytes((admin_home / name).read_bytes())
    admin_audit = home / "audit.db"
    held = lambda: _count(admin_audit, "SELECT count(*) FROM audit")  # noqa: E731
    published = lambda: _count(device_audit, "SELECT count(*) FROM audit WHERE published = 1")  # noqa: E731
    serve = _serve_process(home, broker, site)
    # the admin service's session must exist first: the broker queues for it from then on
    assert wait_for(lambda: b"subscribed" in (home / "serve.log").read_bytes(), 30)
    device = _device_process(cfg, tmp_path / "device.db", device_audit, tmp_path)
    try:
        assert wait_for(lambda: held() >= 200, 30)
        device.send_signal(signal.SIGKILL)  # mid-publish: some batches sent, not all acknowledged
        device.wait(10)
        first = (held(), published())
        assert first[0] < n, "the device finished before it could be killed"
        replayed = first[1] >= first[0]
        if replayed:  # every delivered batch was acknowledged before the kill: make the
            # crash land between delivery and acknowledgement for one batch (what a lost PUBACK leaves)
            conn = sqlite3.connect(device_audit)
            with conn:
                conn.execute("UPDATE audit SET published = 0 WHERE id IN (SELECT id FROM audit WHERE published = 1 "
                             "ORDER BY first_seen LIMIT 100)")
            conn.close()
        device = _device_process(cfg, tmp_path / "device.db", device_audit, tmp_path)
        assert wait_for(lambda: held() >= first[0] + 400, 30)
        serve.send_signal(signal.SIGKILL)  # mid-intake: the broker keeps its session's messages
        serve.wait(10)
        second = held()
        assert second < n, "the admin finished before it could be killed"
        assert wait_for(lambda: published() == n, 30)  # the device goes on publishing into the admin's queue
        serve = _serve_process(home, broker, site)
        assert wait_for(lambda: held() == n, 30), (held(), (home / "serve.log").read_text()[-3000:])
        time.sleep(0.5)  # any redelivery still in flight would land now
        conn = sqlite3.connect(admin_audit)
        rows = conn.execute("SELECT id, person_id, camera, first_seen, last_seen, frames, mean_score, device_id FROM audit").fetchall()
        conn.close()
        assert len(rows) == n and {r[:7] for r in rows} == expected and {r[7] for r in rows} == {"audited"}
        print(f"\n[audit] {n} intervals: device SIGKILLed after {first[0]} reached the admin ({first[1]} acknowledged), "
              f"{'100 already delivered marked unacknowledged (as a lost PUBACK leaves them), ' if replayed else ''}"
              f"admin SIGKILLed at {second}; admin holds exactly the device's {n}, none lost, none doubled")
    finally:
        for proc in (device, serve):
            proc.terminate()
            proc.wait(10)


def test_purge_reaches_devices_withdrawal_keeps_rows(broker, admin_home, site, tmp_path, make_admin):
    cfg = mqtt_config(broker, site, admin_home)
    admin = make_admin(cfg)
    admin.enroll("ann", unit(1, 1), SIG)
    admin.enroll("bob", unit(1, 2), SIG)
    ann, bob = admin.registry.find("ann").person_id, admin.registry.find("bob").person_id
    admin.publish_snapshot()  # the scheduled snapshot a device joining later starts from
    device = Device(cfg, tmp_path, audit=True)
    try:
        assert wait_for(lambda: caught_up(device, admin))
        t = time.time() - 60
        for person in (ann, bob):
            device.audit.shown(person, "door", 0.9, t)
        device.audit.flush(close_all=True)
        admin.remove("ann")
        assert wait_for(lambda: device.registry.find("ann") is None)
        assert sorted(r["person_id"] for r in device.audit.rows()) == sorted([ann, bob])  # withdrawal keeps the record
        admin.purge("ann")
        assert wait_for(lambda: [r["person_id"] for r in device.audit.rows()] == [bob])
        assert device.sync.counters()["purges"] == 1
    finally:
        device.close()


# -- the shipped broker ACL ---------------------------------------------------------------------------------
def test_shipped_acl_device_cannot_publish_registry_or_read_other_audit(admin_home, site, tmp_path, make_admin):
    users = {"edge-admin": "admin-pw", "cam1": "cam1-pw", "cam2": "cam2-pw"}
    b = Broker(tmp_path / "acl-broker", acl_file=REPO / "docs" / "mosquitto" / "edge-agent.acl", users=users).start()
    base = dict(host=b.host, port=b.port)
    admin = make_admin(mqtt_config(b, site, admin_home, user="edge-admin", password="admin-pw"))
    cfg1 = mqtt_config(b, site, admin_home, device_id="cam1", user="cam1", password="cam1-pw")
    device = Device(cfg1, tmp_path, audit=True)

    def client(user: str, received: list) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-raw-{site}")
        c.username_pw_set(user, users[user])
        c.on_message = lambda cl, u, m: received.append(m.topic)
        c.connect(base["host"], base["port"])
        c.loop_start()
        return c

    stolen, admin_seen = [], []
    cam2 = client("cam2", stolen)
    watcher = client("edge-admin", admin_seen)
    try:
        admin.enroll("ann", unit(1, 1), SIG)  # sync works under the ACL
        assert wait_for(lambda: caught_up(device, admin))
        assert wait_for(lambda: any(d["device_id"] == "cam1" and d["status"] == "online" for d in admin.devices(0.3)), 5)
        # a device credential publishes a genuinely signed next event: the broker drops it
        key = protocol.load_private_key(admin.key_path)
        forged = protocol.sign(key, protocol.event_body(site, 2, "upsert", "p-mallory", "mallory", unit(1, 9), SIG))
        cam2.publish(cfg1.topic("registry", "events"), forged, qos=1).wait_for_publish(5)
        cam2.publish(cfg1.topic("registry", "snapshot"), b"", qos=1, retain=True).wait_for_publish(5)  # nor erase the snapshot
        # ... and cannot read another device's audit trail, which the admin can
        cam2.subscribe([(cfg1.topic("devices", "cam1", "audit"), 1), (cfg1.topic("devices", "+", "audit"), 1)])
        watcher.subscribe(cfg1.topic("devices", "cam1", "audit"), 1)
        time.sleep(0.3)
        device.audit.shown("p1", "door", 1.0, time.time() - 10)
        device.audit.flush(close_all=True)
        assert wait_for(lambda: admin_seen, 10)
        admin.enroll("bob", unit(1, 2), SIG)  # the genuine version 2
        assert wait_for(lambda: caught_up(device, admin))
        assert device.registry.find("mallory") is None and device.shown() == ["ann", "bob"]
        time.sleep(0.3)
        assert stolen == [], stolen
        assert device.sync.counters()["received"] >= 2 and device.sync.counters()["rejected_payload"] == 0
        # the retained snapshot is still the admin's
        fresh = Device(mqtt_config(b, site, admin_home, device_id="cam2", user="cam2", password="cam2-pw"), tmp_path / "cam2")
        try:
            assert wait_for(lambda: fresh.registry.version >= 1)
        finally:
            fresh.close()
    finally:
        cam2.loop_stop()
        watcher.loop_stop()
        device.close()
        b.stop()


# -- the running agent says so in /api/health and /api/stats ---------------------------------------------
def test_agent_health_reports_stale_registry(shared_dir, models_dir, broker, admin_home, site, tmp_path, make_admin):
    from tests.test_api import TOKEN, RunningAgent

    from edge_agent.models.files import model_signature, resolve

    real_sig = model_signature(resolve(models_dir, "mobilefacenet.onnx"))  # the agent checks embeddings against it
    cfg = mqtt_config(broker, site, admin_home, device_id="agent", max_registry_age=86400, max_snapshot_age=30 * 86400)
    admin = make_admin(cfg)
    admin.enroll("ann", unit(1, 1), real_sig)
    # the newest signed word the agent will find retained is two days old
    key = protocol.load_private_key(admin.key_path)
    body = dict(admin.snapshot_body(), issued_at=time.time() - 2 * 86400)
    beat = protocol.heartbeat_body(site, admin.registry.version, issued_at=time.time() - 2 * 86400)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"setup-{site}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(cfg.topic("registry", "snapshot"), protocol.sign(key, body), qos=1, retain=True).wait_for_publish(5)
    client.publish(cfg.topic("registry", "heartbeat"), protocol.sign(key, beat), qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"mqtt": json.loads(cfg.model_dump_json())}))
    agent = RunningAgent(str(shared_dir / "video/short_hamilton_clip.mp4"), models_dir, tmp_path / "data", config)
    try:
        agent.wait_ready()
        assert wait_for(lambda: httpx.get(agent.url + "/api/health").json()["consent"]["registry_age_s"] is not None, 20, 0.2)
        r = httpx.get(agent.url + "/api/health")
        consent = r.json()["consent"]
        assert r.status_code == 503 and r.json()["status"] == "degraded", r.json()
        assert consent["registered_hidden"] and "no word from the admin" in consent["reason"] and consent["registry_age_s"] > 86400
        stats = httpx.get(agent.url + "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert stats["consent"]["registered_hidden"]
        admin.publish_heartbeat()  # the admin speaks: fresh again
        assert wait_for(lambda: not httpx.get(agent.url + "/api/health").json()["consent"]["registered_hidden"], 20, 0.2)
    finally:
        agent.stop()
