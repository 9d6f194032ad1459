"""``edge-admin``: the site's consent registry, signed and published to every camera.

    edge-admin keygen
    edge-admin enroll --name "Ada Lovelace" photo1.jpg photo2.jpg
    edge-admin remove "Ada Lovelace"
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
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from pydantic import ValidationError

from edge_agent.sync.admin import PRIVATE_KEY, PUBLIC_KEY, Admin, AdminError, keygen
from edge_agent.config import MqttConfig


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
    p.add_argument("--key", type=Path, default=d, help="private key file (default HOME/admin_ed25519.key)")
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
    e = sub.add_parser("enroll", parents=[common], help="add or replace a person from one or more photos (one face each)")
    e.add_argument("--name", required=True, help="the person's name")
    e.add_argument("--models", type=Path, help="model folder (default: the site file's models:, else env EDGE_AGENT_MODELS)")
    e.add_argument("photos", nargs="+", type=Path, help="photos of the person, exactly one face in each")
    r = sub.add_parser("remove", parents=[common], help="remove a person by name or id")
    r.add_argument("name", help="the person's name or id")
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


def embed_photos(models: Path, photos: list[Path]) -> tuple[np.ndarray, str]:
    """Embeddings (one per photo, exactly one face each) with the devices' embedder, and its signature."""
    import cv2

    from edge_agent.config import DetectorConfig, EmbedderConfig
    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.files import model_signature, resolve
    from edge_agent.models.yunet import YuNet

    det_cfg, emb_cfg = DetectorConfig(), EmbedderConfig()
    detector = YuNet(resolve(models, det_cfg.file), det_cfg.score_threshold, det_cfg.nms_threshold, det_cfg.max_side)
    embedder_path = resolve(models, emb_cfg.file)
    embedder = ArcFaceEmbedder(embedder_path)
    rows = []
    for photo in photos:
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if image is None:
            raise AdminError(f"{photo}: not a readable image")
        faces = detector.detect(image)
        if len(faces) != 1:
            raise AdminError(f"{photo}: found {len(faces)} faces; use photos with exactly one face")
        rows.append(embedder.embed(image, faces)[0])
        del image
    return np.stack(rows).astype(np.float32), model_signature(embedder_path)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        site = _site_file(args)
        home = _home(args, site)
        if args.command == "keygen":
            private, public = keygen(home, args.force)
            print(f"private key: {private} (mode 0600, keep it on the admin only)\npublic key:  {public} "
                  "(copy to every device; mqtt.admin_public_key)")
            return 0
        key = args.key or home / PRIVATE_KEY
        if args.command in ("enroll", "remove", "publish-snapshot") and not key.is_file():
            raise AdminError(f"no admin key at {key}: run `edge-admin keygen` first (admin home {home}; "
                             "--home, EDGE_ADMIN_HOME or the site file's home: choose another)")
        if not home.is_dir():
            raise AdminError(f"no admin home at {home}: run `edge-admin keygen` first")
        config = _config(args, site, home)
        admin = Admin(home, config, key)
        try:
            if args.command == "enroll":
                models = args.models or (Path(site["models"]) if site.get("models") else None) or \
                    (Path(os.environ["EDGE_AGENT_MODELS"]) if os.environ.get("EDGE_AGENT_MODELS") else None)
                if models is None:
                    raise AdminError("give the model folder with --models, the site file's models: or EDGE_AGENT_MODELS")
                embeddings, model_sig = embed_photos(models, args.photos)
                body = admin.enroll(args.name, embeddings, model_sig)
                print(f"enrolled {args.name!r} ({len(embeddings)} embedding(s), model {model_sig}): registry version {body['version']}")
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
