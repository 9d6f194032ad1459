"""``edge-agent``: run the service, process files offline, manage the local registry."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from edge_agent.config import CameraConfig, Config, ConfigError, load_config
from edge_agent.enroll import EnrolError, embed_photos
from edge_agent.models.files import ModelFileError
from edge_agent.preflight import PreflightError, check_process, check_run
from edge_agent.registry import Registry, RegistryError
from edge_agent.sdnotify import Notifier, Watchdog

log = logging.getLogger("edge_agent")


class UsageError(Exception):
    """A command that cannot run as given."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _option(option: str, apply):
    """Apply a command-line override; a value the config refuses is an error naming the option."""
    try:
        return apply()
    except ValidationError as exc:
        raise UsageError(f"{option}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from edge_agent import http_server
    from edge_agent.api import create_app
    from edge_agent.service import Agent

    if args.source is not None:
        camera = _option("--source", lambda: CameraConfig(source=args.source))
        _option("--camera", lambda: setattr(config, "cameras", {args.camera: camera}))
    if args.host:
        _option("--host", lambda: setattr(config.api, "host", args.host))
    if args.port is not None:
        _option("--port", lambda: setattr(config.api, "port", args.port))
    if not config.cameras:
        raise UsageError("no camera configured: pass --source PATH|URL|INDEX or add cameras: to the config")
    check_run(config)
    http_server.check_tls(config.api)
    http_server.ensure_file_limit(config.api)
    listener = http_server.bind(config.api.host, config.api.port)  # a busy port fails here, before the models load
    port = listener.getsockname()[1]
    token = config.api.token
    generated = not token
    if generated:
        token = secrets.token_urlsafe(24)
        print("No API token configured (api.token or EDGE_AGENT_TOKEN): generated one for this run.", file=sys.stderr)
    try:
        agent = Agent(config)
    except BaseException:
        listener.close()
        raise
    app = create_app(agent, token, config.api)
    server = http_server.build_server(app, config.api)
    notifier = Notifier()
    watchdog = Watchdog(notifier, None, agent.alive)
    agent.start()

    def announce_ready() -> None:
        while not agent.running() or not server.started:
            time.sleep(0.1)
        notifier.ready(f"filtering {len(agent.cameras)} camera(s)")
        watchdog.start()

    threading.Thread(target=announce_ready, name="sd-ready", daemon=True).start()

    def on_exit() -> None:  # SIGTERM/SIGINT: tell systemd at once, end open streams
        notifier.stopping("stopping")
        app.state.closing.set()

    server.on_exit = on_exit
    host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::") else config.api.host
    host = f"[{host}]" if ":" in host else host
    # A configured token is a secret of the deployment: it never goes to stdout (the journal).
    fragment = f"#token={token}" if generated else ""
    scheme = "https" if config.api.tls_cert else "http"
    print(f"edge-agent: live anonymized view at {scheme}://{host}:{port}/{fragment}", flush=True)
    try:
        server.run(sockets=[listener])
    finally:
        # Reached on SIGTERM too (systemctl stop): ApiServer does not re-raise the signal.
        if server.stop_signal is None:
            notifier.stopping("stopping")
        watchdog.stop()
        agent.stop()
        log.info("stopped (%s)", signal.Signals(server.stop_signal).name if server.stop_signal else "server ended")
    return 0


def cmd_process(config: Config, args: argparse.Namespace) -> int:
    from edge_agent.process import process_file
    from edge_agent.service import Models

    stats_json = Path(args.stats_json) if args.stats_json else None
    check_process(Path(args.input), Path(args.output), args.max_frames, stats_json)
    models = Models(config)
    result = process_file(models, Path(args.input), Path(args.output), progress=not args.quiet, max_frames=args.max_frames)
    summary = {"input": args.input, "output": args.output, "frames": result.frames, "seconds": round(result.seconds, 3), "fps": round(result.fps, 2), **result.stats}
    if stats_json:
        try:
            stats_json.write_text(json.dumps(summary, indent=2))
        except OSError as exc:
            raise UsageError(f"--stats-json: cannot write {stats_json}: {exc.strerror or exc} (the output {args.output} was written)") from None
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
            from edge_agent.models.loader import load_detector, require_embedder

            embedder, sig = require_embedder(config)
            vectors = embed_photos([Path(p) for p in args.photos], load_detector(config), embedder, config.recognition.min_face_px, config.recognition.threshold, config.recognition.max_null_similarity)
            registry.upsert_person(args.name, vectors, sig)
            print(f"registered {args.name!r} from {len(vectors)} photo(s); {registry.count()} people in {config.registry_path}")
        elif args.registry_cmd == "list":
            people = registry.people()
            for person in people:
                print(f"{person.name}\t{len(person.embeddings)} embedding(s)\t{person.model_sig}")
            print(f"{len(people)} people, version {registry.version}", file=sys.stderr)
        elif args.registry_cmd == "remove":
            if not registry.remove_person(args.name):
                raise UsageError(f"no registered person named {args.name!r}")
            print(f"removed {args.name!r}; {registry.count()} people left")
    finally:
        registry.close()
    return 0


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
    except (ConfigError, ModelFileError, EnrolError, RegistryError, UsageError, PreflightError, ValueError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written: say which, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"edge-agent: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
