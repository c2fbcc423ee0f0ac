"""The node agent's kubelet endpoint, just enough for `kubectl logs`.

The API server proxies `kubectl logs` to https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint>
/containerLogs/<namespace>/<pod>/<container>; without --kubelet-certificate-authority it does not
verify the kubelet's certificate, and this test endpoint does not authenticate it either.
Supported query parameters: tailLines, limitBytes, follow.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from devcluster.certs import make_ca, sign

LogLocator = Callable[[str, str], tuple[Path | None, Callable[[], bool]]]
"""(namespace, pod) -> (log file or None, is-the-process-still-running)."""


class LogServer:
    """A threaded HTTPS server on 127.0.0.1:<free port> serving pod logs."""

    def __init__(self, locate: LogLocator, workdir: Path) -> None:
        self.locate = locate
        certs = workdir / "kubelet-pki"
        certs.mkdir(parents=True, exist_ok=True)
        ca = make_ca(certs, "kube-sft-node-agent-ca")
        pair = sign(
            ca,
            certs,
            "kubelet",
            "/CN=kube-sft-node-agent",
            ["subjectAltName=IP:127.0.0.1", "extendedKeyUsage=serverAuth"],
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.cert, pair.key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(locate))
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="node-agent-logs", daemon=True)

    def start(self) -> LogServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


def _handler(locate: LogLocator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) < 3 or parts[0] != "containerLogs":
                self.send_error(404, "only /containerLogs is served by the test node agent")
                return
            path, running = locate(parts[1], parts[2])
            if path is None:
                self.send_error(404, f"pod {parts[1]}/{parts[2]} has no logs on this node")
                return
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            data = path.read_bytes() if path.exists() else b""
            if "tailLines" in query:
                data = _tail(data, int(query["tailLines"]))
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"])]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)
            if query.get("follow") in ("true", "1"):
                self._follow(path, path.stat().st_size if path.exists() else 0, running)

        def _follow(self, path: Path, offset: int, running: Callable[[], bool]) -> None:
            while True:
                alive = running()
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                if chunk:
                    offset += len(chunk)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                if not alive:
                    return
                time.sleep(0.2)

    return Handler
