#!/usr/bin/env bash
# The app's migration, run in the new release directory as the service's
# user with the service stopped: creates `rows` if missing, adds the column
# `note` (once), and sets PRAGMA user_version, in one transaction.
#
# The database: APP_DB, else $BERTH_DATA/app.db.
# behaviour.json "migrate": "ok" (default) | "fail" (commits a row with
# revision 'MIGRATION-PARTIAL', then exits 1: a restore must remove it) |
# "slow" (sleep APP_SLOW_SECS, default 30, then "ok") | "break" (deletes every
# other row, adds rows with revision 'MIGRATION-BAD', sets user_version 99,
# and succeeds: only a restore brings the data back);
# "user_version": the version to set (default 1).
# APP_PYTHON: the python to use (default /usr/bin/python3).
set -euo pipefail

py=${APP_PYTHON:-/usr/bin/python3}
db=${APP_DB:-${BERTH_DATA:+$BERTH_DATA/app.db}}
if [[ -z $db ]]; then
    echo "migrate: set APP_DB to the database (or BERTH_DATA to its directory)" >&2
    exit 2
fi

# The value of KEY in behaviour.json, or DEFAULT.
behaviour() {
    "$py" - "$1" "$2" <<'PY'
import json, sys
try:
    with open("behaviour.json", encoding="utf-8") as f:
        print(json.load(f).get(sys.argv[1], sys.argv[2]))
except FileNotFoundError:
    print(sys.argv[2])
PY
}

mode=$(behaviour migrate ok)
version=$(behaviour user_version 1)
case $mode in
    ok | fail | break) ;;
    slow)
        echo "migrate: slow on purpose, ${APP_SLOW_SECS:-30} s (behaviour migrate=slow)"
        sleep "${APP_SLOW_SECS:-30}"
        ;;
    *)
        echo "migrate: behaviour migrate=$mode; write ok, fail or slow" >&2
        exit 2
        ;;
esac

"$py" - "$db" "$mode" "$version" <<'PY'
import sqlite3, sys, time

path, mode, version = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, timeout=10, isolation_level=None)
db.execute("PRAGMA busy_timeout = 10000")
db.execute("PRAGMA journal_mode = WAL")
db.execute("""CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    revision TEXT NOT NULL
)""")
if mode == "fail":
    db.execute(
        "INSERT INTO rows (at, revision) VALUES (?, 'MIGRATION-PARTIAL')", (time.time(),)
    )
    db.close()
    sys.exit("migrate: failing on purpose after a partial write (behaviour migrate=fail)")
if mode == "break":
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM rows WHERE id % 2 = 0")
    db.executemany(
        "INSERT INTO rows (at, revision) VALUES (?, 'MIGRATION-BAD')", [(time.time(),)] * 100
    )
    db.execute("PRAGMA user_version = 99")
    db.execute("COMMIT")
    db.close()
    print(f"migrate: {path} broken on purpose (behaviour migrate=break)")
    sys.exit(0)
db.execute("BEGIN IMMEDIATE")
columns = [row[1] for row in db.execute("PRAGMA table_info(rows)")]
if "note" not in columns:
    db.execute("ALTER TABLE rows ADD COLUMN note TEXT")
db.execute(f"PRAGMA user_version = {version}")
db.execute("COMMIT")
db.close()
print(f"migrate: {path} at user_version {version}, column note "
      + ("added" if "note" not in columns else "already there"))
PY
