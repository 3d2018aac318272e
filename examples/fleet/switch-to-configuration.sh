#!/bin/sh
# Stand-in for NixOS's switch-to-configuration (see system.nix).
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
goal=${1:-}
case "$goal" in
  switch | test) ;;
  boot) exit 0 ;;
  dry-activate)
    echo "would restart the following units: example-web.service"
    exit 0
    ;;
  *)
    echo "usage: switch-to-configuration switch|boot|test|dry-activate" >&2
    exit 1
    ;;
esac

# Nix substitutes @delay@ when it builds the system: not a constant.
# shellcheck disable=SC2050
if [ "@delay@" != 0 ]; then sleep "@delay@"; fi

# The host's own /nix (each lab host has a private one).
state=/nix/var/berth-example
www=$state/www
mkdir -p "$www"

# An earlier generation may have broken the network or sshd: repair both.
for dev in /sys/class/net/*; do
  ip link set "$(basename "$dev")" up 2>/dev/null || true
done
if [ -d /run/systemd/system ]; then
  systemctl start ssh.service 2>/dev/null || true
  systemctl reset-failed 2>/dev/null || true
fi

echo "@name@ @version@" >"$www/version"
if ! { [ -f "$state/web.pid" ] && kill -0 "$(cat "$state/web.pid")" 2>/dev/null; }; then
  setsid /usr/bin/python3 -m http.server 8080 --directory "$www" >"$state/web.log" 2>&1 </dev/null &
  echo $! >"$state/web.pid"
  # Wait until it listens, so a health check right after sees it.
  for _ in $(seq 50); do
    /usr/bin/python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8080), 0.1)' 2>/dev/null && break
    sleep 0.1
  done
fi

same_netns() {
  [ "$(readlink "/proc/$1/ns/net")" = "$(readlink /proc/self/ns/net)" ]
}

# Nix substitutes @behaviour@ when it builds the system: not a constant.
# shellcheck disable=SC2194
case "@behaviour@" in
  healthy) echo ok >"$www/health" ;;
  unhealthy) rm -f "$www/health" ;;
  failed-unit)
    # A unit that fails while switch-to-configuration itself succeeds.
    echo ok >"$www/health"
    systemd-run --quiet --wait --unit berth-example-broken.service false || true
    ;;
  failed-units)
    echo "warning: the following units failed: example-web.service" >&2
    exit 4
    ;;
  kill-sshd)
    echo ok >"$www/health"
    if [ -d /run/systemd/system ]; then
      systemctl stop ssh.service
    else
      for pid in $(pgrep -x sshd); do
        if same_netns "$pid"; then kill "$pid"; fi
      done
    fi
    ;;
  link-down)
    echo ok >"$www/health"
    for dev in /sys/class/net/*; do
      name=$(basename "$dev")
      [ "$name" = lo ] || ip link set "$name" down
    done
    ;;
  hang)
    echo ok >"$www/health"
    echo "switching to @name@ @version@ hangs" >&2
    sleep 2147483647
    ;;
esac
echo "switched to @name@ @version@ (@behaviour@)"
