"""The worker's settings, validated once, and its connection budget."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigurationError

#: pgjobs' own connections, one per service that talks to the database on its own
#: schedule: claims; outcome writes; lease renewals (never behind a flush or a prune);
#: maintenance (rescue, retention, the listener's ping); LISTEN.
CONNECTION_ROLES = ("fetch", "complete", "heartbeat", "maintenance", "listen")
INTERNAL_CONNECTIONS = len(CONNECTION_ROLES)
POOL_HEADROOM = 2
DEFAULT_CONCURRENCY = 10
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_LEASE_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_HISTORY_RETENTION = 7 * 86400.0  # job_history rows (per-minute counts)
DEFAULT_DEAD_LETTER_RETENTION = 30 * 86400.0
DEFAULT_WAIT_FOR_DATABASE = 5.0
#: Leases are renewed this many times per lease period, so a live worker keeps its jobs
#: through a stall (GIL-bound handler, CPU starvation) of up to 3/4 of the lease. With
#: half the lease as slack, a 1 s lease was lost by a live worker whose handler was
#: zero-filling 900 MB on a loaded CI machine.
HEARTBEATS_PER_LEASE = 4
MIN_HEARTBEAT_INTERVAL = 0.1


def connection_roles(poll_only: bool) -> tuple[str, ...]:
    """The worker's own connections (``--poll-only`` has no LISTEN connection)."""
    return tuple(r for r in CONNECTION_ROLES if not (poll_only and r == "listen"))


def internal_connections(poll_only: bool) -> int:
    """How many connections the worker opens for itself (not for handlers)."""
    return len(connection_roles(poll_only))


def default_pool_size(concurrency: int, poll_only: bool = False) -> int:
    """Executors + pgjobs' own connections + a little headroom for handlers."""
    return concurrency + internal_connections(poll_only) + POOL_HEADROOM


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker is told. Build with :meth:`build`, which validates."""

    concurrency: int
    queues: tuple[str, ...] | None
    pool_size: int
    shutdown_timeout: float
    lease_timeout: float
    poll_interval: float
    poll_only: bool
    prefetch: int
    ping_interval: float
    ping_timeout: float
    history_retention: float | None  # None: keep forever
    dead_letter_retention: float | None
    retention_interval: float
    retention_delay: float  # first prune this long after start
    maintenance_statement_timeout: float
    wait_for_database: float

    @classmethod
    def build(
        cls,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        queues: Iterable[str] | None = None,
        pool_size: int | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        poll_only: bool = False,
        prefetch: int | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 10.0,
        history_retention: float | None = DEFAULT_HISTORY_RETENTION,
        dead_letter_retention: float | None = DEFAULT_DEAD_LETTER_RETENTION,
        retention_interval: float = 600.0,
        retention_delay: float = 5.0,
        maintenance_statement_timeout: float = 30.0,
        wait_for_database: float = DEFAULT_WAIT_FOR_DATABASE,
    ) -> WorkerSettings:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, got {concurrency!r}")
        names: tuple[str, ...] | None = None
        if queues is not None:
            if isinstance(queues, str):
                raise ValueError(f"queues must be a list of queue names, got the string "
                                 f"{queues!r} (write queues=[{queues!r}])")
            names = tuple(sorted(set(queues)))
            if not names:
                raise ValueError("queues=[] would serve no queue: omit queues to serve "
                                 "every queue")
        own = connection_roles(poll_only)
        size = default_pool_size(concurrency, poll_only) if pool_size is None else pool_size
        if concurrency + len(own) > size:
            raise ConfigurationError(
                f"pool size {size} is too small for concurrency {concurrency}: the worker "
                f"needs {concurrency} connections for handlers plus {len(own)} of its own "
                f"({', '.join(own)}); use --pool-size {concurrency + len(own)} or more, or "
                "lower --concurrency"
            )
        for name, value in (("shutdown_timeout", shutdown_timeout),
                            ("lease_timeout", lease_timeout), ("poll_interval", poll_interval),
                            ("maintenance_statement_timeout", maintenance_statement_timeout)):
            if not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if not wait_for_database >= 0:
            raise ConfigurationError("wait_for_database must be a number of seconds >= 0")
        return cls(
            concurrency=concurrency, queues=names, pool_size=size,
            shutdown_timeout=float(shutdown_timeout), lease_timeout=float(lease_timeout),
            poll_interval=float(poll_interval), poll_only=poll_only,
            prefetch=min(concurrency, 100) if prefetch is None else max(0, prefetch),
            ping_interval=ping_interval, ping_timeout=ping_timeout,
            history_retention=history_retention or None,
            dead_letter_retention=dead_letter_retention or None,
            retention_interval=retention_interval, retention_delay=retention_delay,
            maintenance_statement_timeout=maintenance_statement_timeout,
            wait_for_database=float(wait_for_database),
        )

    @property
    def capacity(self) -> int:
        """Jobs claimed and not yet finished running: executors plus prefetch."""
        return self.concurrency + self.prefetch

    @property
    def heartbeat_interval(self) -> float:
        return max(MIN_HEARTBEAT_INTERVAL, self.lease_timeout / HEARTBEATS_PER_LEASE)

    @property
    def rescue_interval(self) -> float:
        return min(5.0, max(0.5, self.lease_timeout / 4))

    @property
    def handler_pool_size(self) -> int:
        """What the handlers' pool may open: the budget minus our own connections."""
        return self.pool_size - internal_connections(self.poll_only)
