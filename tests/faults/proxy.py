"""A fault-injecting HTTP proxy for tests against a real system (Tryton): it listens on 127.0.0.1, forwards to
an upstream URL and, drawing from a seeded RNG, fails a share of the requests in one of three ways:

- ``503``: answers 503 Service Unavailable without forwarding (Tryton never saw the request);
- ``drop_before``: closes the connection without forwarding or answering (Tryton never saw it);
- ``drop_after``: forwards, lets Tryton act and answer, then closes the connection instead of answering
  (the answer lost after Tryton acted: a write may be committed without the client knowing).

    with FaultProxy("http://127.0.0.1:8000", fault_rate=0.3, seed=1234) as proxy:
        client = httpx.Client(base_url=proxy.url)
        ...
        print(proxy.counts)  # Counter({'requests': 52, 'forwarded': 43, '503': 5, 'drop_after': 4, ...})

The seed is printed (and logged) when the proxy starts; ``FAULT_SEED`` in the environment replays it. Decisions
are drawn in the order requests arrive, so a client that sends one request at a time meets the same faults
for the same seed. ``fault_rate`` may be changed while it runs (0 lets everything through).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

log = logging.getLogger(__name__)
FAULTS = ("503", "drop_before", "drop_after")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
              "content-encoding"}  # fmt: skip


def _what(command: str, path: str, body: bytes) -> str:
    """``POST /tryton/rpc/ model.account.invoice.create``: the JSON-RPC method when there is one."""
    try:
        method = json.loads(body).get("method", "")
    except (ValueError, AttributeError):
        method = ""
    return f"{command} {path} {method}".rstrip()


class _QuietServer(ThreadingHTTPServer):
    """A client that went away (a run killed mid-request) is no error of the proxy's: no traceback for it."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        fault_rate: float = 0.3,
        seed: int | None = None,
        faults: Mapping[str, float] | None = None,
        timeout: float = 120.0,
    ) -> None:
        """``faults`` weighs the kinds of fault (all three equally by default); ``fault_rate`` is the share of
        requests that meet one."""
        self.upstream = upstream.rstrip("/")
        self.fault_rate = fault_rate
        if seed is None:
            seed = int(os.environ["FAULT_SEED"]) if os.environ.get("FAULT_SEED") else random.randrange(2**32)
        self.seed = seed
        self.faults = dict(faults or dict.fromkeys(FAULTS, 1.0))
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.counts: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []  # per request: number, what, fate, seconds (to forward and answer)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=timeout)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def decide(self, what: str) -> dict[str, Any]:
        """The event of this request: its ``fate`` is ``forward`` or the fault it meets; counted and remembered
        in arrival order."""
        with self._lock:
            number = self.counts["requests"] + 1
            self.counts["requests"] = number
            fate = "forward"
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                kinds, weights = zip(*self.faults.items(), strict=True)
                fate = self._rng.choices(kinds, weights)[0]
            self.counts[fate] += 1
            event = {"number": number, "what": what, "fate": fate, "seconds": 0.0}
            self.events.append(event)
            return event

    def slowest(self, n: int = 5) -> list[dict[str, Any]]:
        return sorted(self.events, key=lambda e: -e["seconds"])[:n]

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    @property
    def faults_injected(self) -> int:
        return sum(self.counts[f] for f in FAULTS)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {self.counts[k]}" for k in ("requests", "forward", *FAULTS))
        return f"fault proxy (seed {self.seed}): {counts}"

    # -- the server ------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("fault proxy: " + format, *args)

            def _handle(self) -> None:
                started = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                event = proxy.decide(_what(self.command, self.path, body))
                try:
                    self._handle_as(event["fate"], body)
                finally:
                    event["seconds"] = round(time.monotonic() - started, 3)

            def _handle_as(self, fate: str, body: bytes) -> None:
                if fate == "503":
                    self._answer(503, {"Content-Type": "text/plain", "Retry-After": "0"}, b"injected fault\n")
                    return
                if fate == "drop_before":
                    self.close_connection = True  # nothing written: the client sees the connection closed
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    upstream = proxy._client.request(self.command, self.path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    proxy.count("upstream_error")
                    self._answer(502, {"Content-Type": "text/plain"}, f"upstream: {exc}\n".encode())
                    return
                proxy.count("forwarded")
                if fate == "drop_after":
                    self.close_connection = True  # upstream acted and answered; the answer is lost
                    return
                kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                self._answer(upstream.status_code, kept, upstream.content)

            def _answer(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        message = (f"fault proxy on {self.url} → {self.upstream}: {self.fault_rate:.0%} faults, seed {self.seed} "
                   f"(replay with FAULT_SEED={self.seed})")  # fmt: skip
        print(message)
        log.info(message)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._client.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        print(self.summary())
