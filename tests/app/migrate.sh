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
# With APP_PG (a PostgreSQL database the user owns), first, in one
# transaction: "pg_migrate": "ok" (default: pgcrypto, the tables pg_rows
# and items with 100 rows, a view, a grant to the role reporting) | "break"
# (drops items.name and the view with it, rewrites every pg_rows row, moves
# a sequence, adds a table: only a restore brings it back).
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

if [[ -n ${APP_PG:-} ]]; then
    case $(behaviour pg_migrate ok) in
        ok) sql="
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE IF NOT EXISTS pg_rows (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    revision text NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id serial PRIMARY KEY,
    name text NOT NULL,
    secret bytea NOT NULL DEFAULT gen_random_bytes(8)
);
INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 100) g
    WHERE NOT EXISTS (SELECT 1 FROM items);
CREATE OR REPLACE VIEW item_names AS SELECT id, name FROM items;
GRANT SELECT ON items, item_names TO reporting;" ;;
        break) sql="
ALTER TABLE items DROP COLUMN name CASCADE;
UPDATE pg_rows SET revision = 'MIGRATION-BAD';
SELECT setval('items_id_seq', 99999);
CREATE TABLE junk (x int);" ;;
        *)
            echo "migrate: behaviour pg_migrate must be ok or break" >&2
            exit 2
            ;;
    esac
    psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "dbname=$APP_PG" -c "$sql"
    echo "migrate: PostgreSQL database $APP_PG migrated ($(behaviour pg_migrate ok))"
fi

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
