"""Registry-sync messages without a broker: signatures, validation, version rules, a fuzz.

Every bad message must be rejected (and counted) with the registry byte-for-byte unchanged.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat

import numpy as np
import pytest

from edge_agent.registry import hash_people
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.registry import Person, Registry
from edge_agent.sync import protocol
from edge_agent.sync.admin import keygen
from edge_agent.config import MqttConfig
from edge_agent.sync.device import RegistryApplier

SITE = "site1"
SIG = "mobilefacenet-test"
KEY = protocol.generate_private_key()
OTHER_KEY = protocol.generate_private_key()


def unit(k: int = 2, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((k, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def upsert(version: int, name: str = "alice", pid: str = "p1", emb=None, sig: str = SIG, key=KEY) -> bytes:
    emb = unit(2, version) if emb is None else emb
    return protocol.sign(key, protocol.event_body(SITE, version, "upsert", pid, name, emb, sig))


def snapshot(version: int, people: list[Person], sig: str = SIG) -> bytes:
    return protocol.sign(KEY, protocol.snapshot_body(SITE, version, sig, people))


@pytest.fixture
def applier(tmp_path):
    registry = Registry(tmp_path / "registry.db")
    a = RegistryApplier(registry, SIG, KEY.public_key(), SITE)
    assert a.handle("event", upsert(1))[0].result == "applied"
    yield a
    registry.close()


def fingerprint(a: RegistryApplier):
    return a.registry.version, a.registry.content_hash()


def test_event_sequence_gap_and_snapshot(applier):
    a = applier
    assert a.handle("event", upsert(2, "bob", "p2"))[0].result == "applied"
    assert a.handle("event", protocol.sign(KEY, protocol.event_body(SITE, 3, "delete", "p1")))[0].result == "applied"
    assert [p.name for p in a.registry.people()] == ["bob"]
    # replay of an old event and a duplicate delivery: ignored, nothing changes
    before = fingerprint(a)
    assert a.handle("event", upsert(1))[0].result == "ignored"
    assert a.handle("event", upsert(3, "carol", "p3"))[0].result == "ignored"
    assert fingerprint(a) == before and a.counters["ignored_replay"] == 2
    # a gap: held until the snapshot, then the held event follows
    assert a.handle("event", upsert(6, "eve", "p6"))[0].result == "held"
    assert a.needs_snapshot and a.registry.version == 3
    people = [Person("p2", "bob", unit(1, 2), SIG), Person("p5", "dave", unit(1, 5), SIG)]
    outcomes = a.handle("snapshot", snapshot(5, people))
    assert [o.result for o in outcomes] == ["snapshot_applied", "applied"]
    assert a.registry.version == 6 and sorted(p.name for p in a.registry.people()) == ["bob", "dave", "eve"]
    assert not a.needs_snapshot
    # an older snapshot (replayed) changes nothing
    before = fingerprint(a)
    assert a.handle("snapshot", snapshot(4, people))[0].result == "ignored"
    assert fingerprint(a) == before


def test_snapshot_hash_equals_registry_hash(applier):
    people = [Person(f"id{i}", f"n{i}", unit(3, i), SIG) for i in range(20)]
    payload = snapshot(9, people)
    applier.handle("snapshot", payload)
    body = json.loads(payload.split(b"\n", 1)[1])
    assert applier.registry.content_hash() == body["hash"] and applier.registry.version == 9


def tamper_embedding(payload: bytes) -> bytes:
    header, body = payload.split(b"\n", 1)
    doc = json.loads(body)
    raw = bytearray(base64.b64decode(doc["embeddings"]["data"]))
    raw[0] ^= 0x01
    doc["embeddings"]["data"] = base64.b64encode(bytes(raw)).decode()
    return header + b"\n" + protocol.canonical_json(doc)


def signed_raw(body: bytes) -> bytes:
    header = {"alg": "Ed25519", "kid": "x", "sig": base64.b64encode(KEY.sign(body)).decode()}
    return protocol.canonical_json(header) + b"\n" + body


def nan_event() -> bytes:
    emb = unit(1)
    emb[0, 5] = np.nan
    body = protocol.event_body(SITE, 2, "upsert", "p9", "mallory", emb, SIG)
    return protocol.sign(KEY, body)


def wrong_dim_event() -> bytes:
    v = np.ones((1, 64), np.float32) / 8.0
    return protocol.sign(KEY, protocol.event_body(SITE, 2, "upsert", "p9", "mallory", v, SIG))


BAD = {
    "forged signature": (lambda: upsert(2, "mallory", "p9", key=OTHER_KEY), "rejected_signature"),
    "unsigned": (lambda: upsert(2, "mallory", "p9").split(b"\n", 1)[1], "rejected_signature"),
    "tampered embedding": (lambda: tamper_embedding(upsert(2, "mallory", "p9")), "rejected_signature"),
    "nan": (nan_event, "rejected_payload"),
    "wrong dimension": (wrong_dim_event, "rejected_payload"),
    "10 MB": (lambda: b"{" + b" " * (10 << 20) + b"}", "rejected_size"),
    "invalid json (signed)": (lambda: signed_raw(b'{"format":1,"type":"event",'), "rejected_payload"),
    "invalid json (unsigned)": (lambda: b"not json at all", "rejected_signature"),
    "wrong model": (lambda: upsert(2, "mallory", "p9", sig="other-model-0123"), "rejected_model"),
    "other site": (lambda: protocol.sign(KEY, dict(protocol.event_body("elsewhere", 2, "delete", "p1"))), "rejected_payload"),
    "not unit": (lambda: upsert(2, "mallory", "p9", emb=unit(1) * 3), "rejected_payload"),
    "bad person id": (lambda: upsert(2, "mallory", "../../etc"), "rejected_payload"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_messages_rejected_and_counted(applier, case):
    make, counter = BAD[case]
    before = fingerprint(applier)
    outcome = applier.handle("event", make())
    assert outcome[0].result == "rejected"
    assert applier.counters[counter] == 1, applier.counters
    assert fingerprint(applier) == before


def test_snapshot_with_wrong_hash_or_model_rejected(applier):
    people = [Person("p2", "bob", unit(1, 2), SIG)]
    body = protocol.snapshot_body(SITE, 5, SIG, people)
    body["hash"] = "0" * 64
    before = fingerprint(applier)
    assert applier.handle("snapshot", protocol.sign(KEY, body))[0].result == "rejected"
    other = [Person("p2", "bob", unit(1, 2), "other-sig")]
    assert applier.handle("snapshot", snapshot(5, other, sig="other-sig"))[0].result == "rejected"
    assert applier.handle("event", snapshot(5, people))[0].result == "rejected"  # a snapshot on the events topic
    assert fingerprint(applier) == before
    assert applier.counters["rejected_payload"] == 2 and applier.counters["rejected_model"] == 1


def test_rejection_logs_carry_no_content(applier, caplog):
    caplog.set_level("DEBUG")
    applier.handle("event", nan_event())
    applier.handle("event", upsert(2, "mallory", "p9", key=OTHER_KEY))
    text = caplog.text
    assert "mallory" not in text and "data" not in text and "rejected" in text


# -- fuzz ---------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["format", "type", "site", "version", "op", "person_id", "name", "model_sig", "embeddings", "issued_at", "extra"]


def _mutated(draw_field: str, value, base_version: int) -> dict:
    body = protocol.event_body(SITE, base_version, "upsert", "pz", "zed", unit(1, 7), SIG)
    body[draw_field] = value
    return body


GENUINE_NEXT = upsert(2, "zed", "pz")  # fixed bytes: hypothesis needs deterministic draws


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _invalid(field: str, value):
    """Make sure the drawn replacement cannot make a valid next event by chance."""
    if field in ("name", "person_id", "model_sig") and isinstance(value, str):
        return None  # valid-looking strings would apply
    if field in ("site", "type", "op") and value in (SITE, "event", "upsert", "delete"):
        return None
    if field == "format" and value == 1 and not isinstance(value, bool):
        return 2
    if field == "version" and _number(value) and value >= 2:
        return -1  # only the next version could apply
    if field == "issued_at" and _number(value):
        return "yesterday"
    return value


@st.composite
def hostile_payloads(draw):
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "flipped", "embedding"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":  # a signed body of arbitrary JSON (NaN literals included): validation must refuse it
        value = draw(json_values)
        return signed_raw(json.dumps(value if draw(st.booleans()) else {"type": "event", "v": value}).encode())
    if kind == "mutated":  # a valid event with one field replaced by something of another type or out of range
        field = draw(st.sampled_from(FIELDS))
        body = _mutated(field, _invalid(field, draw(json_values)), 2)
        try:
            return protocol.sign(KEY, body)
        except ValueError:  # NaN/inf cannot be canonical JSON; send it unsigned-raw instead
            return signed_raw(json.dumps(body).encode())
    if kind == "flipped":  # a genuine next event with signature or body bytes changed in transit
        payload = bytearray(GENUINE_NEXT)
        start = GENUINE_NEXT.index(b'"sig"')  # the key id before it is informational only
        for i in draw(st.lists(st.integers(start, len(payload) - 1), min_size=1, max_size=4, unique=True)):
            payload[i] ^= draw(st.integers(1, 255))
        return bytes(payload)
    # embeddings that are wrong: NaN/inf/huge/zero rows, wrong counts, junk base64
    count = draw(st.integers(0, 40))
    dim = draw(st.sampled_from([0, 1, 127, 128, 129, 512]))
    values = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e30]))
    arr = np.full((max(count, 1), 128), values, np.float32)
    data = base64.b64encode(arr.tobytes()).decode() if draw(st.booleans()) else draw(st.text(max_size=40))
    body = protocol.event_body(SITE, 2, "upsert", "pz", "zed", unit(1), SIG)
    body["embeddings"] = {"count": count, "dim": dim, "data": data}
    return protocol.sign(KEY, body)


@settings(max_examples=int(os.environ.get("EDGE_AGENT_FUZZ_EXAMPLES", "2000")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(payload=hostile_payloads(), kind=st.sampled_from(["event", "snapshot"]))
def test_fuzz_hostile_payloads_change_nothing(fuzz_applier, payload, kind):
    a, before = fuzz_applier
    outcomes = a.handle(kind, payload)  # must not raise
    assert all(o.result in ("rejected", "ignored") for o in outcomes), outcomes
    assert a.counters["apply_errors"] == 0
    assert (a.registry.version, a.registry.change_token()[1]) == before


@pytest.fixture(scope="module")
def fuzz_applier(tmp_path_factory):
    logging.getLogger("edge_agent.sync").disabled = True  # thousands of rejection lines slow the run
    registry = Registry(tmp_path_factory.mktemp("fuzz") / "registry.db")
    a = RegistryApplier(registry, SIG, KEY.public_key(), SITE)
    a.handle("event", upsert(1))
    yield a, (registry.version, registry.change_token()[1])
    assert registry.content_hash() == hash_people(registry.people())
    registry.close()
    logging.getLogger("edge_agent.sync").disabled = False


# -- config and keys ------------------------------------------------------------------------------
def test_mqtt_config_rejects_bad_values(tmp_path):
    ok = MqttConfig(admin_public_key=tmp_path / "k.pub", site="a-1", device_id="cam.1")
    assert ok.topic("registry", "events") == "edge-agent/a-1/registry/events"
    assert ok.effective_client_id == "edge-agent-a-1-cam.1"
    for bad in [{"topic_prefix": "a/#"}, {"site": "x/y"}, {"device_id": "+"}, {"hostt": "x"},
                {"tls_client_cert": "c.pem"}, {"password": "p"}, {"port": 0}]:
        with pytest.raises(ValidationError):
            MqttConfig(admin_public_key=tmp_path / "k.pub", **bad)


def test_keygen_private_key_mode_and_refuses_overwrite(tmp_path):
    private, public = keygen(tmp_path / "admin")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    key = protocol.load_private_key(private)
    assert protocol.key_id(key.public_key()) == protocol.key_id(protocol.load_public_key(public))
    from edge_agent.sync.admin import AdminError

    with pytest.raises(AdminError):
        keygen(tmp_path / "admin")
