"""Consent lifecycle without a broker: validity periods judged by the device's own (injected)
clock, a reset clock, registry age, the catch-up hold, stale snapshots, the audit trail in a
real SQLite file, the admin key's passphrase. Real registry files throughout; no sleeping."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from edge_agent.audit import AuditLog
from edge_agent.consent import ConsentGate
from edge_agent.gallery import ISSUED_AT_KEY, GalleryProvider
from edge_agent.registry import Person, Registry, hash_people
from edge_agent.sync import admin_cli, protocol
from edge_agent.sync.admin import Admin, AdminError, keygen
from edge_agent.sync.audit_store import AuditRecordError, AuditStore
from edge_agent.config import MqttConfig
from edge_agent.sync.device import RegistryApplier

SIG = "mobilefacenet-test"
SITE = "lobby"
T0 = 1_780_000_000.0  # the injected "now" (2026-05-28T20:26:40Z)


def unit(k: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((k, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry.db")
    yield reg
    reg.close()


def shown_ids(provider: GalleryProvider) -> list[str]:
    return sorted(provider.current().person_ids)


def provider_for(registry: Registry, gate: ConsentGate) -> GalleryProvider:
    return GalleryProvider(registry, SIG, poll_s=0.0, gate=gate)


# -- validity periods, clock, age --------------------------------------------------------------------
def test_period_enforced_by_the_clock_alone(registry):
    registry.upsert_person("always", unit(1, 1), SIG, "p-always")
    registry.upsert_person("until", unit(1, 2), SIG, "p-until")
    registry.upsert_person("later", unit(1, 3), SIG, "p-later")
    registry.set_validity("p-until", None, T0 + 100)
    registry.set_validity("p-later", T0 + 50, T0 + 200)
    clock = Clock()
    provider = provider_for(registry, ConsentGate(clock=clock))
    assert shown_ids(provider) == ["p-always", "p-until"]
    clock.t = T0 + 50  # the start is inclusive
    assert shown_ids(provider) == ["p-always", "p-later", "p-until"]
    clock.t = T0 + 99.999
    assert "p-until" in shown_ids(provider)
    clock.t = T0 + 100  # the end is exclusive: hidden at that very second, no message needed
    assert shown_ids(provider) == ["p-always", "p-later"]
    assert provider.status.expired == 1 and not provider.status.registered_hidden
    clock.t = T0 + 200
    assert shown_ids(provider) == ["p-always"]
    # the gallery that remains still matches the right rows to the right people
    idx, cos = provider.current().match(unit(1, 1))
    assert provider.current().person_ids[idx[0]] == "p-always" and cos[0] > 0.999


def test_reset_clock_expires_everyone_with_a_period(registry):
    registry.upsert_person("always", unit(1, 1), SIG, "p-always")
    registry.upsert_person("until", unit(1, 2), SIG, "p-until")
    registry.set_validity("p-until", None, T0 + 10 * 86400)
    registry.set_meta(ISSUED_AT_KEY, repr(T0))  # newest signed admin message the device holds
    clock = Clock(T0 - 365 * 86400)  # the RTC lost a year: the period cannot be judged
    provider = provider_for(registry, ConsentGate(max_registry_age=None, clock_skew_s=300, clock=clock))
    assert shown_ids(provider) == ["p-always"]
    assert provider.status.clock_sane is False
    clock.t = T0 - 200  # within the allowed skew: sane again
    assert shown_ids(provider) == ["p-always", "p-until"]


def test_registry_age_hides_every_registered_person(registry):
    registry.upsert_person("ann", unit(1, 1), SIG, "p-ann")
    registry.set_meta(ISSUED_AT_KEY, repr(T0))
    clock = Clock(T0 + 3599)
    provider = provider_for(registry, ConsentGate(max_registry_age=3600, clock=clock))
    assert shown_ids(provider) == ["p-ann"]
    clock.t = T0 + 3600.5
    assert shown_ids(provider) == []
    status = provider.status.as_dict()
    assert status["registered_hidden"] and "no word from the admin" in status["reason"] and status["registry_age_s"] == 3600.5
    registry.set_meta(ISSUED_AT_KEY, repr(T0 + 3600))  # a heartbeat arrived
    assert shown_ids(provider) == ["p-ann"]
    clock.t = T0 - 86400  # a clock before the newest message: the age is unknown, so hidden too
    assert shown_ids(provider) == [] and provider.status.clock_sane is False


def test_catch_up_hold_hides_until_released(registry):
    registry.upsert_person("ann", unit(1, 1), SIG, "p-ann")
    gate = ConsentGate(clock=Clock())
    provider = provider_for(registry, gate)
    assert shown_ids(provider) == ["p-ann"]
    gate.hold("catching up")
    assert shown_ids(provider) == [] and provider.status.catching_up
    gate.release()
    assert shown_ids(provider) == ["p-ann"]


def test_validity_columns_added_to_an_old_registry_file(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE people (person_id TEXT PRIMARY KEY, name TEXT, created_at FLOAT, updated_at FLOAT);"
        "CREATE UNIQUE INDEX idx_people_name ON people(name);"
        "CREATE TABLE embeddings (id INTEGER PRIMARY KEY, person_id TEXT REFERENCES people(person_id), model_sig TEXT, dim INTEGER, vector BLOB);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);")
    conn.execute("INSERT INTO people VALUES ('p1', 'ann', 0, 0)")
    conn.execute("INSERT INTO embeddings (person_id, model_sig, dim, vector) VALUES ('p1', ?, 128, ?)", [SIG, unit(1, 1).tobytes()])
    conn.commit()
    conn.close()
    reg = Registry(path)
    try:
        person = reg.get("p1")
        assert (person.valid_from, person.valid_until) == (None, None)
        before = reg.content_hash()
        assert before == hash_people([Person("p1", "ann", unit(1, 1), SIG)])  # unchanged without a period
        assert reg.set_validity("p1", None, T0)
        assert reg.get("p1").valid_until == T0 and reg.content_hash() != before
        assert not reg.set_validity("nobody", None, T0)
    finally:
        reg.close()


# -- wire format ------------------------------------------------------------------------------------
def test_periods_heartbeats_and_purges_on_the_wire():
    limits = protocol.Limits()
    body = protocol.event_body(SITE, 3, "upsert", "p1", "Ann", unit(1, 1), SIG, valid_until=T0)
    event = protocol.parse_event(json.loads(protocol.canonical_json(body)), SITE, limits)
    assert (event.valid_from, event.valid_until) == (None, T0)
    change = protocol.parse_event(protocol.event_body(SITE, 4, "validity", "p1", valid_from=T0 - 5, valid_until=T0), SITE, limits)
    assert (change.op, change.valid_from, change.valid_until) == ("validity", T0 - 5, T0)
    assert protocol.parse_event(protocol.event_body(SITE, 5, "purge", "p1"), SITE, limits).op == "purge"
    beat = protocol.parse_heartbeat(protocol.heartbeat_body(SITE, 7, T0), SITE)
    assert (beat.version, beat.issued_at) == (7, T0)
    people = [Person("p1", "Ann", unit(1, 1), SIG, None, T0)]
    snap = protocol.parse_snapshot(protocol.snapshot_body(SITE, 5, SIG, people, {"gone": T0 - 1}), SITE, limits)
    assert snap.people[0].valid_until == T0 and snap.purges == {"gone": T0 - 1}
    bad = [
        dict(body, valid_from=T0 + 1),  # ends before it starts
        dict(body, valid_until="2027-06-30"),
        dict(body, valid_until=float("inf")),
        dict(protocol.event_body(SITE, 5, "delete", "p1"), valid_until=T0),  # a delete has no period
        dict(protocol.event_body(SITE, 5, "purge", "p1"), name="Ann"),
        dict(protocol.heartbeat_body(SITE, 7, T0), people=[]),
    ]
    for doc in bad:
        with pytest.raises(protocol.Rejected) as info:
            if doc.get("type") == "heartbeat":
                protocol.parse_heartbeat(doc, SITE)
            else:
                protocol.parse_event(doc, SITE, limits)
        assert info.value.kind == "payload"


# -- the device's applier: freshness ------------------------------------------------------------------
@pytest.fixture
def key():
    return protocol.generate_private_key()


def applier_for(registry, key, clock, audit=None, max_snapshot_age=None) -> RegistryApplier:
    return RegistryApplier(registry, SIG, key.public_key(), SITE, max_snapshot_age=max_snapshot_age, audit=audit, clock=clock)


def test_stale_snapshots_refused(registry, key):
    clock = Clock()
    applier = applier_for(registry, key, clock, max_snapshot_age=7 * 86400)
    ann = [Person("p1", "Ann", unit(1, 1), SIG)]
    # a new device is handed an old, validly signed snapshot: refused by age
    old = protocol.sign(key, protocol.snapshot_body(SITE, 9, SIG, [], issued_at=T0 - 8 * 86400))
    assert applier.handle("snapshot", old)[0].result == "rejected"
    assert applier.counters["rejected_stale"] == 1 and registry.version == 0
    current = protocol.sign(key, protocol.snapshot_body(SITE, 3, SIG, ann, issued_at=T0 - 60))
    assert applier.handle("snapshot", current)[0].result == "snapshot_applied"
    assert float(registry.get_meta(ISSUED_AT_KEY)) == T0 - 60
    # a higher version, but signed before what the device holds (a replayed or rolled-back admin): refused
    earlier = protocol.sign(key, protocol.snapshot_body(SITE, 4, SIG, [], issued_at=T0 - 120))
    assert applier.handle("snapshot", earlier)[0].result == "rejected"
    assert applier.counters["rejected_stale"] == 2 and registry.count() == 1 and registry.version == 3


def test_heartbeats_tell_fresh_from_behind(registry, key):
    clock = Clock()
    applier = applier_for(registry, key, clock)
    applier.handle("event", protocol.sign(key, protocol.event_body(SITE, 1, "upsert", "p1", "Ann", unit(1, 1), SIG, issued_at=T0 - 100)))
    assert registry.version == 1 and float(registry.get_meta(ISSUED_AT_KEY)) == T0 - 100
    assert applier.handle("heartbeat", protocol.sign(key, protocol.heartbeat_body(SITE, 1, T0)))[0].result == "ignored"
    assert float(registry.get_meta(ISSUED_AT_KEY)) == T0 and not applier.needs_snapshot
    # a replayed older heartbeat does not make the device look fresher
    applier.handle("heartbeat", protocol.sign(key, protocol.heartbeat_body(SITE, 1, T0 - 50)))
    assert float(registry.get_meta(ISSUED_AT_KEY)) == T0
    # the admin is ahead: not fresh, and the device asks for the registry
    assert applier.handle("heartbeat", protocol.sign(key, protocol.heartbeat_body(SITE, 3, T0 + 10)))[0].result == "held"
    assert applier.behind and applier.needs_snapshot and float(registry.get_meta(ISSUED_AT_KEY)) == T0
    # a forged heartbeat changes nothing
    forged = protocol.sign(protocol.generate_private_key(), protocol.heartbeat_body(SITE, 1, T0 + 999))
    assert applier.handle("heartbeat", forged)[0].result == "rejected" and float(registry.get_meta(ISSUED_AT_KEY)) == T0


def test_validity_event_and_purge_event_applied(registry, key, tmp_path):
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.db", clock=clock)
    applier = applier_for(registry, key, clock, audit=audit)
    applier.handle("event", protocol.sign(key, protocol.event_body(SITE, 1, "upsert", "p1", "Ann", unit(1, 1), SIG)))
    applier.handle("event", protocol.sign(key, protocol.event_body(SITE, 2, "validity", "p1", valid_until=T0)))
    assert registry.get("p1").valid_until == T0 and registry.version == 2
    for t in (T0 - 30, T0 - 29):
        audit.shown("p1", "door", 1.0, t)
        audit.shown("p2", "door", 1.0, t)
    audit.flush(now=T0)
    assert len(audit.rows()) == 2
    applier.handle("event", protocol.sign(key, protocol.event_body(SITE, 3, "purge", "p1", issued_at=T0)))
    assert [r["person_id"] for r in audit.rows()] == ["p2"] and registry.version == 3
    assert registry.get("p1") is not None  # a purge removes audit rows, not consent
    # a validity change for someone the device does not hold: diverged, wait for the snapshot
    out = applier.handle("event", protocol.sign(key, protocol.event_body(SITE, 4, "validity", "nobody", valid_until=T0)))
    assert out[0].result == "held" and applier.needs_snapshot
    audit.close()


# -- the audit trail ----------------------------------------------------------------------------------------
def test_audit_intervals_exact_and_persisted(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path / "audit.db", retention_days=30, gap_s=2.0, clock=clock)
    for i in range(10):  # 10 frames, 0.1 s apart, on one camera
        log.shown("p1", "door", 0.5 + 0.05 * i, T0 + 0.1 * i)
    log.shown("p1", "hall", 1.0, T0 + 0.5)
    for i in range(3):  # back after a gap longer than gap_s: a new interval
        log.shown("p1", "door", 1.0, T0 + 10 + i)
    log.flush(now=T0 + 12.5)  # the last door interval is still open (0.5 s idle)
    rows = log.rows()
    assert [(r["camera"], r["first_seen"], r["last_seen"], r["frames"], r["closed"]) for r in rows] == [
        ("door", T0, pytest.approx(T0 + 0.9), 10, 1), ("hall", T0 + 0.5, T0 + 0.5, 1, 1), ("door", T0 + 10, T0 + 12, 3, 0)]
    assert rows[0]["mean_score"] == pytest.approx(np.mean([0.5 + 0.05 * i for i in range(10)]))
    assert set(rows[0]) == {"id", "person_id", "camera", "first_seen", "last_seen", "frames", "mean_score", "closed", "published"}
    assert [r["id"] for r in log.pending()] == [rows[0]["id"], rows[1]["id"]]  # only closed intervals go out
    log.mark_published([rows[0]["id"]])
    assert [r["id"] for r in log.pending()] == [rows[1]["id"]]
    log.close()
    # a crash (no stop()): the open interval is closed at the next start, as it was written
    again = AuditLog(tmp_path / "audit.db", retention_days=30, clock=clock)
    assert [r["closed"] for r in again.rows()] == [1, 1, 1] and len(again.pending()) == 2
    assert again.expire(now=T0 + 29 * 86400) == 0
    assert again.expire(now=T0 + 31 * 86400) == 3 and again.rows() == []
    again.close()


def test_pipeline_records_shown_faces_only(shared_dir, make_config, tmp_path):
    """The real models on a real photo: the registered person is recorded, the stranger is not,
    and nothing but ids, times and scores lands in the audit file."""
    import cv2

    from edge_agent.service import Models
    from edge_agent.stats import CameraStats

    examples = shared_dir / "faces" / "face_recognition" / "examples"
    models = Models(make_config(audit={"gap_s": 5.0}))
    image = cv2.imread(str(examples / "obama.jpg"))
    models.registry.upsert_person("obama", models.embedder.embed(image, models.detector.detect(image)), models.model_sig)
    models.gallery.refresh()
    pipeline = models.pipeline(CameraStats("door")).pipeline
    probe = cv2.imread(str(examples / "obama2.jpg"))  # another photo of the registered person
    stranger = cv2.imread(str(examples / "biden.jpg"))
    for _ in range(6):
        pipeline.filter(probe.copy())
    for _ in range(3):
        pipeline.filter(stranger.copy())
    models.audit.flush(close_all=True)
    rows = models.audit.rows()
    person = models.registry.find("obama").person_id
    assert len(rows) == 1 and rows[0]["person_id"] == person and rows[0]["camera"] == "door", rows
    assert rows[0]["frames"] == pipeline.stats.counters["faces_shown"] >= 4  # shown from the min_votes-th frame on
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("audit.db*"))  # the file and its WAL
    assert person.encode() in raw and b"obama" not in raw  # ids and numbers only: no names, pixels or embeddings
    models.audit.close()


# -- the admin: audit store, CLI output, purge ----------------------------------------------------------
def _admin(tmp_path, passphrase=None) -> Admin:
    home = tmp_path / "admin"
    if not (home / "admin_ed25519.key").exists():
        keygen(home, passphrase=passphrase)
    cfg = MqttConfig(site=SITE, device_id="admin", admin_public_key=home / "admin_ed25519.pub", port=1)
    return Admin(home, cfg, passphrase=passphrase)


def _record(i: int, person: str = "p1", camera: str = "door") -> dict:
    return {"id": f"r{i:04d}", "person_id": person, "camera": camera, "first_seen": T0 + i, "last_seen": T0 + i + 0.5,
            "frames": 3, "mean_score": 0.9}


def test_audit_store_idempotent_and_validated(tmp_path):
    store = AuditStore(tmp_path / "audit.db")
    assert store.store("cam1", [_record(i) for i in range(5)]) == (5, 0)
    assert store.store("cam1", [_record(i) for i in range(3, 8)]) == (3, 2)  # a redelivery overlaps: stored once
    assert store.store("cam2", [_record(0)]) == (1, 0)  # another device's interval with the same id is its own
    assert len(store.query()) == 9
    for bad in ({**_record(9), "image": "..."}, {**_record(9), "frames": 0}, {**_record(9), "last_seen": T0},
                {**_record(9), "mean_score": float("nan")}, "junk"):
        with pytest.raises(AuditRecordError):
            store.store("cam1", [_record(10), bad])
    assert len(store.query()) == 9  # a bad batch stores nothing
    store.close()


def test_audit_command_formats_and_withdrawal_keeps_rows(tmp_path, capsys):
    admin = _admin(tmp_path)
    admin.enroll("Ada Lovelace", unit(1, 1), SIG, publish=False, valid_until=T0 + 86400)
    ada = admin.registry.find("Ada Lovelace").person_id
    admin.audit.store("cam1", [_record(1, ada, "door"), _record(2, ada, "hall"), _record(3, "other", "door")])
    admin.remove("Ada Lovelace", publish=False)  # withdrawn: the record that she was shown stays
    admin.close()
    cli = ["--home", str(tmp_path / "admin"), "--site", SITE, "--port", "1"]
    assert admin_cli.main(cli + ["audit", "--person", "Ada Lovelace", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["camera"], r["name"], r["first_seen"], r["frames"]) for r in rows] == [("door", "Ada Lovelace", T0 + 1, 3),
                                                                                       ("hall", "Ada Lovelace", T0 + 2, 3)]
    assert admin_cli.main(cli + ["audit", "--camera", "door", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "device_id,camera,person_id,name,first_seen,last_seen,frames,mean_score" and len(lines) == 3
    assert lines[1] == f"cam1,door,{ada},Ada Lovelace,2026-05-28T20:26:41Z,2026-05-28T20:26:41Z,3,0.900"
    assert admin_cli.main(cli + ["audit", "--since", "2026-05-28T20:26:42.4Z"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 3 and "hall" in table[1] and "other" in table[2], table
    with pytest.raises(SystemExit) as info:
        admin_cli.main(cli + ["audit", "--since", "yesterday"])
    assert info.value.code == 2  # argparse: exit 2 with the reason
    assert "is not a date" in capsys.readouterr().err


def test_purge_deletes_rows_and_later_redeliveries(tmp_path):
    admin = _admin(tmp_path)
    admin.enroll("Ada", unit(1, 1), SIG, publish=False)
    ada = admin.registry.find("Ada").person_id
    admin.audit.store("cam1", [_record(1, ada), _record(2, "other")])
    admin.remove("Ada", publish=False)
    version = admin.registry.version
    body, removed = admin.purge("Ada", publish=False)
    assert removed == 1 and body["op"] == "purge" and body["person_id"] == ada and body["version"] == version + 1
    assert [r["person_id"] for r in admin.audit.query()] == ["other"]
    assert admin.audit.store("cam1", [_record(1, ada)]) == (0, 1)  # a late redelivery of a purged row is dropped
    assert admin.person_ids("Ada") == ["Ada"]  # the name itself is gone from the consent history
    assert ada in admin.snapshot_body()["purges"]  # a device that missed the event purges from the snapshot
    admin.close()


# -- the admin key ------------------------------------------------------------------------------------
def test_passphrase_protected_key(tmp_path, capsys, monkeypatch):
    home = tmp_path / "admin"
    monkeypatch.delenv("EDGE_ADMIN_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    assert admin_cli.main(["--home", str(home), "--passphrase-file", str(secret), "keygen"]) == 0
    assert b"ENCRYPTED PRIVATE KEY" in (home / "admin_ed25519.key").read_bytes()
    cli = ["--home", str(home), "--site", SITE, "--port", "1"]
    capsys.readouterr()
    # no passphrase / a wrong one: a clear error, and the registry is not touched
    assert admin_cli.main(cli + ["remove", "x"]) == 1
    assert "protected by a passphrase" in capsys.readouterr().err
    monkeypatch.setenv("EDGE_ADMIN_KEY_PASSPHRASE", "wrong")
    assert admin_cli.main(cli + ["publish-snapshot"]) == 1
    assert "wrong passphrase for the admin private key" in capsys.readouterr().err
    monkeypatch.setenv("EDGE_ADMIN_KEY_PASSPHRASE", "correct horse")
    admin = Admin(home, MqttConfig(site=SITE, admin_public_key=home / "admin_ed25519.pub"), passphrase=b"correct horse")
    assert protocol.key_id(admin.key().public_key()) == protocol.key_id(protocol.load_public_key(home / "admin_ed25519.pub"))
    admin.close()
    wrong = Admin(home, MqttConfig(site=SITE, admin_public_key=home / "admin_ed25519.pub"), passphrase=b"nope")
    with pytest.raises(AdminError, match="wrong passphrase"):
        wrong.enroll("ann", unit(1, 1), SIG)
    assert wrong.registry.version == 0 and wrong.registry.count() == 0  # checked before the change
    wrong.close()
    # the key from the service manager's credentials directory (systemd LoadCredential=)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin_ed25519.key").write_bytes((home / "admin_ed25519.key").read_bytes())
    (creds / "admin-key-passphrase").write_text("correct horse")
    (home / "admin_ed25519.key").unlink()
    monkeypatch.delenv("EDGE_ADMIN_KEY_PASSPHRASE")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    args = admin_cli._parser().parse_args(cli + ["publish-snapshot"])
    assert admin_cli._key_path(args) == creds / "admin_ed25519.key" and admin_cli._passphrase(args) == b"correct horse"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert admin_cli.main(cli + ["remove", "x"]) == 1
    assert "no admin private key at" in capsys.readouterr().err


def test_dates_on_the_command_line():
    assert admin_cli.utc_time("2027-06-30") == 1814313600.0  # 2027-06-30T00:00Z
    assert admin_cli._until("2027-06-30") == 1814313600.0 + 86400  # the whole of June 30 included
    assert admin_cli.utc_time("2027-06-30T18:00Z") == 1814313600.0 + 18 * 3600
    assert admin_cli.utc_time("2027-06-30T20:00+02:00") == 1814313600.0 + 18 * 3600
    assert admin_cli.utc_time("none") is None


def test_admin_service_unit_gets_the_key_as_credentials(tmp_path):
    """The shipped unit for `edge-admin serve` passes systemd's own check and hands the key and
    passphrase over as credentials (the names edge-admin looks for in $CREDENTIALS_DIRECTORY)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    unit_file = Path(__file__).resolve().parents[1] / "systemd" / "edge-admin-serve.service"
    text = unit_file.read_text()
    assert "LoadCredential=admin_ed25519.key:" in text and "LoadCredential=admin-key-passphrase:" in text
    assert "edge_agent.sync.admin_cli" in text and " serve" in text
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = tmp_path / "edge-admin-serve.service"
    unit.write_text(text.replace("/opt/edge-agent/.venv/bin/python", sys.executable))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    problems = [line for line in output.splitlines() if "edge-admin-serve.service" in line or "warning" in line.lower()]
    assert result.returncode == 0 and not problems, output
