"""Registry-sync wire format: signed, versioned messages that carry embeddings, never photos.

A message on the wire is two parts separated by the first newline::

    {"alg":"Ed25519","kid":"<16 hex>","sig":"<base64 signature>"}\\n<body>

``body`` is canonical JSON (sorted keys, no spaces, UTF-8) and the signature covers exactly
those bytes, so a device verifies *before* it parses anything large and never has to
re-serialise JSON to check a signature. The body names its type and site, so a signed event
cannot be replayed as a snapshot or on another site's topics. Embeddings travel as base64 of
little-endian float32 rows (exact, compact), with their count and dimension.

Every check raises :class:`Rejected` with a *kind* (``size``, ``signature``, ``payload``,
``model``) used for the counters and a short detail that never quotes the payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.registry import Person, hash_people

FORMAT = 1
EMBEDDING_DIM = 128
MAX_HEADER_BYTES = 512
MAX_NAME_CHARS = 200
MAX_SIG_CHARS = 200
_PERSON_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Rejected(Exception):
    """A message that must change nothing. ``kind`` picks the counter; ``detail`` is content-free."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 1 << 20
    max_embeddings_per_person: int = 32
    max_people: int = 100_000
    dim: int = EMBEDDING_DIM


@dataclass
class Event:
    version: int
    op: str  # "upsert" | "delete" | "validity" (a new consent period) | "purge" (drop the person's audit rows)
    person_id: str
    name: Optional[str]
    embeddings: Optional[np.ndarray]
    model_sig: Optional[str]
    issued_at: float
    valid_from: Optional[float] = None
    valid_until: Optional[float] = None


@dataclass
class Heartbeat:
    """The admin's signed "the registry is at ``version`` as of ``issued_at``": freshness without 8 MB."""

    version: int
    issued_at: float


@dataclass
class Snapshot:
    version: int
    model_sig: str
    content_hash: str
    people: list[Person]
    issued_at: float
    purges: Optional[dict[str, float]] = None  # person_id -> issued_at of the purge of their audit rows


Message = Union[Event, Snapshot, Heartbeat]
OPS = ("upsert", "delete", "validity", "purge")


# -- keys -------------------------------------------------------------------------------------
def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_key_pem_encrypted(key: Ed25519PrivateKey, passphrase: bytes) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase))


class KeyFileError(ValueError):
    """The admin key cannot be used as given (missing, protected, wrong passphrase): worded for the operator."""


def load_private_key(path: Path, passphrase: Optional[bytes] = None) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"no admin private key at {path}: run `edge-admin keygen` or give --key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read the admin private key {path} ({exc.strerror or exc})") from None
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise KeyFileError(f"the admin private key {path} is protected by a passphrase: give it with --passphrase-file "
                        "or EDGE_ADMIN_KEY_PASSPHRASE")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise KeyFileError(f"wrong passphrase for the admin private key {path}") from None
        raise KeyFileError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- encoding -------------------------------------------------------------------------------------
def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_embeddings(vectors: np.ndarray) -> dict:
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    return {"count": int(vectors.shape[0]), "dim": int(vectors.shape[1]), "data": base64.b64encode(vectors.tobytes()).decode("ascii")}


def sign(key: Ed25519PrivateKey, body: dict) -> bytes:
    data = canonical_json(body)
    header = {"alg": "Ed25519", "kid": key_id(key.public_key()), "sig": base64.b64encode(key.sign(data)).decode("ascii")}
    return canonical_json(header) + b"\n" + data


def _period(valid_from: Optional[float], valid_until: Optional[float]) -> dict:
    """Only the ends that are set travel: a person without a period looks as before."""
    period = {}
    if valid_from is not None:
        period["valid_from"] = float(valid_from)
    if valid_until is not None:
        period["valid_until"] = float(valid_until)
    return period


def event_body(site: str, version: int, op: str, person_id: str, name: Optional[str] = None,
               embeddings: Optional[np.ndarray] = None, model_sig: Optional[str] = None,
               valid_from: Optional[float] = None, valid_until: Optional[float] = None,
               issued_at: Optional[float] = None) -> dict:
    body = {"format": FORMAT, "type": "event", "site": site, "version": int(version), "op": op,
            "person_id": person_id, "issued_at": time.time() if issued_at is None else float(issued_at)}
    if op == "upsert":
        body.update(name=name, model_sig=model_sig, embeddings=encode_embeddings(embeddings))
    if op in ("upsert", "validity"):
        body.update(_period(valid_from, valid_until))
    return body


def heartbeat_body(site: str, version: int, issued_at: Optional[float] = None) -> dict:
    return {"format": FORMAT, "type": "heartbeat", "site": site, "version": int(version),
            "issued_at": time.time() if issued_at is None else float(issued_at)}


def snapshot_body(site: str, version: int, model_sig: str, people: list[Person],
                  purges: Optional[dict[str, float]] = None, issued_at: Optional[float] = None) -> dict:
    if any(p.model_sig != model_sig for p in people):
        raise ValueError("a snapshot holds embeddings of one model only")
    body = {
        "format": FORMAT, "type": "snapshot", "site": site, "version": int(version), "model_sig": model_sig,
        "issued_at": time.time() if issued_at is None else float(issued_at), "hash": hash_people(people),
        "count": len(people),
        "people": [{"person_id": p.person_id, "name": p.name, "embeddings": encode_embeddings(p.embeddings),
                    **_period(p.valid_from, p.valid_until)} for p in people],
    }
    if purges:
        body["purges"] = {pid: float(t) for pid, t in sorted(purges.items())}
    return body


# -- verification -------------------------------------------------------------------------------
def verify(payload: bytes, public_key: Ed25519PublicKey, max_bytes: int) -> dict:
    """Size, then signature over the raw body bytes, then JSON: the body as a dict."""
    if not isinstance(payload, (bytes, bytearray)):
        raise Rejected("payload", "payload is not bytes")
    if len(payload) > max_bytes:
        raise Rejected("size", f"{len(payload)} bytes exceeds the limit of {max_bytes}")
    newline = payload.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if newline < 0:
        raise Rejected("signature", "no signature header")
    try:
        header = json.loads(bytes(payload[:newline]))
        if not isinstance(header, dict) or header.get("alg") != "Ed25519" or not isinstance(header.get("sig"), str):
            raise ValueError
        signature = base64.b64decode(header["sig"], validate=True)
        if len(signature) != 64 or base64.b64encode(signature).decode("ascii") != header["sig"]:
            raise ValueError  # one canonical spelling: no malleable variants of a signed message
    except (ValueError, UnicodeDecodeError, binascii.Error, RecursionError):
        raise Rejected("signature", "malformed signature header") from None
    data = bytes(payload[newline + 1:])
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise Rejected("signature", "signature does not verify with the admin key") from None
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Rejected("payload", "body is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise Rejected("payload", "body is not a JSON object")
    return body


def _no_constant(name: str):
    raise ValueError("NaN/Infinity are not JSON")


def _field(body: dict, key: str, kind, required: bool = True):
    if key not in body:
        if required:
            raise Rejected("payload", f"missing field {key!r}")
        return None
    value = body[key]
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        raise Rejected("payload", f"field {key!r} has the wrong type")
    return value


def _version(body: dict) -> int:
    version = _field(body, "version", int)
    if not 1 <= version < 2**62:
        raise Rejected("payload", "version out of range")
    return version


def _issued_at(body: dict) -> float:
    value = _field(body, "issued_at", (int, float))
    if not math.isfinite(value):
        raise Rejected("payload", "issued_at is not finite")
    return float(value)


def _time(body: dict, key: str) -> Optional[float]:
    value = _field(body, key, (int, float), required=False)
    if value is not None and not (math.isfinite(value) and 0 <= value < 1e11):
        raise Rejected("payload", f"{key} is not a time")
    return None if value is None else float(value)


def _validity(body: dict) -> tuple[Optional[float], Optional[float]]:
    valid_from, valid_until = _time(body, "valid_from"), _time(body, "valid_until")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise Rejected("payload", "valid_until must be after valid_from")
    return valid_from, valid_until


def _person_id(value) -> str:
    if not isinstance(value, str) or not _PERSON_ID.match(value):
        raise Rejected("payload", "person_id must be 1-64 letters, digits, '-' or '_'")
    return value


def _name(value) -> str:
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS or value != value.strip()
            or _CONTROL.search(value)):
        raise Rejected("payload", f"name must be 1-{MAX_NAME_CHARS} printable characters without outer spaces")
    return value


def _model_sig(value) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_SIG_CHARS or _CONTROL.search(value):
        raise Rejected("payload", "model_sig must be a short string")
    return value


def _embeddings(value, limits: Limits) -> np.ndarray:
    if not isinstance(value, dict) or set(value) != {"count", "dim", "data"}:
        raise Rejected("payload", "embeddings must be {count, dim, data}")
    count, dim, data = value["count"], value["dim"], value["data"]
    if type(count) is not int or type(dim) is not int or not isinstance(data, str):
        raise Rejected("payload", "embeddings fields have the wrong type")
    if dim != limits.dim:
        raise Rejected("payload", f"embedding dimension {dim} is not {limits.dim}")
    if not 1 <= count <= limits.max_embeddings_per_person:
        raise Rejected("payload", f"embedding count must be 1-{limits.max_embeddings_per_person}")
    if len(data) != 4 * ((count * dim * 4 + 2) // 3):
        raise Rejected("payload", "embedding data has the wrong length")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("payload", "embedding data is not base64") from None
    if len(raw) != count * dim * 4:
        raise Rejected("payload", "embedding data has the wrong length")
    vectors = np.frombuffer(raw, dtype="<f4").reshape(count, dim).astype(np.float32)
    if not np.all(np.isfinite(vectors)):
        raise Rejected("payload", "embedding holds NaN or infinite values")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)  # float64: huge values must not overflow
    if np.any(np.abs(norms - 1.0) > 1e-3):
        raise Rejected("payload", "embedding rows are not unit vectors")
    return vectors


def _common(body: dict, site: str, kind: str, allowed: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise Rejected("payload", f"{len(extra)} unknown field(s)")
    if _field(body, "format", int) != FORMAT:
        raise Rejected("payload", "unsupported message format")
    if _field(body, "type", str) != kind:
        raise Rejected("payload", f"not a {kind} message")
    if _field(body, "site", str) != site:
        raise Rejected("payload", "message is for another site")


_EVENT_KEYS = {"format", "type", "site", "version", "op", "person_id", "name", "model_sig", "embeddings", "issued_at",
               "valid_from", "valid_until"}
_SNAPSHOT_KEYS = {"format", "type", "site", "version", "model_sig", "issued_at", "hash", "count", "people", "purges"}
_HEARTBEAT_KEYS = {"format", "type", "site", "version", "issued_at"}
_PERSON_KEYS = {"person_id", "name", "embeddings"}
_PERIOD_KEYS = {"valid_from", "valid_until"}


def parse_event(body: dict, site: str, limits: Limits) -> Event:
    _common(body, site, "event", _EVENT_KEYS)
    version = _version(body)
    op = _field(body, "op", str)
    person_id = _person_id(body.get("person_id"))
    issued_at = _issued_at(body)
    if op not in OPS:
        raise Rejected("payload", f"op must be one of {', '.join(OPS)}")
    if op != "upsert" and {"name", "embeddings", "model_sig"} & set(body):
        raise Rejected("payload", f"a {op} carries no name, model_sig or embeddings")
    if op in ("delete", "purge"):
        if _PERIOD_KEYS & set(body):
            raise Rejected("payload", f"a {op} carries no validity period")
        return Event(version, op, person_id, None, None, None, issued_at)
    valid_from, valid_until = _validity(body)
    if op == "validity":
        return Event(version, op, person_id, None, None, None, issued_at, valid_from, valid_until)
    name = _name(body.get("name"))
    model_sig = _model_sig(body.get("model_sig"))
    embeddings = _embeddings(body.get("embeddings"), limits)
    return Event(version, op, person_id, name, embeddings, model_sig, issued_at, valid_from, valid_until)


def parse_heartbeat(body: dict, site: str) -> Heartbeat:
    _common(body, site, "heartbeat", _HEARTBEAT_KEYS)
    return Heartbeat(_version(body), _issued_at(body))


def parse_snapshot(body: dict, site: str, limits: Limits) -> Snapshot:
    _common(body, site, "snapshot", _SNAPSHOT_KEYS)
    version = _version(body)
    model_sig = _model_sig(body.get("model_sig"))
    issued_at = _issued_at(body)
    claimed = _field(body, "hash", str)
    if not re.fullmatch(r"[0-9a-f]{64}", claimed):
        raise Rejected("payload", "hash must be 64 lowercase hex digits")
    count = _field(body, "count", int)
    rows = _field(body, "people", list)
    if count != len(rows) or count > limits.max_people:
        raise Rejected("payload", f"people count does not match or exceeds {limits.max_people}")
    people: list[Person] = []
    ids: set[str] = set()
    names: set[str] = set()
    for row in rows:
        if not isinstance(row, dict) or not _PERSON_KEYS <= set(row) or set(row) - _PERSON_KEYS - _PERIOD_KEYS:
            raise Rejected("payload", "a person must be {person_id, name, embeddings[, valid_from, valid_until]}")
        person = Person(_person_id(row["person_id"]), _name(row["name"]), _embeddings(row["embeddings"], limits), model_sig,
                        *_validity(row))
        if person.person_id in ids or person.name in names:
            raise Rejected("payload", "duplicate person id or name")
        ids.add(person.person_id)
        names.add(person.name)
        people.append(person)
    if hash_people(people) != claimed:
        raise Rejected("payload", "content hash does not match the people listed")
    raw_purges = _field(body, "purges", dict, required=False) or {}
    if len(raw_purges) > limits.max_people:
        raise Rejected("payload", "too many purges")
    purges = {_person_id(pid): _time({"t": t}, "t") for pid, t in raw_purges.items()}
    if any(t is None for t in purges.values()):
        raise Rejected("payload", "a purge needs a time")
    return Snapshot(version, model_sig, claimed, people, issued_at, purges)
