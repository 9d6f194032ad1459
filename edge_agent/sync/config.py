"""The ``mqtt:`` block of the agent's configuration (Frigate-like), for registry sync."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator, model_validator

from edge_agent.config import Strict

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
    password: Optional[str] = None
    tls_ca_certs: Optional[Path] = None
    tls_client_cert: Optional[Path] = None
    tls_client_key: Optional[Path] = None
    tls_insecure: bool = Field(False, description="skip the broker host-name check (testing only)")
    admin_public_key: Path = Field(..., description="PEM file of the admin's Ed25519 public key")
    keepalive: int = Field(60, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0, le=60)
    reconnect_max_s: float = Field(60.0, gt=0, le=3600)
    state_interval_s: float = Field(60.0, ge=1, description="republish the retained state this often (last seen)")
    max_event_bytes: int = Field(1 << 20, ge=1024, description="larger event messages are rejected unread")
    max_snapshot_bytes: int = Field(64 << 20, ge=1024, description="larger snapshot messages are rejected unread")
    max_embeddings_per_person: int = Field(32, ge=1, le=1024)
    max_people: int = Field(100_000, ge=1)

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
