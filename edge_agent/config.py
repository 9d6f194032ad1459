"""Agent configuration: one YAML file, validated at start-up, unknown keys rejected by name.

Environment overrides (for systemd and containers): ``EDGE_AGENT_CONFIG`` (the file),
``EDGE_AGENT_MODELS`` (models.dir), ``EDGE_AGENT_DATA_DIR`` (data_dir, where the registry
lives), ``EDGE_AGENT_TOKEN`` (api.token), ``EDGE_AGENT_MQTT_PASSWORD`` (mqtt.password).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.image_size import DEFAULT_MAX_PIXELS

Backend = Literal["auto", "cpu", "cuda", "tensorrt"]
# Where install.sh puts the machine's config: every subcommand reads it when no other is named,
# so `process` and `registry` use the same pipeline as the service.
SYSTEM_CONFIG = Path("/etc/edge-agent/config.yaml")
# Tokens copied from examples: accepting one would leave the API open to anyone who read them.
PLACEHOLDER_TOKENS = {"change-me", "changeme", "token", "secret", "password"}
MIN_TOKEN_LENGTH = 16


class ConfigError(Exception):
    """A configuration problem, worded for the operator (names the file and the key)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DetectorConfig(Strict):
    file: str = "yunet_s_dynamic.onnx"
    fallback_file: str = "centerface.onnx"
    backend: Backend = "cpu"
    threads: int = Field(0, ge=0)
    score_threshold: float = Field(0.5, gt=0, lt=1)
    nms_threshold: float = Field(0.3, gt=0, lt=1)
    max_side: int = Field(640, ge=64, le=4096)
    min_face_px: float = Field(
        20, ge=10, le=1000, description="smallest face (frame px) to find; larger frames get tiles at the scale this needs"
    )
    max_tiles: int = Field(12, ge=0, le=256, description="per-frame tile budget; past it the tile scale drops (warned); 0 = whole frame only")
    tile_size: int = Field(1280, ge=128, le=4096, multiple_of=32, description="largest tile canvas side (px); tiles of a frame are equal, run as batches")
    tile_batch: int = Field(4, ge=1, le=64, description="tiles per detector run (a TensorRT profile's batch)")
    border_score_threshold: float = Field(
        0.2, gt=0, lt=1, description="faces reaching the frame border (cut heads, often in profile) are kept down to this score"
    )
    low_light_pass: bool = Field(
        True, description="search dark or noisy frames a second time, denoised (finds faces sensor noise hides; 2-3x the detection time on those frames)"
    )

    @model_validator(mode="after")
    def _border_below_score(self):
        if self.border_score_threshold > self.score_threshold:
            raise ValueError("border_score_threshold cannot exceed score_threshold")
        return self


class EmbedderConfig(Strict):
    file: str = "mobilefacenet.onnx"
    fallback_file: Optional[str] = Field("mobilefacenet.onnx", description="used when `file` (e.g. an INT8 build) cannot be loaded")
    backend: Backend = "cpu"
    threads: int = Field(0, ge=0)


class ModelsConfig(Strict):
    dir: Path = Path("models")
    detector: DetectorConfig = DetectorConfig()
    embedder: EmbedderConfig = EmbedderConfig()


class CameraConfig(Strict):
    source: Union[int, str]
    loop: bool = Field(True, description="restart a video file at its end")
    fps_cap: float = Field(0, ge=0, description="0 = as fast as the source delivers")
    enabled: bool = True

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, value):
        if isinstance(value, str) and not value.strip():
            raise ValueError("source must be a file path, a URL or a USB camera index")
        return value


class RecognitionConfig(Strict):
    """Who may be shown (``decide.py``): bounds on a track's pooled evidence and on each new frame."""

    enabled: bool = True
    # From the track-level LFW evaluation (reports/recognition/report.md; README, "Who may be shown").
    threshold: float = Field(0.64, gt=0, lt=1, description="pooled template's cosine to a registered person's templates needed to show")
    min_margin: float = Field(0.05, ge=0, lt=1, description="...and its lead over the next registered person")
    min_frames: int = Field(3, ge=2, description="embeddings pooled before a video track may be shown (a still photo needs one)")
    min_weight: float = Field(0.5, ge=0, description="summed quality weight (size, sharpness, pose, blankness) pooled before showing")
    min_agreement: float = Field(0.30, gt=-1, lt=1, description="a new embedding less similar than this to the track's pool restarts it")
    min_continuity: float = Field(0.40, gt=-1, lt=1, description="a new embedding less similar than this to the previous frame's restarts it")
    candidate_similarity: float = Field(0.35, gt=-1, lt=1, description="hidden tracks this close to a registered person are embedded every frame (others every recheck_frames)")
    recheck_frames: int = Field(10, ge=1, description="other hidden tracks are embedded this often")
    min_face_px: int = Field(28, ge=8, description="smaller faces are never recognised, so never shown")
    max_null_similarity: float = Field(
        0.35, gt=0, le=1, description="a face whose embedding is this close to a blank face's carries no identity: never shown"
    )


class TrackerConfig(Strict):
    iou_match: float = Field(0.3, gt=0, lt=1)
    reverify_iou: float = Field(0.5, gt=0, lt=1, description="a weaker match than this resets the vote")
    hold_frames: int = Field(8, ge=0, description="keep hiding a face this many frames after the detector loses it")
    scene_cut: float = Field(
        30.0, gt=0, le=255, description="mean grey change (0-255) of a 32x18 thumbnail that ends every track (a cut)"
    )


class DiffusionConfig(Strict):
    model: Optional[Path] = Field(None, description="student ONNX; default: the packaged edge_agent/assets/face_student.onnx")
    backend: Backend = "cpu"
    threads: int = Field(1, ge=0)
    degree: float = Field(1.0, ge=0, le=2, description="0 keeps the face's coarse layout, 1 a generic one, >1 pushes past it")
    regenerate_frames: int = Field(90, ge=0, description="regenerate a track's face this often (0 = once per track)")
    regenerate_on_motion: float = Field(4.0, gt=0, description="...or when its landmarks moved this many crop pixels")
    budget_ms: float = Field(25, gt=0, description="per-frame time for new generations; past it faces fall back")
    min_face_px: float = Field(40, ge=0, description="narrower faces get the classical fallback (too small to regenerate safely)")
    max_similarity: float = Field(0.35, gt=-1, le=1, description="a generated face this similar to the person (project recogniser) is replaced by the fallback")


class DonorConfig(Strict):
    bank: Optional[Path] = Field(None, description="donor bank npz; default: the packed edge_agent/assets/donor_bank.npz")
    degree: float = Field(1.0, ge=0, le=2, description="0 keeps the stranger's fine shading and face proportions on the donor, 1 the light's direction and 80 % of the proportions, 2 only brightness, contrast, colour cast and 40 %")
    min_face_px: float = Field(30, ge=0, description="narrower faces get the classical fallback (a donor on them stays closer to the person than a mosaic: clip-check --mode donor)")
    min_score: float = Field(0.65, ge=0, le=1, description="a new track scored lower gets the classical fallback until it scores higher: on the clips, backs of heads score 0.2-0.61")
    max_similarity: float = Field(0.25, gt=-1, le=1, description="a donor face this similar to the person (project recogniser) is swapped for another donor, then the fallback (at 0.35 more of a crowd's faces stayed findable among the crowd than under a mosaic: crowd-reid, README)")
    budget_ms: float = Field(25, gt=0, description="per-frame time for new tracks (donor choice and check); past it their faces fall back for that frame")
    frame_budget_ms: float = Field(60, gt=0, description="per-frame time for donor renders; past it faces fall back for that frame (still faces replay their last render), new and longest-waiting faces served first next frame")
    refiner: bool = Field(False, description="render each donor composite into the scene with the distilled 1-step refiner (edge_agent/assets/REFINER.md); each refined face is checked with the recogniser, so it needs recognition enabled")
    refiner_model: Optional[Path] = Field(None, description="refiner ONNX; default: the packed edge_agent/assets/face_refiner.onnx")
    refine_budget_ms: float = Field(30, gt=0, description="per-frame time for refining; faces past it keep the unrefined donor composite for that frame")
    match_sex: bool = Field(True, description="draw each stranger's donor among donors of their apparent sex when the small classifier leans to one side (edge_agent/assets/APPARENT_SEX.md); the score never leaves the process")
    match_age: bool = Field(True, description="draw a child's donor among child donors, an adult's among adults, when the small child-or-adult classifier is sure (edge_agent/assets/APPARENT_AGE.md); the score never leaves the process")


class AnonymizerConfig(Strict):
    mode: Literal["pixelate", "blur", "solid", "diffusion", "donor"] = "pixelate"
    pixelate_blocks: int = Field(8, ge=2, le=32, description="mosaic cells across the head region of faces under 60 px")
    pixelate_large_blocks: int = Field(5, ge=2, le=32, description="...and from 60 px (with 8, dlib still matched more large faces than through a solid fill: eval-video-identity)")
    fallback: Literal["pixelate", "blur", "solid"] = "pixelate"
    frame_fallback: Literal["solid", "blocks"] = "solid"
    diffusion: DiffusionConfig = DiffusionConfig()
    donor: DonorConfig = DonorConfig()


class PipelineConfig(Strict):
    frame_timeout_ms: float = Field(1000, gt=0, description="a frame not filtered by then leaves fully redacted")
    max_frame_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1_000_000, description="larger images are refused before decoding; larger frames leave fully redacted"
    )
    jpeg_quality: int = Field(85, ge=10, le=100)


class ApiConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: Optional[str] = Field(None, description=f"bearer token (EDGE_AGENT_TOKEN); a placeholder is refused, under {MIN_TOKEN_LENGTH} characters warned about")
    mjpeg_max_fps: float = Field(15, gt=0)
    allowed_hosts: list[str] = Field(
        [], description="extra Host names the API answers to (besides localhost and the bind address): others are refused (DNS rebinding)"
    )
    max_header_bytes: int = Field(16384, ge=1024, le=1 << 20, description="request line + headers; larger requests get a 400 unread")
    header_timeout_s: float = Field(10, gt=0, le=300, description="a request head not complete by then closes the connection")
    keepalive_timeout_s: int = Field(5, ge=1, le=300, description="idle keep-alive connections close after this")
    max_connections: int = Field(512, ge=1, le=65536, description="past it a new connection closes the longest-idle one (503 when all are busy); kept below the open-file limit")
    session_ttl_s: int = Field(900, ge=60, le=86400, description="life of the page's session cookie (renewed while the page is open)")
    tls_cert: Optional[Path] = Field(None, description="PEM certificate: serve HTTPS (with tls_key)")
    tls_key: Optional[Path] = Field(None, description="PEM private key of tls_cert")

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self

    @field_validator("token")
    @classmethod
    def _not_a_placeholder(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and value.strip().lower() in PLACEHOLDER_TOKENS:
            raise ValueError(f"{value!r} is the example placeholder: set a secret token (openssl rand -hex 32)")
        return value

    def token_warning(self) -> Optional[str]:
        """Why the configured token is weak, or None (a short token is allowed, not advised)."""
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            return f"the API token has {len(self.token)} characters; use at least {MIN_TOKEN_LENGTH} (openssl rand -hex 32)"
        return None


_TOPIC_PART = re.compile(r"^[A-Za-z0-9_\-.]+(/[A-Za-z0-9_\-.]+)*$")
_ID = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


class MqttConfig(Strict):
    """Where the site's broker is, who this device is, and which admin key it trusts."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = "edge-agent"
    site: str = "default"
    device_id: str = Field(default_factory=lambda: re.sub(r"[^A-Za-z0-9_\-.]", "-", socket.gethostname())[:64] or "device")
    client_id: Optional[str] = Field(None, description="MQTT client id; default edge-agent-<site>-<device_id> (stable: persistent session)")
    user: Optional[str] = None
    password: Optional[str] = Field(None, repr=False)
    tls_ca_certs: Optional[Path] = None
    tls_client_cert: Optional[Path] = None
    tls_client_key: Optional[Path] = None
    tls_insecure: bool = Field(False, description="skip the broker host-name check (testing only)")
    admin_public_key: Path = Field(..., description="PEM file of the admin's Ed25519 public key; a relative path is under data_dir")
    keepalive: int = Field(60, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0, le=60)
    reconnect_max_s: float = Field(60.0, gt=0, le=3600)
    state_interval_s: float = Field(60.0, ge=1, description="republish the retained state this often (last seen)")
    max_event_bytes: int = Field(1 << 20, ge=1024, description="larger event messages are rejected unread")
    max_snapshot_bytes: int = Field(64 << 20, ge=1024, description="larger snapshot messages are rejected unread")
    max_embeddings_per_person: int = Field(32, ge=1, le=1024)
    max_people: int = Field(100_000, ge=1)
    max_registry_age: Optional[float] = Field(
        86400.0, gt=0, description="seconds without a signed word from the admin (event, heartbeat, snapshot) after "
        "which every registered person is hidden (fail closed); null turns it off")
    max_snapshot_age: Optional[float] = Field(
        7 * 86400.0, gt=0, description="a snapshot signed longer ago than this many seconds is refused; null turns it off")
    clock_skew_s: float = Field(
        300.0, ge=0, description="a clock this far behind the newest admin message is a reset clock: periods count as expired")
    audit_publish_s: float = Field(1.0, gt=0, le=3600, description="publish closed audit intervals this often")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _TOPIC_PART.match(value):
            raise ValueError("topic_prefix may use letters, digits, '-', '_', '.' and '/' between parts (no wildcards)")
        return value

    @field_validator("site", "device_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("use 1-64 letters, digits, '-', '_' or '.'")
        return value

    @model_validator(mode="after")
    def _pairs(self):
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key go together")
        if self.password is not None and self.user is None:
            raise ValueError("password given without user")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s cannot be below reconnect_min_s")
        return self

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"edge-agent-{self.site}-{self.device_id}"

    def topic(self, *parts: str) -> str:
        return "/".join([self.topic_prefix, self.site, *parts])


class AuditConfig(Strict):
    """The device's record of who was shown where and when (intervals, never images)."""

    enabled: bool = True
    retention_days: float = Field(30.0, gt=0, description="intervals that ended longer ago are deleted from data_dir/audit.db")
    gap_s: float = Field(2.0, gt=0, description="a person not shown for this long on a camera ends their interval")
    flush_s: float = Field(1.0, gt=0, le=60, description="write intervals to disk this often (what a crash can lose)")


class Config(Strict):
    data_dir: Path = Path("data")
    models: ModelsConfig = ModelsConfig()
    cameras: dict[str, CameraConfig] = {}
    recognition: RecognitionConfig = RecognitionConfig()
    tracker: TrackerConfig = TrackerConfig()
    anonymizer: AnonymizerConfig = AnonymizerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    api: ApiConfig = ApiConfig()
    mqtt: Optional[MqttConfig] = Field(None, description="registry sync from the site admin; off when absent")
    audit: AuditConfig = AuditConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("cameras")
    @classmethod
    def _camera_names(cls, value: dict) -> dict:
        for name in value:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"camera name {name!r} may use letters, digits, '-' and '_' only")
        return value

    @model_validator(mode="after")
    def _files_under_data_dir(self):
        """Relative mqtt file paths mean data_dir/..., not the working directory (which is
        /opt/edge-agent under the unit); a missing file is named here, not met as a traceback."""
        mqtt = self.mqtt
        if mqtt is None or not mqtt.enabled:
            return self
        for key in ("admin_public_key", "tls_ca_certs", "tls_client_cert", "tls_client_key"):
            path = getattr(mqtt, key)
            if path is None:
                continue
            if not path.is_absolute():
                path = self.data_dir / path
                object.__setattr__(mqtt, key, path)
            if not path.is_file():
                raise ValueError(f"mqtt.{key}: {path} does not exist" + (
                    " (copy the admin's public key there: `edge-admin keygen` prints where it is)" if key == "admin_public_key" else ""))
        return self

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.db"


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = "unknown key (check the spelling)" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def default_config_path(env) -> Optional[Path]:
    """The machine's one default config: $EDGE_AGENT_CONFIG, else SYSTEM_CONFIG if present."""
    if env.get("EDGE_AGENT_CONFIG"):
        return Path(env["EDGE_AGENT_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(path: Optional[Path] = None, env: Optional[dict] = None) -> Config:
    """Read, override from the environment, validate. Raises ConfigError with the bad key named."""
    env = os.environ if env is None else env
    path = path or default_config_path(env)
    raw: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a text (UTF-8 YAML) file") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    if env.get("EDGE_AGENT_MODELS"):
        raw.setdefault("models", {})
        if isinstance(raw["models"], dict):
            raw["models"]["dir"] = env["EDGE_AGENT_MODELS"]
    if env.get("EDGE_AGENT_DATA_DIR"):
        raw["data_dir"] = env["EDGE_AGENT_DATA_DIR"]
    if env.get("EDGE_AGENT_MQTT_PASSWORD") and isinstance(raw.get("mqtt"), dict):
        raw["mqtt"]["password"] = env["EDGE_AGENT_MQTT_PASSWORD"]
    if env.get("EDGE_AGENT_TOKEN"):
        raw.setdefault("api", {})
        if isinstance(raw["api"], dict):
            raw["api"]["token"] = env["EDGE_AGENT_TOKEN"]
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
