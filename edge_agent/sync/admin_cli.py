"""``edge-admin``: the site's consent registry, signed and published to every camera.

    edge-admin keygen [--passphrase-file F]
    edge-admin enroll --name "Ada Lovelace" [--valid-from 2026-01-01] [--valid-until 2027-06-30] photo1.jpg photo2.jpg  [--replace | --append]
    edge-admin validity "Ada Lovelace" --valid-until 2027-12-31
    edge-admin remove "Ada Lovelace"
    edge-admin purge --person "Ada Lovelace"
    edge-admin audit [--person N] [--camera C] [--since T] [--format table|csv|json]
    edge-admin serve
    edge-admin publish-snapshot
    edge-admin devices

Connection settings come from ``--config`` (a site file like ``docs/edge-admin.example.yaml``,
or any YAML file with the agent's ``mqtt:`` block) and the options below, which override it.
The admin home (registry.db and the key pair) comes from one place: ``--home``, else
``$EDGE_ADMIN_HOME``, else the site file's ``home:``, else ``$XDG_DATA_HOME/edge-admin``
(``~/.local/share/edge-admin``). Options go before or after the subcommand. Photos are read,
embedded and forgotten: only embeddings are stored and sent.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import yaml
from pydantic import ValidationError

from edge_agent.sync.admin import PRIVATE_KEY, PUBLIC_KEY, Admin, AdminError, keygen
from edge_agent.config import MqttConfig


def utc_time(text: str, end_of_day: bool = False) -> Optional[float]:
    """ISO date or date-time (UTC unless an offset is given) -> UTC seconds; ``none`` -> None.
    A bare date means the start of that day, or with ``end_of_day`` the end of it (a consent
    "until 2027-06-30" includes June 30)."""
    if text.strip().lower() == "none":
        return None
    try:
        if len(text.strip()) == 10:
            day = datetime.date.fromisoformat(text.strip())
            start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)
            return (start + datetime.timedelta(days=1 if end_of_day else 0)).timestamp()
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (2027-06-30), a UTC time (2027-06-30T18:00Z) or 'none'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


KEEP = object()  # an end of the period the operator did not mention stays as it is


def _until(text: str) -> Optional[float]:
    return utc_time(text, end_of_day=True)


SITE_KEYS = {"home", "models", "mqtt"}


def default_home(env=os.environ) -> Path:
    """The admin home when none is given: the user's data directory, never the working directory."""
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "edge-admin"


def _options(p: argparse.ArgumentParser, top: bool) -> None:
    """The global options; on the subcommands they default to SUPPRESS so a value given before the
    subcommand is not reset by the subcommand's parser."""
    d = None if top else argparse.SUPPRESS
    p.add_argument("--home", type=Path, default=d, metavar="DIR",
                   help="admin data folder: registry.db and the key pair (default $EDGE_ADMIN_HOME, else the site file's "
                        "home:, else ~/.local/share/edge-admin)")
    p.add_argument("--config", type=Path, default=d, metavar="FILE",
                   help="site file (docs/edge-admin.example.yaml: home, models, mqtt) or any YAML with an mqtt: block")
    p.add_argument("--key", type=Path, default=d, help="private key file (default $CREDENTIALS_DIRECTORY/admin_ed25519.key when "
                   "the service manager provides it, else HOME/admin_ed25519.key)")
    p.add_argument("--passphrase-file", type=Path, default=d, help="file holding the private key's passphrase (default "
                   "$CREDENTIALS_DIRECTORY/admin-key-passphrase; or env EDGE_ADMIN_KEY_PASSPHRASE)")
    for opt, help_ in [("--host", "broker host"), ("--site", "site name"), ("--topic-prefix", "topic prefix"),
                       ("--user", "broker user"), ("--password", "broker password (or env EDGE_ADMIN_MQTT_PASSWORD)"),
                       ("--tls-ca-certs", "CA file"), ("--tls-client-cert", "client certificate"),
                       ("--tls-client-key", "client key")]:
        p.add_argument(opt, default=d, help=help_)
    p.add_argument("--port", type=int, default=d, help="broker port")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-admin", description="Manage the site's consent registry and sync it to the cameras.")
    _options(p, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _options(common, top=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    k = sub.add_parser("keygen", parents=[common], help="create the Ed25519 signing key pair (private key mode 0600)")
    k.add_argument("--force", action="store_true", help="replace an existing key (devices must get the new public key)")
    e = sub.add_parser("enroll", parents=[common], help="add a person from one or more photos (one face each); --replace or --append for a name that exists")
    e.add_argument("--name", required=True, help="the person's name")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true", help="the name exists: replace its templates")
    mode.add_argument("--append", action="store_true", help="the name exists: add these photos' templates to it")
    e.add_argument("--models", type=Path, help="model folder (default: the site file's models:, else env EDGE_AGENT_MODELS)")
    e.add_argument("--valid-from", type=utc_time, help="consent starts (UTC date or time; default: now)")
    e.add_argument("--valid-until", type=_until, help="consent ends (a date includes that whole day, UTC; default: no end)")
    e.add_argument("photos", nargs="+", type=Path, help="photos of the person, exactly one face in each")
    v = sub.add_parser("validity", parents=[common], help="change a person's consent period (a signed event; 'none' clears an end)")
    v.add_argument("name", help="the person's name or id")
    v.add_argument("--valid-from", type=utc_time, default=KEEP, help="new start (default: unchanged)")
    v.add_argument("--valid-until", type=_until, default=KEEP, help="new end (default: unchanged)")
    r = sub.add_parser("remove", parents=[common], help="withdraw a person's consent (by name or id); audit rows stay")
    r.add_argument("name", help="the person's name or id")
    pu = sub.add_parser("purge", parents=[common], help="delete a person's audit rows here and on every device (signed)")
    pu.add_argument("--person", required=True, help="name (also after a withdrawal) or person id")
    a = sub.add_parser("audit", parents=[common], help="where and when people were shown (intervals from every device)")
    a.add_argument("--person", help="name (also after a withdrawal) or person id")
    a.add_argument("--camera")
    a.add_argument("--device")
    a.add_argument("--since", type=utc_time, help="intervals that ended at or after this UTC date/time")
    a.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sv = sub.add_parser("serve", parents=[common], help="run the admin service: heartbeats, scheduled and requested snapshots, audit intake")
    sv.add_argument("--heartbeat-s", type=float, default=60.0, help="signed heartbeat period (devices' max_registry_age counts from it)")
    sv.add_argument("--snapshot-s", type=float, default=3600.0, help="republish the full snapshot this often")
    sv.add_argument("--audit-retention-days", type=float, default=365.0, help="delete audit intervals older than this")
    sub.add_parser("publish-snapshot", parents=[common], help="(re)publish the signed retained snapshot")
    d = sub.add_parser("devices", parents=[common], help="list devices from their retained state")
    d.add_argument("--wait", type=float, default=1.0, help="seconds to collect states")
    return p


def _site_file(args) -> dict:
    """The --config file: a site file (home, models, mqtt) or an agent config (its mqtt: block)."""
    if not args.config:
        return {}
    try:
        loaded = yaml.safe_load(args.config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AdminError(f"{args.config} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise AdminError(f"{args.config} must hold a mapping (home, models, mqtt)")
    if "mqtt" not in loaded:
        return {"mqtt": loaded}
    return loaded


def _home(args, site: dict) -> Path:
    if args.home:
        return args.home
    if os.environ.get("EDGE_ADMIN_HOME"):
        return Path(os.environ["EDGE_ADMIN_HOME"])
    if site.get("home"):
        return Path(site["home"]).expanduser()
    return default_home()


def _config(args, site: dict, home: Path) -> MqttConfig:
    raw = dict(site.get("mqtt") or {})
    overrides = {"host": args.host, "port": args.port, "site": args.site, "topic_prefix": args.topic_prefix,
                 "user": args.user, "password": args.password or os.environ.get("EDGE_ADMIN_MQTT_PASSWORD"),
                 "tls_ca_certs": args.tls_ca_certs, "tls_client_cert": args.tls_client_cert, "tls_client_key": args.tls_client_key}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw.setdefault("admin_public_key", str(home / PUBLIC_KEY))
    raw.setdefault("device_id", "admin")
    return MqttConfig.model_validate(raw)


def embed_photos(models: Path, photos: list[Path], max_templates: int):
    """Camera-scale templates (``edge_agent.enroll``) with the devices' detector and embedder, and
    the embedder's signature."""
    from edge_agent.config import DetectorConfig, EmbedderConfig, RecognitionConfig
    from edge_agent.enroll import EnrolError, embed_photos as enrol
    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.files import model_signature, resolve
    from edge_agent.models.yunet import YuNet

    det_cfg, emb_cfg, rec = DetectorConfig(), EmbedderConfig(), RecognitionConfig()
    detector = YuNet(resolve(models, det_cfg.file), det_cfg.score_threshold, det_cfg.nms_threshold, det_cfg.max_side)
    embedder_path = resolve(models, emb_cfg.file)
    embedder = ArcFaceEmbedder(embedder_path)
    try:
        enrolment = enrol(photos, detector, embedder, rec.min_face_px, rec.threshold, rec.max_null_similarity, max_templates)
    except EnrolError as exc:
        raise AdminError(str(exc)) from None
    return enrolment, model_signature(embedder_path)


def _enroll(admin: Admin, config: MqttConfig, site: dict, args) -> None:
    from edge_agent.config import RecognitionConfig
    from edge_agent.enroll import EnrolError, merge_templates

    models = args.models or (Path(site["models"]) if site.get("models") else None) or \
        (Path(os.environ["EDGE_AGENT_MODELS"]) if os.environ.get("EDGE_AGENT_MODELS") else None)
    if models is None:
        raise AdminError("give the model folder with --models, the site file's models: or EDGE_AGENT_MODELS")
    existing = admin.registry.find(args.name)
    if existing is not None and not (args.replace or args.append):
        raise AdminError(f"{args.name!r} is already enrolled ({len(existing.embeddings)} templates): "
                         "pass --replace to replace them or --append to add these photos")
    admin.key()  # a missing key or wrong passphrase before minutes of embedding
    enrolment, model_sig = embed_photos(models, args.photos, config.max_embeddings_per_person)
    for warning in enrolment.warnings:
        print(f"edge-admin: warning: {warning}", file=sys.stderr)
    templates = enrolment.templates
    if existing is not None and args.append:
        if existing.model_sig != model_sig:
            raise AdminError(f"{args.name!r} was enrolled with another model ({existing.model_sig}): use --replace")
        try:
            templates = merge_templates(existing.embeddings, enrolment, RecognitionConfig().threshold, config.max_embeddings_per_person)
        except EnrolError as exc:
            raise AdminError(str(exc)) from None
        # photos appended to a consent keep its period unless the operator gives a new one
        if args.valid_from is None and args.valid_until is None:
            args.valid_from, args.valid_until = existing.valid_from, existing.valid_until
    body = admin.enroll(args.name, templates, model_sig, existing_ok=existing is not None,
                        valid_from=args.valid_from, valid_until=args.valid_until)
    print(f"enrolled {args.name!r}: {len(enrolment.templates)} templates from {len(args.photos)} photo(s), {len(templates)} stored "
          f"(model {model_sig}{_period(args)}): registry version {body['version']}")


def _passphrase(args) -> Optional[bytes]:
    """From --passphrase-file, the service manager's credential, or EDGE_ADMIN_KEY_PASSPHRASE."""
    path = args.passphrase_file
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if path is None and creds and (Path(creds) / "admin-key-passphrase").is_file():
        path = Path(creds) / "admin-key-passphrase"
    if path is not None:
        try:
            text = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise AdminError(f"cannot read the passphrase file {path} ({exc.strerror or exc})") from None
        if not text:
            raise AdminError(f"the passphrase file {path} is empty")
        return text
    value = os.environ.get("EDGE_ADMIN_KEY_PASSPHRASE")
    return value.encode() if value else None


def _key_path(args) -> Optional[Path]:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if args.key is None and creds and (Path(creds) / PRIVATE_KEY).is_file():
        return Path(creds) / PRIVATE_KEY
    return args.key


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        site = _site_file(args)
        home = _home(args, site)
        if args.command == "keygen":
            passphrase = _passphrase(args)
            private, public = keygen(home, args.force, passphrase)
            print(f"private key: {private} (mode 0600, {'passphrase-protected' if passphrase else 'NO passphrase'}; "
                  f"keep it on the admin only)\npublic key:  {public} (copy to every device; mqtt.admin_public_key)")
            return 0
        key = _key_path(args) or home / PRIVATE_KEY
        if args.command in ("enroll", "validity", "remove", "purge", "serve", "publish-snapshot") and not key.is_file():
            raise AdminError(f"no admin private key at {key}: run `edge-admin keygen` first (admin home {home}; "
                             "--home, EDGE_ADMIN_HOME or the site file's home: choose another)")
        if not home.is_dir():
            raise AdminError(f"no admin home at {home}: run `edge-admin keygen` first")
        config = _config(args, site, home)
        admin = Admin(home, config, key, _passphrase(args))
        try:
            if args.command == "enroll":
                _enroll(admin, config, site, args)
            elif args.command == "validity":
                person = admin.registry.find(args.name) or admin.registry.get(args.name)
                if person is None:
                    raise AdminError(f"no person named {args.name!r} in the admin registry")
                if args.valid_from is KEEP:
                    args.valid_from = person.valid_from
                if args.valid_until is KEEP:
                    args.valid_until = person.valid_until
                body = admin.set_validity(args.name, args.valid_from, args.valid_until)
                print(f"consent period of {args.name!r}{_period(args) or ': no period'}: registry version {body['version']}")
            elif args.command == "purge":
                body, removed = admin.purge(args.person)
                print(f"purged the audit rows of {args.person!r} ({removed} here; devices follow): registry version {body['version']}")
            elif args.command == "audit":
                ids = admin.person_ids(args.person) if args.person else None
                rows = admin.audit.query(ids, args.camera, args.since, args.device)
                sys.stdout.write(format_audit(rows, args.format))
            elif args.command == "serve":
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                signal.signal(signal.SIGINT, lambda *_: stop.set())
                logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
                print(f"edge-admin serve: site {config.site} on {config.host}:{config.port}", flush=True)
                admin.serve(stop, args.heartbeat_s, args.snapshot_s, args.audit_retention_days)
            elif args.command == "remove":
                body = admin.remove(args.name)
                print(f"removed {args.name!r}: registry version {body['version']}")
            elif args.command == "publish-snapshot":
                body = admin.publish_snapshot()
                print(f"published snapshot version {body['version']}: {body['count']} people, hash {body['hash'][:16]}")
            elif args.command == "devices":
                _print_devices(admin.devices(args.wait), admin.registry.version, admin.registry.content_hash())
        finally:
            admin.close()
    except (AdminError, ValidationError, OSError, ValueError) as exc:
        print(f"edge-admin: {exc}", file=sys.stderr)
        return 1
    return 0


def _iso(t: Optional[float]) -> str:
    return "" if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _period(args) -> str:
    parts = [f"from {_iso(args.valid_from)}" if args.valid_from is not None else "",
             f"until {_iso(args.valid_until)}" if args.valid_until is not None else ""]
    text = " ".join(p for p in parts if p)
    return f", consent {text}" if text else ""


AUDIT_COLUMNS = ("device_id", "camera", "person_id", "name", "first_seen", "last_seen", "frames", "mean_score")


def format_audit(rows: list[dict], fmt: str) -> str:
    """Times as UTC ISO 8601 in table and CSV, as UTC seconds in JSON (exact)."""
    if fmt == "json":
        return json.dumps([{k: r[k] for k in AUDIT_COLUMNS + ("id",)} for r in rows], indent=1) + "\n"
    text = [[r["device_id"], r["camera"], r["person_id"], r["name"] or "", _iso(r["first_seen"]), _iso(r["last_seen"]),
             str(r["frames"]), f"{r['mean_score']:.3f}"] for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(AUDIT_COLUMNS)
        writer.writerows(text)
        return out.getvalue()
    if not rows:
        return "no audit intervals match\n"
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(AUDIT_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(AUDIT_COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in text]
    return "\n".join(lines) + "\n"


def _print_devices(devices: list[dict], version: int, content_hash: str) -> None:
    print(f"admin registry: version {version}, hash {content_hash[:16]}")
    if not devices:
        print("no devices have reported state")
        return
    cols = ["device", "status", "version", "hash", "model_sig", "people", "in sync", "last seen"]
    rows = []
    for d in devices:
        ts = d.get("ts")
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z" if isinstance(ts, (int, float)) else "?"
        h = d.get("hash") or ""
        rows.append([str(d.get("device_id")), str(d.get("status", "?")), str(d.get("version", "-")), h[:16] or "-",
                     str(d.get("model_sig", "-")), str(d.get("count", "-")),
                     "yes" if d.get("version") == version and h == content_hash else "no", seen])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    raise SystemExit(main())
