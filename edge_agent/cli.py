"""``edge-agent``: run the service, process files offline, manage the local registry."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from edge_agent.config import CameraConfig, Config, ConfigError, load_config
from edge_agent.enroll import EnrolError, embed_photos, merge_templates
from edge_agent.models.files import ModelFileError
from edge_agent.registry import Registry, RegistryError
from edge_agent.sdnotify import Notifier, Watchdog

log = logging.getLogger("edge_agent")


class UsageError(Exception):
    """A command that cannot run as given."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from edge_agent.api import create_app
    from edge_agent.service import Agent

    if args.source is not None:
        config.cameras = {args.camera: CameraConfig(source=args.source)}
    if args.host:
        config.api.host = args.host
    if args.port is not None:
        config.api.port = args.port
    if not config.cameras:
        raise UsageError("no camera configured: pass --source PATH|URL|INDEX or add cameras: to the config")
    token = config.api.token
    generated = not token
    if generated:
        token = secrets.token_urlsafe(24)
        print("No API token configured (api.token or EDGE_AGENT_TOKEN): generated one for this run.", file=sys.stderr)
    agent = Agent(config)
    app = create_app(agent, token)
    server = uvicorn.Server(uvicorn.Config(app, host=config.api.host, port=config.api.port, log_level="warning", access_log=False))
    notifier = Notifier()
    watchdog = Watchdog(notifier, None, agent.alive)
    agent.start()

    def announce_ready() -> None:
        while not agent.running() or not server.started:
            time.sleep(0.1)
        notifier.ready(f"filtering {len(agent.cameras)} camera(s)")
        watchdog.start()

    threading.Thread(target=announce_ready, name="sd-ready", daemon=True).start()
    host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::") else config.api.host
    # A configured token is a secret of the deployment: it never goes to stdout (the journal).
    fragment = f"#token={token}" if generated else ""
    print(f"edge-agent: live anonymized view at http://{host}:{config.api.port}/{fragment}", flush=True)
    try:
        server.run()
    finally:
        notifier.stopping()
        watchdog.stop()
        agent.stop()
    return 0


def cmd_process(config: Config, args: argparse.Namespace) -> int:
    from edge_agent.process import process_file
    from edge_agent.service import Models

    models = Models(config)
    result = process_file(models, Path(args.input), Path(args.output), progress=not args.quiet, max_frames=args.max_frames)
    summary = {"input": args.input, "output": args.output, "frames": result.frames, "seconds": round(result.seconds, 3), "fps": round(result.fps, 2), **result.stats}
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(summary, indent=2))
    if not args.quiet:
        lat = result.stats.get("latency_ms", {})
        print(
            f"{result.frames} frames in {result.seconds:.1f}s ({result.fps:.1f} fps); faces seen {result.stats['faces_seen']}, "
            f"shown {result.stats['faces_shown']}, anonymized {result.stats['faces_anonymized']}, "
            f"frames redacted {result.stats['frames_redacted']}; latency ms "
            + ", ".join(f"{k} {v:.1f}" for k, v in lat.items())
        )
    return 0


def cmd_registry(config: Config, args: argparse.Namespace) -> int:
    registry = Registry(config.registry_path)
    try:
        if args.registry_cmd == "add":
            _registry_add(config, registry, args)
        elif args.registry_cmd == "list":
            people = registry.people()
            for person in people:
                print(f"{person.name}\t{len(person.embeddings)} template(s)\t{person.model_sig}")
            print(f"{len(people)} people, version {registry.version}", file=sys.stderr)
        elif args.registry_cmd == "remove":
            if not registry.remove_person(args.name):
                raise UsageError(f"no registered person named {args.name!r}")
            print(f"removed {args.name!r}; {registry.count()} people left")
    finally:
        registry.close()
    return 0


def max_templates(config: Config) -> int:
    """Templates per person: what a sync payload may carry (``mqtt.max_embeddings_per_person``)."""
    from edge_agent.config import MqttConfig

    return config.mqtt.max_embeddings_per_person if config.mqtt else MqttConfig.model_fields["max_embeddings_per_person"].default


def _registry_add(config: Config, registry: Registry, args: argparse.Namespace) -> None:
    from edge_agent.models.loader import load_detector, require_embedder

    existing = registry.find(args.name)
    if existing is not None and not (args.replace or args.append):
        raise UsageError(f"{args.name!r} is already registered ({len(existing.embeddings)} templates): "
                         "pass --replace to replace them or --append to add these photos")
    embedder, sig = require_embedder(config)
    rec, limit = config.recognition, max_templates(config)
    enrolment = embed_photos([Path(p) for p in args.photos], load_detector(config), embedder, rec.min_face_px, rec.threshold,
                             rec.max_null_similarity, limit)
    for warning in enrolment.warnings:
        print(f"edge-agent: warning: {warning}", file=sys.stderr)
    templates = enrolment.templates
    if existing is not None and args.append:
        if existing.embeddings.size and existing.model_sig != sig:
            raise UsageError(f"{args.name!r} was registered with another model ({existing.model_sig}): use --replace")
        templates = merge_templates(existing.embeddings, enrolment, rec.threshold, limit)
    registry.upsert_person(args.name, templates, sig)
    action = "appended to" if existing is not None and args.append else ("replaced" if existing is not None else "registered")
    print(f"{action} {args.name!r}: {len(enrolment.templates)} templates from {len(args.photos)} photo(s) "
          f"({', '.join(map(str, enrolment.per_photo))} per photo), {len(templates)} stored; "
          f"{registry.count()} people in {config.registry_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="Privacy filter for cameras: only registered people are shown.")
    parser.add_argument("--config", type=Path, help="YAML config (default: $EDGE_AGENT_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="filter camera streams and serve the anonymized view")
    run.add_argument("--source", help="video file, RTSP/HTTP URL or USB camera index (replaces the config's cameras)")
    run.add_argument("--camera", default="default", help="name of the --source camera in the API (default: default)")
    run.add_argument("--host", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default 8080)")
    run.set_defaults(func=cmd_run)

    proc = sub.add_parser("process", help="anonymize an image or a video file")
    proc.add_argument("input")
    proc.add_argument("-o", "--output", required=True)
    proc.add_argument("--max-frames", type=int)
    proc.add_argument("--stats-json", help="write the run's figures to this JSON file")
    proc.add_argument("-q", "--quiet", action="store_true")
    proc.set_defaults(func=cmd_process)

    reg = sub.add_parser("registry", help="manage the local registry of people who may be shown")
    reg_sub = reg.add_subparsers(dest="registry_cmd", required=True)
    add = reg_sub.add_parser("add", help="register a person from one or more photos (one face each)")
    add.add_argument("--name", required=True)
    mode = add.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true", help="the name exists: replace its templates")
    mode.add_argument("--append", action="store_true", help="the name exists: add these photos' templates to it")
    add.add_argument("photos", nargs="+")
    reg_sub.add_parser("list", help="list registered people")
    remove = reg_sub.add_parser("remove", help="remove a person")
    remove.add_argument("name")
    reg.set_defaults(func=cmd_registry)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        _setup_logging(config.log_level)
        return args.func(config, args)
    except (ConfigError, ModelFileError, EnrolError, RegistryError, UsageError, ValueError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
