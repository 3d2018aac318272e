#!/usr/bin/env bash
# The app's install step (as `bun install --frozen-lockfile` would be), run
# in the new release directory as the service's user: checks that
# requirements.lock exists and parses, then writes the `.installed` marker.
#
# behaviour.json "install": "ok" (default) | "fail" (exit 1, a message on
# stderr, no marker) | "slow" (sleep APP_SLOW_SECS, default 30, then "ok").
# APP_PYTHON: the python to use (default /usr/bin/python3).
set -euo pipefail

py=${APP_PYTHON:-/usr/bin/python3}

# The value of KEY in behaviour.json, or "ok".
behaviour() {
    "$py" - "$1" <<'PY'
import json, sys
try:
    with open("behaviour.json", encoding="utf-8") as f:
        print(json.load(f).get(sys.argv[1], "ok"))
except FileNotFoundError:
    print("ok")
PY
}

mode=$(behaviour install)
case $mode in
    ok) ;;
    fail)
        echo "install: failing on purpose (behaviour install=fail)" >&2
        exit 1
        ;;
    slow)
        echo "install: slow on purpose, ${APP_SLOW_SECS:-30} s (behaviour install=slow)"
        sleep "${APP_SLOW_SECS:-30}"
        ;;
    *)
        echo "install: behaviour install=$mode; write ok, fail or slow" >&2
        exit 2
        ;;
esac

if [[ ! -f requirements.lock ]]; then
    echo "install: requirements.lock is missing in $PWD" >&2
    exit 1
fi
"$py" - <<'PY'
import json, sys
try:
    with open("requirements.lock", encoding="utf-8") as f:
        lock = json.load(f)
    packages = lock["packages"]
except (ValueError, KeyError, TypeError) as err:
    sys.exit(f"install: requirements.lock is not a lock file: {err!r}")
with open(".installed", "w", encoding="utf-8") as f:
    for name, version in sorted(packages.items()):
        f.write(f"{name}=={version}\n")
print(f"install: {len(packages)} packages from requirements.lock")
PY
