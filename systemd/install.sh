#!/usr/bin/env bash
# Install edge-agent as a systemd service (what `make install-service` runs). Idempotent:
# run it again after an update. Needs root, except with DESTDIR (a staging tree: no user,
# no chown, no systemctl; used by the tests and by packagers).
#
#   sudo DEVICE=jetson-orin-nano systemd/install.sh
#
# DEVICE    device_configs/<DEVICE>.yaml becomes /etc/edge-agent/config.yaml if that is absent
# PREFIX    where the project (with its .venv) lives, default /opt/edge-agent; the unit's
#           ExecStart and WorkingDirectory are rewritten to it
# MODELS    a model directory to copy into /var/lib/edge-agent/models (default: ./models)
# NO_START  set to 1 to enable without starting (it never starts a config without an enabled camera)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/edge-agent}"
DEVICE="${DEVICE:-}"
MODELS="${MODELS:-$repo/models}"
SERVICE_USER=edge-agent
unit_dir="$DESTDIR/etc/systemd/system"
conf_dir="$DESTDIR/etc/edge-agent"
state_dir="$DESTDIR/var/lib/edge-agent"

say() { printf 'install-service: %s\n' "$*"; }
die() { printf 'install-service: error: %s\n' "$*" >&2; exit 1; }

if [[ -z "$DESTDIR" && "$(id -u)" -ne 0 ]]; then
    die "run as root (sudo make install-service), or set DESTDIR to stage the files"
fi
if [[ -n "$DEVICE" && ! -f "$repo/device_configs/$DEVICE.yaml" ]]; then
    die "no device_configs/$DEVICE.yaml (choose one of: $(cd "$repo/device_configs" && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '))"
fi
if [[ -z "$DESTDIR" && ! -x "$PREFIX/.venv/bin/python" ]]; then
    die "$PREFIX/.venv/bin/python not found: put the project at $PREFIX and run 'make setup' there (or set PREFIX)"
fi

# 1. A dedicated system user with no login and no home, in the camera/GPU groups.
if [[ -z "$DESTDIR" ]]; then
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "creating system user $SERVICE_USER"
        useradd --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    for group in video render; do
        if getent group "$group" >/dev/null; then usermod -a -G "$group" "$SERVICE_USER"; fi
    done
fi

# 2. The unit, pointed at PREFIX.
install -d -m 0755 "$unit_dir"
sed -e "s#/opt/edge-agent#$PREFIX#g" "$here/edge-agent.service" > "$unit_dir/edge-agent.service.tmp"
chmod 0644 "$unit_dir/edge-agent.service.tmp"
mv -f "$unit_dir/edge-agent.service.tmp" "$unit_dir/edge-agent.service"
say "unit installed: $unit_dir/edge-agent.service"

# 3. Secrets: root-only, never overwritten (an update keeps the token).
install -d -m 0750 "$conf_dir"
# The example's placeholder token is replaced by a random one: the agent refuses the placeholder.
if [[ ! -f "$conf_dir/edge-agent.env" ]]; then
    token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    (umask 077 && sed -e "s#^EDGE_AGENT_TOKEN=change-me\$#EDGE_AGENT_TOKEN=$token#" "$here/edge-agent.env" > "$conf_dir/edge-agent.env")
    chmod 0600 "$conf_dir/edge-agent.env"
    say "environment file created: $conf_dir/edge-agent.env (a random EDGE_AGENT_TOKEN; add the MQTT secrets if you sync)"
else
    chmod 0600 "$conf_dir/edge-agent.env"
fi

# 4. The device config, kept if present.
if [[ ! -f "$conf_dir/config.yaml" ]]; then
    if [[ -n "$DEVICE" ]]; then
        install -m 0640 "$repo/device_configs/$DEVICE.yaml" "$conf_dir/config.yaml"
        say "config created from device_configs/$DEVICE.yaml: $conf_dir/config.yaml (add your cameras)"
    else
        say "warning: $conf_dir/config.yaml is missing; rerun with DEVICE=<name> or copy a device config there"
    fi
fi

# 5. State: the registry and the models (and their engines) under /var/lib/edge-agent.
install -d -m 0700 "$state_dir" "$state_dir/models"
if [[ -d "$MODELS" ]]; then
    # -L: the repo's model dir may hold symlinks into a shared folder; copy the files.
    cp -rL --preserve=timestamps "$MODELS/." "$state_dir/models/"
    say "models copied from $MODELS to $state_dir/models"
fi

# 6. Which cameras the config enables: the agent runs without one (health 503, the page says
#    how to add one), but starting it is pointless until there is one.
python="$PREFIX/.venv/bin/python"
[[ -x "$python" ]] || python="$repo/.venv/bin/python"
[[ -x "$python" ]] || python=python3
cameras_ok=0
cameras_said="no config at $conf_dir/config.yaml"
if [[ -f "$conf_dir/config.yaml" ]] && cameras_said="$(PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" EDGE_AGENT_TOKEN= \
        "$python" -m edge_agent --config "$conf_dir/config.yaml" cameras 2>&1)"; then
    cameras_ok=1
fi

if [[ -z "$DESTDIR" ]]; then
    chown root:"$SERVICE_USER" "$conf_dir" "$conf_dir/config.yaml" 2>/dev/null || true
    chown -R "$SERVICE_USER:$SERVICE_USER" "$state_dir"
    systemctl daemon-reload
    systemctl enable edge-agent.service
    if [[ "$cameras_ok" == 1 && "${NO_START:-0}" != 1 ]]; then
        # restart = start on a first install, and picks up a new unit, config or models after an update
        systemctl restart edge-agent.service
        say "done: systemctl status edge-agent; journalctl -u edge-agent -f"
        exit 0
    fi
else
    say "staged under $DESTDIR (no user, systemctl or chown)"
fi
if [[ "$cameras_ok" == 1 ]]; then
    say "next: sudo systemctl restart edge-agent; then systemctl status edge-agent"
else
    say "not started: $(printf '%s' "$cameras_said" | tail -n 1)"
    say "next: sudoedit /etc/edge-agent/config.yaml (cameras: <name>: source: rtsp://... or a USB index, enabled: true),"
    say "      check it with: $PREFIX/.venv/bin/edge-agent --config /etc/edge-agent/config.yaml cameras --check"
    say "      then: sudo systemctl restart edge-agent"
fi
