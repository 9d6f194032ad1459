"""The cameras of a config: ``--source`` overrides, and ``edge-agent cameras [--check]``, which
says what the agent would open before the service is (re)started."""

from __future__ import annotations

import argparse
import time
from typing import Optional

from edge_agent.capture import SourceError, describe, open_capture
from edge_agent.config import CameraConfig, Config


def apply_sources(config: Config, sources: Optional[list[str]], names: Optional[list[str]]) -> None:
    """``--source`` (repeatable) replaces the config's cameras; ``--camera`` names them in order."""
    if not sources:
        if names:
            raise ValueError("--camera names a --source: give a --source for each --camera")
        return
    names = list(names or [])
    if len(names) > len(sources):
        raise ValueError(f"{len(names)} --camera names for {len(sources)} --source(s)")
    if len(sources) == 1 and not names:
        names = ["default"]
    names += [f"camera{i}" for i in range(len(names) + 1, len(sources) + 1)]
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must differ: {', '.join(names)}")
    config.cameras = {name: CameraConfig(source=source) for name, source in zip(names, sources)}


def check_camera(camera: CameraConfig, timeout_s: float) -> Optional[str]:
    """None when one frame could be read within ``timeout_s``, else why not."""
    try:
        cap = open_capture(camera.source)
    except SourceError as exc:
        return str(exc)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok, frame = cap.read()
            if ok and frame is not None:
                return None
            time.sleep(0.1)
        return f"no frame within {timeout_s:g} s"
    finally:
        cap.release()


def cmd_cameras(config: Config, args: argparse.Namespace) -> int:
    enabled = 0
    failed = 0
    for name, camera in config.cameras.items():
        line = f"{name}\t{'enabled' if camera.enabled else 'disabled'}\t{describe(camera.source)}"
        if camera.enabled:
            enabled += 1
            if args.check:
                problem = check_camera(camera, args.timeout)
                failed += problem is not None
                line += "\tok" if problem is None else f"\tFAILED: {describe(problem)}"
        print(line)
    if not enabled:
        print("no camera enabled: add one under cameras: in the config (source: a file, an rtsp:// URL or a USB index; "
              "enabled: true), or pass --source to run")
        return 1
    return 1 if failed else 0
