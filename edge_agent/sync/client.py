"""One paho client factory for both sides: credentials and TLS exactly as the ``mqtt:`` block says."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from edge_agent.config import MqttConfig


def make_client(config: MqttConfig, client_id: str, clean_session: bool, manual_ack: bool = False) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                         protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if config.user is not None:
        client.username_pw_set(config.user, config.password)
    if config.tls_ca_certs or config.tls_client_cert:
        client.tls_set(ca_certs=str(config.tls_ca_certs) if config.tls_ca_certs else None,
                       certfile=str(config.tls_client_cert) if config.tls_client_cert else None,
                       keyfile=str(config.tls_client_key) if config.tls_client_key else None,
                       cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(config.tls_insecure)
    return client
