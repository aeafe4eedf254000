"""The lab boot server's HTTP side (python3 stdlib only; `dsas lab up` runs it inside boot1).

    python3 boothttp.py --root <state>/boot/http --spool <state>/boot/callbacks \
        --log <state>/logs/boot-http.log [--addr 0.0.0.0] [--port 8000]

GET/HEAD /<path>          a regular file under --root (no directory listing, no way out of it)
POST /callback/<token>    token ^[A-Za-z0-9_-]{16,64}$, body <= 8 KiB with a Content-Length:
                          the raw body is stored atomically (tmp + rename) as <spool>/<token>;
                          answer 200 "ok"
anything else             404 (unknown path, missing file) or 400 (bad token, bad or too large body)

Every request is logged with a timestamp to --log. The file is run as a script (copied into the
state directory by `lab up`), so it imports nothing from dsasdeploy.
"""

from __future__ import annotations

import argparse
import os
import re
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_BODY = 8 * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = "dsas-lab-boot/1"
    protocol_version = "HTTP/1.0"
    timeout = 15  # a client that stalls does not hold a thread for ever

    # ---- plumbing ----
    def log_message(self, fmt, *args):  # http.server's own messages (errors): into our log
        self.server.log(f"{self.client_address[0]} note {fmt % args}")

    def log_request(self, code="-", size="-"):
        pass  # logged by reply() with more detail

    def reply(self, code: int, body: bytes = b"", ctype: str = "text/plain; charset=utf-8",
              note: str = "") -> None:
        # logged first: by the time a client has the answer, the log has the request
        self.server.log(f"{self.client_address[0]} {self.command} {self.path[:300]!r} {code} "
                        f"{len(body)}" + (f" {note}" if note else ""))
        self.send_response_only(code)
        self.send_header("Server", self.server_version)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _path(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)

    # ---- GET: files under the root ----
    def do_GET(self):
        path = self._path()
        root = self.server.root
        if "\0" in path or not path.startswith("/"):
            return self.reply(400, b"bad path\n")
        full = os.path.realpath(os.path.join(root, path.lstrip("/")))
        if not full.startswith(root + os.sep) or not os.path.isfile(full):
            return self.reply(404, b"not found\n")
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError:
            return self.reply(404, b"not found\n")
        return self.reply(200, data, "application/octet-stream")

    do_HEAD = do_GET

    # ---- POST /callback/<token> ----
    def do_POST(self):
        path = self._path()
        parts = path.split("/")
        if len(parts) != 3 or parts[:2] != ["", "callback"]:
            return self.reply(404, b"not found\n")
        token = parts[2]
        if not TOKEN.match(token):
            return self.reply(400, b"bad token\n")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self.reply(400, b"Content-Length required\n")
        if length < 0 or length > MAX_BODY:
            return self.reply(400, b"body too large\n", note=f"length={length}")
        body = self.rfile.read(length)
        if len(body) != length:
            return self.reply(400, b"short body\n")
        spool = self.server.spool
        tmp = os.path.join(spool, f".{token}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(spool, token))
        return self.reply(200, b"ok", note=f"stored {len(body)} bytes as {token}")

    def do_PUT(self):
        self.reply(400, b"unsupported method\n")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr, root: str, spool: str, log_path: str):
        self.root = os.path.realpath(root)
        self.spool = spool
        self._log = open(log_path, "a", buffering=1)
        self._lock = threading.Lock()
        super().__init__(addr, Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls getfqdn(): a DNS lookup that hangs with no resolver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def log(self, line: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        with self._lock:
            self._log.write(f"{stamp} {now:.3f} {line}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--spool", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--addr", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args(argv)
    os.makedirs(a.root, exist_ok=True)
    os.makedirs(a.spool, exist_ok=True)
    srv = Server((a.addr, a.port), a.root, a.spool, a.log)
    srv.log(f"listening on {a.addr}:{a.port} root={srv.root} spool={a.spool} pid={os.getpid()}")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
