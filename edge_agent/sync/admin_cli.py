"""``edge-admin``: the site's consent registry, signed and published to every camera.

    edge-admin keygen
    edge-admin enroll --name "Ada Lovelace" photo1.jpg photo2.jpg   [--replace | --append]
    edge-admin remove "Ada Lovelace"
    edge-admin publish-snapshot
    edge-admin devices

Connection settings come from ``--config`` (a YAML file with the agent's ``mqtt:`` block) and
the options below, which override it. Photos are read, embedded and forgotten: only
embeddings are stored and sent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

import yaml
from pydantic import ValidationError

from edge_agent.sync.admin import PUBLIC_KEY, Admin, AdminError, keygen
from edge_agent.config import MqttConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-admin", description="Manage the site's consent registry and sync it to the cameras.")
    p.add_argument("--home", type=Path, default=Path(os.environ.get("EDGE_ADMIN_HOME", "edge-admin")),
                   help="admin data folder: registry.db and the key pair (env EDGE_ADMIN_HOME; default ./edge-admin)")
    p.add_argument("--config", type=Path, help="YAML file with an mqtt: block (host, port, site, TLS ...)")
    p.add_argument("--key", type=Path, help="private key file (default HOME/admin_ed25519.key)")
    for opt, help_ in [("--host", "broker host"), ("--site", "site name"), ("--topic-prefix", "topic prefix"),
                       ("--user", "broker user"), ("--password", "broker password (or env EDGE_ADMIN_MQTT_PASSWORD)"),
                       ("--tls-ca-certs", "CA file"), ("--tls-client-cert", "client certificate"),
                       ("--tls-client-key", "client key")]:
        p.add_argument(opt, help=help_)
    p.add_argument("--port", type=int)
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="create the Ed25519 signing key pair (private key mode 0600)")
    k.add_argument("--force", action="store_true", help="replace an existing key (devices must get the new public key)")
    e = sub.add_parser("enroll", help="add a person from one or more photos (one face each)")
    e.add_argument("--name", required=True)
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true", help="the name exists: replace its templates")
    mode.add_argument("--append", action="store_true", help="the name exists: add these photos' templates to it")
    e.add_argument("--models", type=Path, help="model folder (default env EDGE_AGENT_MODELS)")
    e.add_argument("photos", nargs="+", type=Path)
    r = sub.add_parser("remove", help="remove a person by name or id")
    r.add_argument("name")
    sub.add_parser("publish-snapshot", help="(re)publish the signed retained snapshot")
    d = sub.add_parser("devices", help="list devices from their retained state")
    d.add_argument("--wait", type=float, default=1.0, help="seconds to collect states")
    return p


def _config(args) -> MqttConfig:
    raw: dict = {}
    if args.config:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        raw = dict(loaded.get("mqtt", loaded))
    overrides = {"host": args.host, "port": args.port, "site": args.site, "topic_prefix": args.topic_prefix,
                 "user": args.user, "password": args.password or os.environ.get("EDGE_ADMIN_MQTT_PASSWORD"),
                 "tls_ca_certs": args.tls_ca_certs, "tls_client_cert": args.tls_client_cert, "tls_client_key": args.tls_client_key}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw.setdefault("admin_public_key", str(args.home / PUBLIC_KEY))
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


def _enroll(admin: Admin, config: MqttConfig, args) -> None:
    from edge_agent.config import RecognitionConfig
    from edge_agent.enroll import EnrolError, merge_templates

    models = args.models or (Path(os.environ["EDGE_AGENT_MODELS"]) if os.environ.get("EDGE_AGENT_MODELS") else None)
    if models is None:
        raise AdminError("give the model folder with --models or EDGE_AGENT_MODELS")
    existing = admin.registry.find(args.name)
    if existing is not None and not (args.replace or args.append):
        raise AdminError(f"{args.name!r} is already enrolled ({len(existing.embeddings)} templates): "
                         "pass --replace to replace them or --append to add these photos")
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
    body = admin.enroll(args.name, templates, model_sig, existing_ok=existing is not None)
    print(f"enrolled {args.name!r}: {len(enrolment.templates)} templates from {len(args.photos)} photo(s), {len(templates)} stored "
          f"(model {model_sig}): registry version {body['version']}")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            private, public = keygen(args.home, args.force)
            print(f"private key: {private} (mode 0600, keep it on the admin only)\npublic key:  {public} "
                  "(copy to every device; mqtt.admin_public_key)")
            return 0
        config = _config(args)
        admin = Admin(args.home, config, args.key)
        try:
            if args.command == "enroll":
                _enroll(admin, config, args)
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
