"""Checks of a command's files and options that run before any work: a mistake costs the user
an error message, never a model load, minutes of processing, or an output written for nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2

from edge_agent.config import Config
from edge_agent.video_io import CONTAINERS



class PreflightError(Exception):
    """An input, output or option that cannot work (worded for the operator)."""


def _writable_dir(directory: Path, what: str, create: bool) -> None:
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PreflightError(f"{what}: cannot create the directory {directory}: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise PreflightError(f"{what}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PreflightError(f"{what}: the directory {directory} is not writable")


def check_process(source: Path, output: Path, max_frames: Optional[int], stats_json: Optional[Path]) -> None:
    from edge_agent.process import IMAGE_SUFFIXES  # what process_file treats as an image

    if max_frames is not None and max_frames < 1:
        raise PreflightError(f"--max-frames must be at least 1 (got {max_frames})")
    if source.is_dir():
        raise PreflightError(f"{source} is a directory, not an image or a video file")
    if not source.exists():
        raise PreflightError(f"{source} does not exist")
    suffix = output.suffix.lower()
    if source.suffix.lower() in IMAGE_SUFFIXES:
        if suffix not in IMAGE_SUFFIXES or not cv2.haveImageWriter(str(output)):
            raise PreflightError(f"-o {output}: an image is written as an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    elif suffix not in CONTAINERS:
        raise PreflightError(f"-o {output}: a video is written as a video ({', '.join(sorted(CONTAINERS))})")
    if output.is_dir():
        raise PreflightError(f"-o {output} is a directory; name the output file")
    _writable_dir(output.parent, "-o", create=True)
    if stats_json is not None:
        if stats_json.is_dir():
            raise PreflightError(f"--stats-json {stats_json} is a directory; name the JSON file")
        _writable_dir(stats_json.parent, "--stats-json", create=False)


def check_run(config: Config) -> None:
    """Files the service reads at start-up exist (the TLS pair is checked by the config itself)."""
    mqtt = config.mqtt
    if mqtt is not None and mqtt.enabled and not mqtt.admin_public_key.is_file():
        raise PreflightError(f"mqtt.admin_public_key: {mqtt.admin_public_key} is not a file (the admin's Ed25519 public key, PEM)")
