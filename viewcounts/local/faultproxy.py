"""A fault-injecting TCP proxy (Toxiproxy) between a client and a service, for fault tests.

``FaultProxy`` is a context manager that starts ``toxiproxy-server`` (built by
``make toxiproxy`` into ``build/bin/``) on a free loopback port, in its own process group,
and stops it by PID on exit. ``proxy(name, upstream)`` opens a ``Proxy`` that listens on
another free loopback port and forwards to ``upstream`` (``host:port``); point the client
at ``Proxy.listen`` instead of the service. Faults, all through Toxiproxy's HTTP API on
loopback:

* ``refuse()`` / ``restore()``: disable the proxy (its listener closes and open
  connections are reset, so new connections are refused) and enable it again;
* ``blackhole()`` / ``remove_toxics()``: a ``timeout`` toxic with timeout 0 on both
  directions: connections are accepted but no byte goes through either way until the
  toxic is removed (a partition: clients hang until their own deadlines).

Raises ``FileNotFoundError`` when the binary is missing, ``TimeoutError`` when the server
does not answer within ``startup_timeout_s``, ``ToxiproxyError`` when the API refuses a call.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.runners import BUILD_DIR
from viewcounts.local.emulators import StartedProcess, free_port, start_process

_LOG = logging.getLogger(__name__)
TOXIPROXY_BINARY = BUILD_DIR / "bin" / "toxiproxy-server"
API_TIMEOUT_S = 10.0


class ToxiproxyError(RuntimeError):
    pass


class FaultProxy(StartedProcess):
    def __init__(self, binary: Path = TOXIPROXY_BINARY, startup_timeout_s: float = 30.0) -> None:
        self._binary, self._startup_timeout_s = binary, startup_timeout_s
        self.api = ""

    def start(self) -> FaultProxy:
        if not self._binary.exists():
            raise FileNotFoundError(f"{self._binary} is missing: run `make toxiproxy` first")
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        self.proc, self.log_path = start_process(
            [str(self._binary), "-host", "127.0.0.1", "-port", str(port)],
            "toxiproxy",
            lambda: self._call("GET", "/proxies"),
            self._startup_timeout_s,
        )
        return self

    def proxy(self, name: str, upstream: str) -> Proxy:
        """A new enabled proxy ``name`` from a free loopback port to ``upstream`` (``host:port``)."""
        listen = f"127.0.0.1:{free_port()}"
        self._call("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream, "enabled": True})
        return Proxy(self, name, listen)

    def _call(self, method: str, path: str, body: dict | None = None):
        """One API call; returns the decoded JSON answer (None when empty). ``OSError`` when
        the server is unreachable, ``ToxiproxyError`` for an HTTP error status."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as e:
            raise ToxiproxyError(f"{method} {path}: HTTP {e.code} {e.read()[:500]!r}") from None
        return json.loads(raw) if raw.strip() else None


@dataclass
class Proxy:
    server: FaultProxy
    name: str
    listen: str

    def refuse(self) -> None:
        """Disable the proxy: open connections are closed, new ones refused."""
        self.server._call("POST", f"/proxies/{self.name}", {"enabled": False})

    def restore(self) -> None:
        """Enable the proxy again (on the same port)."""
        self.server._call("POST", f"/proxies/{self.name}", {"enabled": True})

    def blackhole(self) -> None:
        """Accept connections but pass no data either way until ``remove_toxics``."""
        for stream in ("upstream", "downstream"):
            self.server._call(
                "POST",
                f"/proxies/{self.name}/toxics",
                {
                    "name": f"blackhole-{stream}",
                    "type": "timeout",
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": {"timeout": 0},
                },
            )

    def remove_toxics(self) -> None:
        for toxic in self.server._call("GET", f"/proxies/{self.name}/toxics") or []:
            self.server._call("DELETE", f"/proxies/{self.name}/toxics/{toxic['name']}")

    def delete(self) -> None:
        self.server._call("DELETE", f"/proxies/{self.name}")
