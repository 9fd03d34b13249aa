"""A small threaded TCP proxy with a black-hole switch, for network fault injection.

``TcpProxy`` listens on 127.0.0.1 (a random port) and forwards every connection to an
upstream address (PostgreSQL on 127.0.0.1:5432 by default). A connection can be
*black-holed*: from then on the bytes it carries, in both directions, are read and
dropped; its sockets stay open, so neither end sees an error, a reset or an EOF. That is
what a peer sees when a NAT entry or a middlebox silently stops forwarding, except that
the proxy's own kernel still ACKs what the client sends (a userspace proxy cannot stop
that), so TCP-level timeouts on the client (keepalives, ``tcp_user_timeout``) never fire;
only an application-level check notices.

Switches:

* ``blackhole_existing()``: every connection open right now goes dark (``only=`` picks
  some of them, e.g. by the upstream port PostgreSQL reports as ``client_port``);
* ``blackhole_new(True)``: connections accepted from now on go dark (they are never
  connected upstream, so a client's connect attempt hangs until its connect_timeout);
  ``blackhole_new(False)`` lets new connections through again. Connections that went
  dark stay dark;
* ``cut_blackholed()``: close the dark connections at both ends (what a TCP timeout
  would eventually do if one could fire).

Closing either end of a connection still closes the other (so black-holed connections
do not leave server backends behind once the client gives up), and ``close()`` stops
every thread and closes every socket.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

CHUNK = 65536
TICK = 0.1  # how often idle threads look at the stop flag


@dataclass(eq=False)
class ProxiedConnection:
    """One client connection and (unless it was dark from the start) its upstream."""

    client: socket.socket
    client_port: int
    upstream: socket.socket | None = None
    #: local port of the upstream socket = ``pg_stat_activity.client_port`` of the backend
    upstream_port: int | None = None
    blackholed: bool = False
    forwarded: int = 0
    dropped: int = 0
    closed: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)


class TcpProxy:
    """``with TcpProxy() as proxy: url = proxy.url(pg_url)`` — see the module doc."""

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, listen_port))
        self._listener.listen(128)
        self._listener.settimeout(TICK)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new_dark = False
        self.connections: list[ProxiedConnection] = []
        self.accepted = 0
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"tcp-proxy-accept-{self.port}")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._accept_thread.start()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every socket, join every thread."""
        self._stop.set()
        if self._accept_thread.is_alive():
            self._accept_thread.join(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self.connections)
        for conn in conns:
            self._close_pair(conn)
        for conn in conns:
            if conn.thread is not None and conn.thread.is_alive():
                conn.thread.join(timeout)

    def threads_alive(self) -> int:
        """Proxy threads still running (0 after ``close()``)."""
        with self._lock:
            threads = [c.thread for c in self.connections if c.thread is not None]
        return sum(1 for t in [self._accept_thread, *threads] if t.is_alive())

    def url(self, base_url: str) -> str:
        """``base_url`` (a postgresql:// URL to the upstream) pointed at the proxy instead."""
        return self.url_for(base_url, self.host, self.port)

    @staticmethod
    def url_for(base_url: str, host: str, port: int) -> str:
        """``base_url`` pointed at ``host:port`` (e.g. a proxy that is not listening yet)."""
        parts = urlsplit(base_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo + '@' if userinfo else ''}{host}:{port}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query)
                           if k not in ("host", "hostaddr", "port")])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    # --- switches ------------------------------------------------------------------------

    def blackhole_existing(self, only: Callable[[ProxiedConnection], bool] | None = None
                           ) -> int:
        """Black-hole every open connection (or those ``only`` selects); returns how many."""
        count = 0
        with self._lock:
            for conn in self.connections:
                if not conn.closed and not conn.blackholed and (only is None or only(conn)):
                    conn.blackholed = True
                    count += 1
        return count

    def blackhole_new(self, on: bool = True) -> None:
        """Black-hole (or, with ``False``, forward again) connections accepted from now on."""
        with self._lock:
            self._new_dark = on

    def cut_blackholed(self) -> int:
        """Close black-holed connections at both ends (what a TCP timeout would do)."""
        with self._lock:
            dark = [c for c in self.connections if c.blackholed and not c.closed]
        for conn in dark:
            self._close_pair(conn)
        return len(dark)

    def open_connections(self) -> list[ProxiedConnection]:
        with self._lock:
            return [c for c in self.connections if not c.closed]

    # --- the threads ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, (_, client_port) = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                dark = self._new_dark
            conn = ProxiedConnection(client=client, client_port=client_port, blackholed=dark)
            if not dark:
                try:
                    upstream = socket.create_connection(self.upstream, timeout=10)
                except OSError:
                    with contextlib.suppress(OSError):
                        client.close()
                    continue
                conn.upstream = upstream
                conn.upstream_port = upstream.getsockname()[1]
            conn.thread = threading.Thread(target=self._pump, args=(conn,), daemon=True,
                                           name=f"tcp-proxy-{self.port}-{client_port}")
            with self._lock:
                if self._stop.is_set():
                    self._close_pair(conn)
                    return
                self.connections.append(conn)
            conn.thread.start()

    def _pump(self, conn: ProxiedConnection) -> None:
        sockets = [s for s in (conn.client, conn.upstream) if s is not None]
        for s in sockets:
            s.setblocking(True)
            s.settimeout(None)
        peer = {conn.client: conn.upstream, conn.upstream: conn.client}
        with selectors.DefaultSelector() as selector:
            for s in sockets:
                selector.register(s, selectors.EVENT_READ)
            try:
                while not self._stop.is_set() and not conn.closed:
                    for key, _ in selector.select(TICK):
                        sock: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = sock.recv(CHUNK)
                        if not data:
                            return
                        target = peer[sock]
                        if conn.blackholed or target is None:
                            conn.dropped += len(data)
                        else:
                            target.sendall(data)
                            conn.forwarded += len(data)
            except (OSError, ValueError):
                return
            finally:
                self._close_pair(conn)

    def _close_pair(self, conn: ProxiedConnection) -> None:
        conn.closed = True
        for s in (conn.client, conn.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
