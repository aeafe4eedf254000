"""The sample application repository the lab generates at <state>/app (git, non-bare).

History (fixed dates and author, so the SHAs are the same on every machine):
    v1          first release
    v2          second release            <- branch main
    bad-health  v2 + /health answers 500  (tag on a side commit)
    slow-start  v2 + 5 s before it listens (tag on a side commit)

The app is plain Python stdlib: a threaded http.server on :8080 with a tiny memcached
text-protocol client as page cache. Every response carries the release id (basename of the
realpath of the directory it was started from) in `X-Release` and in the body.
`sh bin/restart`, run in the release directory, (re)starts it detached.
"""

from __future__ import annotations

import os
import subprocess

APP_PY = r'''#!/usr/bin/env python3
"""labapp: the dsas lab sample application (stdlib only)."""
import os, socket, sys, threading, time
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "@VERSION@"
HEALTH_STATUS = @HEALTH_STATUS@      # the bad-health release answers 500
START_DELAY = @START_DELAY@          # the slow-start release waits before it listens
PORT = int(os.environ.get("LABAPP_PORT", "8080"))
RELEASE_DIR = os.path.realpath(os.getcwd())
RELEASE = os.path.basename(RELEASE_DIR)
APP_ROOT = os.path.dirname(os.path.dirname(RELEASE_DIR))       # <deploy_to>
SHARED = os.path.join(APP_ROOT, "shared")
HOST = socket.gethostname()
STARTED = time.time()


def memcached_addr():
    try:
        with open(os.path.join(SHARED, "memcached.addr")) as f:
            h, p = f.read().strip().rsplit(":", 1)
            return h, int(p)
    except (OSError, ValueError):
        return "10.77.2.5", 11211


class Memcache:
    """Minimal memcached text-protocol client (get/set), one short-lived connection per call."""
    def __init__(self, addr, timeout=0.3):
        self.addr, self.timeout = addr, timeout
        self.errors = 0

    def _call(self, payload, until):
        with socket.create_connection(self.addr, timeout=self.timeout) as s:
            s.sendall(payload)
            data = b""
            while not any(data.endswith(u) for u in until):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    def get(self, key):
        try:
            data = self._call(b"get " + key.encode() + b"\r\n", (b"END\r\n",))
        except OSError:
            self.errors += 1
            return None
        if data.startswith(b"VALUE "):
            header, rest = data.split(b"\r\n", 1)
            n = int(header.split()[3])
            return rest[:n]
        return None

    def set(self, key, value, ttl=300):
        try:
            r = self._call(b"set %s 0 %d %d\r\n%s\r\n" % (key.encode(), ttl, len(value), value),
                           (b"STORED\r\n", b"ERROR\r\n", b"NOT_STORED\r\n"))
            return r.startswith(b"STORED")
        except OSError:
            self.errors += 1
            return False


CACHE = Memcache(memcached_addr())


def render(path):
    time.sleep(0.05)          # "expensive" page: what the cache saves
    return (f"labapp {VERSION} release={RELEASE} path={path} rendered-by={HOST}\n").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "labapp/" + VERSION

    def send(self, code, body, cache="-"):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Release", RELEASE)
        self.send_header("X-Host", HOST)
        self.send_header("X-Version", VERSION)
        self.send_header("X-Cache", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def page(self, body, cache):
        # the cached page may have been rendered by another host: say who served it
        self.send(200, body + f"served-by={HOST} release={RELEASE}\n".encode(), cache)

    def do_GET(self):
        if self.path.startswith("/lb-check"):  # the balancers' check: also fails while drained for a release
            if os.path.exists(os.path.join(SHARED, "maintenance")):
                return self.send(503, f"maintenance (shared/maintenance) release={RELEASE}\n".encode())
            self.path = "/health"
        if self.path.startswith("/health"):
            if os.path.exists(os.path.join(SHARED, "unhealthy")):
                return self.send(503, f"unhealthy (shared/unhealthy) release={RELEASE}\n".encode())
            code = HEALTH_STATUS
            return self.send(code, f"{'ok' if code == 200 else 'broken'} release={RELEASE} "
                                   f"version={VERSION} host={HOST}\n".encode())
        if self.path.startswith("/slow"):  # /slow?seconds=N: a long request (at most 30 s), for drain tests
            try:
                seconds = min(float(self.path.partition("seconds=")[2] or 1), 30.0)
            except ValueError:
                seconds = 1.0
            time.sleep(seconds)
            return self.send(200, f"slow {seconds:g}s release={RELEASE} host={HOST}\n".encode())
        if self.path.startswith("/release"):
            return self.send(200, (RELEASE + "\n").encode())
        key = f"labapp:{RELEASE}:{self.path}"[:200].replace(" ", "_")
        body = CACHE.get(key)
        if body is not None:
            return self.page(body, "HIT")
        body = render(self.path)
        stored = CACHE.set(key, body)
        return self.page(body, "MISS" if stored else "NOCACHE")

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s %s\n" % (time.strftime("%H:%M:%S"), self.address_string(), fmt % args))


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(): a DNS lookup that hangs 5 s with no
        # resolver reachable (as in the lab). Skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]


def main():
    if START_DELAY:
        time.sleep(START_DELAY)
    for attempt in range(50):
        try:
            srv = Server(("0.0.0.0", PORT), Handler)
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit("labapp: port %d busy" % PORT)
    print(f"labapp {VERSION} release={RELEASE} listening on :{PORT}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
'''

RESTART_SH = r'''#!/bin/sh
# (Re)start labapp from the current directory (a release dir, e.g. <deploy_to>/current).
# Detached (setsid), pid file and log under <deploy_to>/shared/. Returns at once.
set -eu
REL=$(pwd -P)
APP_ROOT=$(dirname "$(dirname "$REL")")
SHARED=$APP_ROOT/shared
mkdir -p "$SHARED/log"
PIDF=$SHARED/labapp.pid
# running = exists and not a zombie (an exited app may wait a while to be reaped by init)
running() { st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
if [ -f "$PIDF" ]; then
  old=$(cat "$PIDF")
  if [ -n "$old" ] && grep -q labapp "/proc/$old/cmdline" 2>/dev/null; then
    kill -TERM "$old" 2>/dev/null || true
    i=0
    while running "$old" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    running "$old" && kill -KILL "$old" 2>/dev/null || true
  fi
fi
cd "$REL"
setsid python3 "$REL/app.py" labapp </dev/null >>"$SHARED/log/labapp.log" 2>&1 &
echo $! > "$PIDF"
echo "labapp restarted: release $(basename "$REL") pid $(cat "$PIDF")"
'''

STOP_SH = r'''#!/bin/sh
# Stop labapp (pid file under <deploy_to>/shared/).
REL=$(pwd -P)
PIDF=$(dirname "$(dirname "$REL")")/shared/labapp.pid
[ -f "$PIDF" ] && kill -TERM "$(cat "$PIDF")" 2>/dev/null
rm -f "$PIDF"
echo "labapp stopped"
'''

README = """# labapp

Sample application of the dsas lab. `sh bin/restart` in a release directory (re)starts it
on :8080; `GET /health` is the health check; every response names its release in
`X-Release`. It caches pages in memcached (address in `<deploy_to>/shared/memcached.addr`).
"""

AUTHOR = {"GIT_AUTHOR_NAME": "dsas lab", "GIT_AUTHOR_EMAIL": "lab@dsas.invalid",
          "GIT_COMMITTER_NAME": "dsas lab", "GIT_COMMITTER_EMAIL": "lab@dsas.invalid"}


def _files(version: str, health: int = 200, delay: int = 0) -> dict[str, str]:
    app = (APP_PY.replace("@VERSION@", version).replace("@HEALTH_STATUS@", str(health))
           .replace("@START_DELAY@", str(delay)))
    return {"app.py": app, "bin/restart": RESTART_SH, "bin/stop": STOP_SH, "README.md": README,
            "VERSION": version + "\n"}


def _git(repo: str, *args: str, date: str | None = None) -> str:
    env = dict(os.environ, **AUTHOR, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    p = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


def _commit(repo: str, files: dict[str, str], msg: str, date: str) -> None:
    for rel, text in files.items():
        path = os.path.join(repo, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755 if rel.startswith("bin/") or rel == "app.py" else 0o644)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", msg, date=date)


REFS = ("v1", "v2", "bad-health", "slow-start")


def ensure_app_repo(path: str) -> str:
    """Create the sample repo at `path` unless it is already complete; return main's SHA."""
    if os.path.isdir(os.path.join(path, ".git")):
        try:
            for ref in REFS + ("main",):
                _git(path, "rev-parse", "--verify", "-q", ref)
            return _git(path, "rev-parse", "main")
        except RuntimeError:
            pass
    subprocess.run(["rm", "-rf", path], check=True)
    os.makedirs(path)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "dsas lab")
    _git(path, "config", "user.email", "lab@dsas.invalid")
    _commit(path, _files("v1"), "labapp v1", "2024-01-01T10:00:00Z")
    _git(path, "tag", "v1")
    _commit(path, _files("v2"), "labapp v2", "2024-01-02T10:00:00Z")
    _git(path, "tag", "v2")
    _git(path, "checkout", "-q", "-b", "side-bad")
    _commit(path, _files("bad-health", health=500), "labapp bad-health: /health answers 500",
            "2024-01-03T10:00:00Z")
    _git(path, "tag", "bad-health")
    _git(path, "checkout", "-q", "main")
    _git(path, "checkout", "-q", "-b", "side-slow")
    _commit(path, _files("slow-start", delay=5), "labapp slow-start: 5 s before it listens",
            "2024-01-04T10:00:00Z")
    _git(path, "tag", "slow-start")
    _git(path, "checkout", "-q", "main")
    _git(path, "branch", "-q", "-D", "side-bad", "side-slow")
    return _git(path, "rev-parse", "main")


def release_files(version: str = "v2") -> dict[str, str]:
    """The files of a release (for tests that place a release by hand)."""
    if version == "bad-health":
        return _files(version, health=500)
    if version == "slow-start":
        return _files(version, delay=5)
    return _files(version)
