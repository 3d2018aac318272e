#!/usr/bin/env python3
"""The app berth's end-to-end tests deploy: an HTTP server that writes a row
to SQLite every 10 ms, each its own commit, tagged with its revision.

Python 3 standard library only. Run in a release directory (the cwd):

- `.berth-revision`: the revision ("unknown" without it)
- `behaviour.json` (optional), keys all optional:
  `"start": "ok" | "crash"`: crash writes one row, sleeps 0.3 s, exits 1
  `"health": "ok" | "fail" | "slow"`: fail answers /health with 500 forever
  (rows keep coming); slow answers 503 for APP_SLOW_SECS after start, then 200
  `"write_ms": N`: write a row every N ms (default 10)
  `"fail_instances": [N, …]`: the instances (BERTH_INSTANCE) that answer
  /health with 500 forever, as `"health": "fail"` does
  (`install` and `migrate` are read by install.sh and migrate.sh)

Socket activation: with LISTEN_FDS=1 and LISTEN_PID its own pid (systemd's
`<name>.socket`), it serves on file descriptor 3 and ignores APP_HOST and
APP_PORT. On SIGTERM it stops accepting and finishes the requests it has
accepted before it exits.

PostgreSQL: with APP_PG (a database name), a second writer inserts a row
into its table `pg_rows` every `pg_write_ms` (behaviour.json, default 5)
through one `psql` session as the app's user (peer authentication), started
again when it ends (a restore ends it).

Environment: APP_DB (default ../data/app.db, relative to the cwd), APP_PORT
(else PORT, as berth's unit passes it; default 8090), APP_HOST (default
127.0.0.1), APP_SLOW_SECS (default 20), BERTH_INSTANCE (the instance of a
template unit; default 1).

Endpoints: GET /health -> {"revision", "rows", "instance"}; GET /rows -> {"count",
"max_id", "revision"}; GET /api/items -> 401; POST /echo -> {"revision", "bytes"}
(the body's length, read whole); anything else 404.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

WRITE_EVERY = 0.01
BUSY_TIMEOUT_MS = 5000
SCHEMA = """CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    revision TEXT NOT NULL
)"""


def log(message):
    print(f"app: {message}", file=sys.stderr, flush=True)


def read_revision():
    try:
        with open(".berth-revision", encoding="utf-8") as f:
            return f.read().strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


def read_behaviour():
    try:
        with open("behaviour.json", encoding="utf-8") as f:
            behaviour = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as err:
        log(f"behaviour.json is not JSON: {err}")
        sys.exit(2)
    if not isinstance(behaviour, dict):
        log("behaviour.json is not an object")
        sys.exit(2)
    allowed = {"start": ("ok", "crash"), "health": ("ok", "fail", "slow")}
    for key, values in allowed.items():
        if behaviour.get(key, "ok") not in values:
            log(f"behaviour.json: {key} must be one of {', '.join(values)}")
            sys.exit(2)
    return behaviour


def inherited_socket():
    """The listening socket systemd passes (fd 3), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=3)


def connect(path):
    """A connection in autocommit mode: each INSERT is its own commit."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


def insert(db, revision):
    db.execute("INSERT INTO rows (at, revision) VALUES (?, ?)", (time.time(), revision))


def writer(path, revision, stop, every):
    db = connect(path)
    while not stop.is_set():
        try:
            insert(db, revision)
        except sqlite3.OperationalError as err:
            # Busy for longer than the busy timeout: try again.
            if "locked" not in str(err) and "busy" not in str(err):
                log(f"writer: {err}")
                os._exit(1)
        stop.wait(every)
    db.close()


PG_TABLE = """CREATE TABLE IF NOT EXISTS pg_rows (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    revision text NOT NULL
);"""


def pg_writer(db, revision, stop, every):
    """Inserts a row every `every` seconds through one psql session."""
    insert = f"INSERT INTO pg_rows (revision) VALUES ('{revision}');\n"
    while not stop.is_set():
        session = subprocess.Popen(
            ["psql", "-X", "-q", "-d", f"dbname={db}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            session.stdin.write(PG_TABLE + "\n")
            while not stop.is_set() and session.poll() is None:
                session.stdin.write(insert)
                session.stdin.flush()
                stop.wait(every)
            session.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        session.wait()
        stop.wait(0.2)


def main():
    revision = read_revision()
    behaviour = read_behaviour()
    db_path = os.environ.get("APP_DB", os.path.join("..", "data", "app.db"))
    host = os.environ.get("APP_HOST", "127.0.0.1")
    port = int(os.environ.get("APP_PORT") or os.environ.get("PORT") or "8090")
    instance = int(os.environ.get("BERTH_INSTANCE") or "1")
    failing = instance in behaviour.get("fail_instances", [])
    slow_secs = float(os.environ.get("APP_SLOW_SECS", "20"))
    started = time.monotonic()

    if not os.path.isdir(os.path.dirname(os.path.abspath(db_path))):
        log(f"the directory of APP_DB={db_path} does not exist")
        sys.exit(1)
    db = connect(db_path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(SCHEMA)

    if behaviour.get("start") == "crash":
        insert(db, revision)
        log(f"revision {revision}: crashing on purpose (behaviour start=crash)")
        time.sleep(0.3)
        sys.exit(1)

    def count():
        # One connection per request: the handler runs in its own thread.
        with closing(connect(db_path)) as reader:
            return reader.execute("SELECT count(*), coalesce(max(id), 0) FROM rows").fetchone()

    class Handler(BaseHTTPRequestHandler):
        def send(self, status, body, headers=()):
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/health":
                health = behaviour.get("health", "ok")
                if health == "fail" or failing:
                    self.send(500, {"revision": revision, "instance": instance,
                                    "error": "health=fail"})
                    return
                if health == "slow" and time.monotonic() - started < slow_secs:
                    self.send(503, {"revision": revision, "starting": True})
                    return
                rows, _ = count()
                self.send(200, {"revision": revision, "rows": rows, "instance": instance})
            elif path == "/rows":
                rows, max_id = count()
                self.send(200, {"count": rows, "max_id": max_id, "revision": revision})
            elif path == "/api/items":
                self.send(401, {"error": "unauthorized"}, [("WWW-Authenticate", "Bearer")])
            else:
                self.send(404, {"error": "not found"})

        def do_POST(self):
            # The body is read whole before the answer, as an app would.
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if urlsplit(self.path).path == "/echo":
                self.send(200, {"revision": revision, "bytes": len(body)})
            else:
                self.send(404, {"error": "not found"})

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

    stop = threading.Event()
    every = float(behaviour.get("write_ms", WRITE_EVERY * 1000)) / 1000
    thread = threading.Thread(target=writer, args=(db_path, revision, stop, every), daemon=True)
    thread.start()
    if os.environ.get("APP_PG"):
        pg_every = float(behaviour.get("pg_write_ms", 5)) / 1000
        pg_args = (os.environ["APP_PG"], revision, stop, pg_every)
        threading.Thread(target=pg_writer, args=pg_args, daemon=True).start()

    listener = inherited_socket()
    if listener is None:
        server = ThreadingHTTPServer((host, port), Handler)
    else:
        server = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
        host, port = listener.getsockname()[:2]
    # server_close() waits for the requests in progress.
    server.daemon_threads = False

    def shut_down(signum, _frame):
        log(f"signal {signum}: stopping")
        stop.set()
        # shutdown() waits for serve_forever, which runs in this thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    how = "socket from systemd" if listener is not None else "own socket"
    log(f"revision {revision}, instance {instance} on http://{host}:{port} ({how}), db {db_path}, "
        f"behaviour {json.dumps(behaviour)}")
    server.serve_forever()
    server.server_close()
    thread.join(timeout=5)
    db.close()
    log("stopped")


if __name__ == "__main__":
    main()
