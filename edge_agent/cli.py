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

from edge_agent import __version__
from edge_agent.cameras import apply_sources, cmd_cameras
from edge_agent.completion import bash_completion
from edge_agent.config import SYSTEM_CONFIG, Config, ConfigError, load_config
from edge_agent.enroll import EnrolError, embed_photos, merge_templates
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

    _option("--camera", lambda: apply_sources(config, args.source, args.camera))
    if args.host:
        _option("--host", lambda: setattr(config.api, "host", args.host))
    if args.port is not None:
        _option("--port", lambda: setattr(config.api, "port", args.port))
    check_run(config)
    http_server.check_tls(config.api)
    http_server.ensure_file_limit(config.api)
    listener = http_server.bind(config.api.host, config.api.port)  # a busy port fails here, before the models load
    port = listener.getsockname()[1]
    token = config.api.token
    if config.api.token_warning():
        log.warning("%s", config.api.token_warning())
    if not config.cameras or not any(c.enabled for c in config.cameras.values()):
        log.warning("no camera configured: the agent serves its health (503) and page until cameras: has an enabled one")
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
        while not agent.ready() or not server.started:
            time.sleep(0.1)
        notifier.ready(agent.status_line())
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
    result = process_file(models, Path(args.input), Path(args.output), progress=not args.quiet, max_frames=args.max_frames,
                          allow_decode_errors=args.allow_decode_errors)
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
    if args.registry_cmd in ("add", "remove") and config.mqtt is not None and config.mqtt.enabled:
        raise UsageError(f"registry sync is on (mqtt: in the config): this device's registry is the site admin's; "
                         f"use `edge-admin {'enroll' if args.registry_cmd == 'add' else 'remove'}` instead")
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


def cmd_completion(config: None, args: argparse.Namespace) -> int:
    print(bash_completion(build_parser(), "edge-agent"))
    return 0


ANONYMIZERS = ("pixelate", "blur", "solid", "diffusion", "donor")


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options every subcommand accepts, before or after its name. On the subcommands they
    default to SUPPRESS so that an option given before the subcommand is not reset."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", type=Path, default=default, metavar="FILE",
                        help=f"YAML config (default: $EDGE_AGENT_CONFIG, else {SYSTEM_CONFIG} if present, else built-in defaults)")
    parser.add_argument("--anonymizer", choices=ANONYMIZERS, default=default,
                        help="how strangers' faces are replaced (overrides anonymizer.mode of the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="Privacy filter for cameras: only registered people are shown.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, top=False)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="filter camera streams and serve the anonymized view")
    run.add_argument("--source", action="append", metavar="SOURCE",
                     help="video file, RTSP/HTTP URL or USB camera index; repeat for several cameras (replaces the config's cameras)")
    run.add_argument("--camera", action="append", metavar="NAME",
                     help="API name of each --source, in the same order (default: 'default' for one source, camera1, camera2... for several)")
    run.add_argument("--host", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default 8080)")
    run.set_defaults(func=cmd_run)

    proc = sub.add_parser("process", parents=[common], help="anonymize an image or a video file")
    proc.add_argument("input", help="image (.jpg, .png, ...) or video file to anonymize")
    proc.add_argument("-o", "--output", required=True, metavar="FILE",
                      help="where the anonymized copy goes: an image, or a video (.mp4, .mkv, .mov: H.264 plus the input's audio)")
    proc.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames of a video")
    proc.add_argument("--allow-decode-errors", action="store_true",
                      help="write the frames that decode from a damaged video instead of failing (the loss is still reported)")
    proc.add_argument("--stats-json", metavar="FILE", help="write the run's figures to this JSON file")
    proc.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    proc.set_defaults(func=cmd_process)

    reg = sub.add_parser("registry", parents=[common], help="manage the local registry of people who may be shown")
    reg_sub = reg.add_subparsers(dest="registry_cmd", required=True, metavar="ACTION")
    add = reg_sub.add_parser("add", parents=[common], help="register a person from one or more photos (one face each)")
    add.add_argument("--name", required=True, help="the person's name as shown in the registry")
    mode = add.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true", help="the name exists: replace its templates")
    mode.add_argument("--append", action="store_true", help="the name exists: add these photos' templates to it")
    add.add_argument("photos", nargs="+", help="photos of the person, exactly one face in each")
    reg_sub.add_parser("list", parents=[common], help="list registered people")
    remove = reg_sub.add_parser("remove", parents=[common], help="remove a person")
    remove.add_argument("name", help="the registered name to remove")
    reg.set_defaults(func=cmd_registry)

    cams = sub.add_parser("cameras", parents=[common], help="list the config's cameras (exit 1 when none is enabled)")
    cams.add_argument("--check", action="store_true", help="open each enabled camera and read one frame (exit 1 if one fails)")
    cams.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds per camera for --check (default 10)")
    cams.set_defaults(func=cmd_cameras)

    comp = sub.add_parser("completion", help="print a shell completion script: eval \"$(edge-agent completion bash)\"")
    comp.add_argument("shell", choices=["bash"], help="the shell (bash; zsh can load it with bashcompinit)")
    comp.set_defaults(func=cmd_completion, needs_config=False)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not getattr(args, "needs_config", True):
            return args.func(None, args)
        config = load_config(args.config)
        if args.anonymizer:
            config.anonymizer.mode = args.anonymizer
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
