"""Registry sync over MQTT: the admin signs versioned events and a retained snapshot; devices
verify, validate and apply them atomically (see docs/registry-sync.md)."""

from edge_agent.config import MqttConfig
from edge_agent.sync.device import RegistrySync

__all__ = ["MqttConfig", "RegistrySync"]
