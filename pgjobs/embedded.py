"""Zero-setup embedded PostgreSQL for pgjobs.

``embedded_database_url()`` starts (or reuses) a private PostgreSQL server whose files live
in one directory, ``.pgjobs`` in the current directory by default, and returns a libpq URL
for it. The server keeps running after the Python process exits, so every later CLI
invocation with the same directory finds the same server and the same data.

Layout of ``data_dir``::

    data_dir/
        embedded.lock   flock()ed while a process checks, starts or stops the server
        pgdata/         the PostgreSQL data directory (PG_VERSION, postmaster.pid, ...)
        pgdata/log      the server log (pgserver's fixed name; the fallback uses it too)

The server listens on no TCP address, only on a unix socket: in ``pgdata/`` when that
path is short enough for a socket (~107 bytes), otherwise in a short directory
(``/tmp/pgjobs-<hash of data_dir>`` for the fallback; pgserver picks its own under its
runtime directory). Authentication is ``trust``; the role is ``postgres``.

Two ways to run the server, tried in this order:

1. The ``pgserver`` package (wheels with PostgreSQL binaries inside, for CPython 3.11/3.12
   on x86-64 Linux and macOS).
2. The machine's own PostgreSQL server binaries: ``initdb``/``pg_ctl`` on ``PATH``, in
   ``pg_config --bindir``, or the newest ``/usr/lib/postgresql/*/bin`` (Debian).

A data directory is tied to one PostgreSQL major version, so an existing ``pgdata`` is
started with whichever of the two matches its ``PG_VERSION``.

Running as root: PostgreSQL refuses to run as root, so both ways run the server as an
unprivileged user. pgserver creates and uses a ``pgserver`` user (and widens permissions of
every parent directory of ``pgdata`` to ``g+rx,o+rx``). The fallback runs as the owner of an
existing ``pgdata``, else ``postgres``, else a ``pgjobs`` system user that it creates; it
only adds ``o+x`` (traverse, not list) to parent directories that user cannot enter.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import errors, sql

__all__ = [
    "EmbeddedServerError",
    "EmbeddedServerStatus",
    "embedded_available",
    "embedded_database_url",
    "embedded_server_status",
    "stop_embedded_server",
]

_logger = logging.getLogger(__name__)

DEFAULT_DIRNAME = ".pgjobs"
_PGDATA = "pgdata"
_LOG = "log"
_LOCK = "embedded.lock"
_SUPERUSER = "postgres"
_FALLBACK_OS_USER = "pgjobs"
# sun_path is 108 bytes on Linux and 104 on macOS, both counting the trailing NUL.
_MAX_SOCKET_PATH = 103
_LOCK_TIMEOUT = 120.0
_START_TIMEOUT = 60
_STOP_TIMEOUT = 30.0

_NOT_FOUND = (
    "no PostgreSQL found: `pip install 'pgjobs[embedded]'` (pgserver: CPython 3.11/3.12 on "
    "x86-64 Linux and macOS) or install PostgreSQL server binaries (e.g. `apt-get install "
    "postgresql`), or set PGJOBS_DATABASE_URL"
)


class EmbeddedServerError(Exception):
    """The embedded PostgreSQL could not be found, started or stopped.

    The message is one line saying what went wrong and what to do about it.
    """


@dataclass(frozen=True)
class _Postmaster:
    """The parts of ``postmaster.pid`` we need."""

    pid: int
    port: int
    socket_dir: Path | None
    status: str


@dataclass(frozen=True)
class EmbeddedServerStatus:
    """What ``pgjobs server status`` reports about one data directory."""

    data_dir: Path
    #: A PostgreSQL data directory exists (``initdb`` has run).
    initialized: bool
    #: Major version of the data directory (``PG_VERSION``), if initialized.
    version: str | None
    #: Process id of the running postmaster, None when not running.
    pid: int | None
    #: URL of the ``postgres`` database while running.
    url: str | None

    @property
    def running(self) -> bool:
        """The server accepts connections."""
        return self.pid is not None


# --------------------------------------------------------------------------- public API


def pgserver_has_wheels() -> bool:
    """Whether pgserver publishes wheels for this interpreter and platform (the markers of
    the ``pgjobs[embedded]`` extra in pyproject.toml)."""
    system, machine = platform.system(), platform.machine().lower()
    if sys.version_info >= (3, 13):
        return False
    return (system == "Linux" and machine in ("x86_64", "amd64")) or system == "Darwin"


def embedded_available() -> bool:
    """Whether pgjobs may fall back to an embedded server when no URL is configured.

    Yes when the ``pgjobs[embedded]`` extra brought pgserver. Where pgserver has no wheels
    the extra can bring nothing, so the machine's own PostgreSQL binaries serve instead
    (see the module docstring). A plain ``pip install pgjobs`` on a platform with wheels
    has neither, so a missing URL is an error there rather than a silent database.
    """
    if _load_pgserver() is not None:
        return True
    return not pgserver_has_wheels() and _find_postgres_bindir() is not None


def embedded_server_status(data_dir: Path | None = None) -> EmbeddedServerStatus:
    """Report on the embedded server of ``data_dir`` (default ``./.pgjobs``); never starts it."""
    data_dir = _resolve(data_dir if data_dir is not None else Path.cwd() / DEFAULT_DIRNAME)
    pgdata = data_dir / _PGDATA
    version_file = pgdata / "PG_VERSION"
    version = version_file.read_text().strip() if version_file.is_file() else None
    info = _running_postmaster(pgdata)
    return EmbeddedServerStatus(
        data_dir=data_dir,
        initialized=version is not None,
        version=version,
        pid=info.pid if info is not None else None,
        url=_url(info, _SUPERUSER) if info is not None else None,
    )


def embedded_database_url(data_dir: Path | None = None, *, database: str = "postgres") -> str:
    """Start (or reuse) the embedded PostgreSQL in ``data_dir`` and return a URL to ``database``.

    ``data_dir`` defaults to ``Path.cwd() / ".pgjobs"``. The server keeps running after this
    process exits, so a second process (or CLI invocation) gets the same server and data.
    ``database`` is created if missing. Safe to call from several processes at once.

    Raises:
        EmbeddedServerError: no usable PostgreSQL, or the server failed to start.
    """
    data_dir = _resolve(data_dir if data_dir is not None else Path.cwd() / DEFAULT_DIRNAME)
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / _PGDATA
    # One process at a time decides whether to initdb/start, so two CLI invocations
    # racing on a fresh directory cannot both run initdb or start two postmasters.
    with _locked(data_dir):
        info = _running_postmaster(pgdata)
        if info is None:
            _start(data_dir, pgdata)
            info = _running_postmaster(pgdata)
            if info is None:
                raise EmbeddedServerError(
                    f"PostgreSQL in {pgdata} did not come up; see {pgdata / _LOG} "
                    "or set PGJOBS_DATABASE_URL"
                )
        _ensure_database(_url(info, _SUPERUSER), database)
    return _url(info, database)


def stop_embedded_server(data_dir: Path) -> int | None:
    """Stop the embedded PostgreSQL in ``data_dir`` if it is running; its data is kept.

    Uses a fast shutdown (open sessions are disconnected), escalating to an immediate
    shutdown if the server has not exited within 30 seconds. Returns the stopped
    postmaster's pid, or None when nothing was running.
    """
    data_dir = _resolve(data_dir)
    pgdata = data_dir / _PGDATA
    if not pgdata.is_dir():
        return None
    stopped: int | None = None
    with _locked(data_dir):
        info = _read_postmaster(pgdata)
        if info is not None and _is_postmaster(info.pid):
            stopped = info.pid
            # Signal the postmaster directly (what `pg_ctl stop` does): it needs no binaries
            # and, unlike pg_ctl, works as root whichever OS user runs the server.
            if not _signal_and_wait(info.pid, signal.SIGINT, _STOP_TIMEOUT):
                _logger.warning("PostgreSQL %s ignored fast shutdown; using immediate", info.pid)
                if not _signal_and_wait(info.pid, signal.SIGQUIT, 10.0):
                    raise EmbeddedServerError(
                        f"PostgreSQL (pid {info.pid}) in {pgdata} did not stop; kill it by hand"
                    )
        # The short socket directory is ours only when the fallback made it.
        with contextlib.suppress(OSError):
            _short_socket_dir(data_dir).rmdir()
    return stopped


# --------------------------------------------------------------------------- discovery


def _load_pgserver() -> ModuleType | None:
    """Return the ``pgserver`` module, or None when it is not installed (or has no wheel)."""
    try:
        # pgserver resolves platformdirs' runtime dir at import and warns when
        # XDG_RUNTIME_DIR is unset (root, containers); that is noise for a CLI.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        return None
    return pgserver


def _find_postgres_bindir() -> Path | None:
    """Find a directory holding the machine's ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            # Follow symlinks (e.g. /usr/local/bin/pg_ctl) to the directory with `postgres`.
            candidates.append(Path(found).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    # Debian/Ubuntu keep server binaries off PATH, one directory per major version.
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates.extend(sorted(debian, key=lambda p: int(p.parent.name), reverse=True))
    for bindir in candidates:
        if all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _binary_major(postgres: Path) -> str | None:
    """Major version of a ``postgres`` executable (``"16"``), or None if it cannot run."""
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\b(\d+)(?:\.\d+)?", out)
    return match.group(1) if match else None


# --------------------------------------------------------------------------- starting


def _start(data_dir: Path, pgdata: Path) -> None:
    """Start the server with whichever backend can run ``pgdata`` (caller holds the lock)."""
    version_file = pgdata / "PG_VERSION"
    existing = version_file.read_text().strip() if version_file.is_file() else None
    available: list[str] = []

    pgserver = _load_pgserver()
    if pgserver is not None:
        # The wheel ships its binaries in pgserver/pginstall/bin (POSTGRES_BIN_PATH is not
        # re-exported at the package top level).
        bundled = Path(pgserver.__file__ or ".").parent / "pginstall" / "bin"
        major = _binary_major(bundled / "postgres")
        if existing is None or existing == major:
            _start_with_pgserver(pgserver, pgdata)
            return
        available.append(f"{major} (pgserver)")

    bindir = _find_postgres_bindir()
    if bindir is not None:
        major = _binary_major(bindir / "postgres")
        if existing is None or existing == major:
            _start_with_binaries(bindir, data_dir, pgdata)
            return
        available.append(f"{major} ({bindir})")

    if not available:
        raise EmbeddedServerError(_NOT_FOUND)
    raise EmbeddedServerError(
        f"{pgdata} holds PostgreSQL {existing} data but only PostgreSQL "
        f"{', '.join(available)} is available; install PostgreSQL {existing} server binaries, "
        f"move {data_dir} aside to start afresh, or set PGJOBS_DATABASE_URL"
    )


def _start_with_pgserver(pgserver: ModuleType, pgdata: Path) -> None:
    try:
        # cleanup_mode=None: leave the server running when this process exits.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # pgserver raises bare CalledProcessError/AssertionError/...
        detail = _first_line(str(exc)) or type(exc).__name__
        raise EmbeddedServerError(
            f"pgserver could not start PostgreSQL in {pgdata} ({detail}); "
            f"see {pgdata / _LOG}, or set PGJOBS_DATABASE_URL"
        ) from exc
    # get_server caches its handle for the life of the process, so after
    # stop_embedded_server it would hand back the stale handle and start nothing; and
    # the handle's atexit hook only does bookkeeping when cleanup_mode is None. We track
    # the server through postmaster.pid ourselves, so drop both.
    cleanup = getattr(server, "_cleanup", None)
    if cleanup is not None:
        atexit.unregister(cleanup)
    instances = getattr(getattr(pgserver, "PostgresServer", None), "_instances", None)
    if isinstance(instances, dict):
        instances.pop(pgdata, None)


def _start_with_binaries(bindir: Path, data_dir: Path, pgdata: Path) -> None:
    """initdb (if needed) and start ``pgdata`` with the machine's own binaries."""
    run_as = _server_user(pgdata)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    log = pgdata / _LOG
    if run_as is not None:
        os.chown(pgdata, run_as.pw_uid, run_as.pw_gid)
        _ensure_traversable(pgdata, run_as)

    if not (pgdata / "PG_VERSION").is_file():
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                # C locale exists everywhere; the user's LANG may name one that does not.
                "--locale=C",
            ],
            run_as,
            what=f"initdb of {pgdata}",
        )

    socket_dir = _socket_dir(data_dir, pgdata, run_as)
    if run_as is not None and not log.exists():
        # pg_ctl opens the log as the server user; make sure it may.
        log.touch(mode=0o600)
        os.chown(log, run_as.pw_uid, run_as.pw_gid)
    options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))}"
    try:
        _run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(pgdata),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-l",
                str(log),
                "-o",
                options,
            ],
            run_as,
            what=f"pg_ctl start of {pgdata}",
        )
    except EmbeddedServerError as exc:
        tail = _last_log_line(log)
        if tail:
            raise EmbeddedServerError(f"{exc.args[0]}; server log says: {tail}") from exc
        raise


def _server_user(pgdata: Path) -> pwd.struct_passwd | None:
    """The OS user to run initdb/pg_ctl as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    # Keep using whoever already owns the data (e.g. pgserver's `pgserver` user).
    with contextlib.suppress(OSError, KeyError):
        owner = pgdata.stat().st_uid
        if owner != 0:
            return pwd.getpwuid(owner)
    for name in (_SUPERUSER, _FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    useradd = shutil.which("useradd")
    if useradd:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    _FALLBACK_OS_USER,
                ],
                capture_output=True,
                timeout=30,
                check=True,
            )
            return pwd.getpwnam(_FALLBACK_OS_USER)
    raise EmbeddedServerError(
        "PostgreSQL cannot run as root and there is no `postgres` user to run it as; "
        "create one (or run as a normal user), or set PGJOBS_DATABASE_URL"
    )


def _ensure_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Add o+x to parents of ``path`` that ``user`` could not otherwise enter."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            _logger.warning(
                "adding o+x to %s so PostgreSQL (user %s) can reach %s", parent, user.pw_name, path
            )
            parent.chmod(st.st_mode | 0o001)


def _short_socket_dir(data_dir: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:12]
    return Path("/tmp") / f"pgjobs-{digest}"


def _socket_dir(data_dir: Path, pgdata: Path, run_as: pwd.struct_passwd | None) -> Path:
    """``pgdata`` when its socket path fits in sun_path, else a private dir under /tmp."""
    if len(os.fsencode(pgdata / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
        return pgdata
    short = _short_socket_dir(data_dir)
    uid = run_as.pw_uid if run_as is not None else os.geteuid()
    try:
        short.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(short, run_as.pw_uid, run_as.pw_gid)
    except FileExistsError:
        pass
    # /tmp is shared: refuse a directory (or symlink) planted by someone else.
    st = short.lstat()
    if not short.is_dir() or short.is_symlink() or st.st_uid != uid:
        raise EmbeddedServerError(
            f"socket directory {short} is not a directory owned by uid {uid}; "
            "remove it, or set PGJOBS_DATABASE_URL"
        )
    return short


def _run(cmd: list[str], run_as: pwd.struct_passwd | None, *, what: str) -> None:
    """Run a PostgreSQL tool (as ``run_as`` if given); raise a one-line error on failure."""
    kwargs: dict[str, Any] = {}
    env = dict(os.environ)
    # A PGDATA/PGPORT/PGHOST in the caller's environment must not leak into our server.
    for var in ("PGDATA", "PGPORT", "PGHOST", "PGOPTIONS"):
        env.pop(var, None)
    if run_as is not None:
        kwargs.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
        env.update(HOME=run_as.pw_dir, USER=run_as.pw_name, LOGNAME=run_as.pw_name)
    # Temporary files, not pipes: the postmaster forked by pg_ctl could otherwise hold a
    # pipe open and make communicate() hang (pgserver works around the same thing).
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",  # the server user may not be allowed into our cwd
                start_new_session=True,  # Ctrl-C in this terminal must not reach postgres
                timeout=_START_TIMEOUT + 30,
                check=False,
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedServerError(
                f"{what} failed ({_first_line(str(exc))}); set PGJOBS_DATABASE_URL to use "
                "another server"
            ) from exc
        out.seek(0)
        output = out.read().decode(errors="replace")
    if proc.returncode != 0:
        lines = [line for line in output.splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise EmbeddedServerError(f"{what} failed: {detail}")
    _logger.debug("%s: %s", what, output)


# --------------------------------------------------------------------------- state


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    """Parse ``postmaster.pid``; None if absent or not (yet) complete."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    # pid, datadir, start time, port, socket dir, listen addr, shmem key, status
    if len(lines) < 8:
        return None
    try:
        pid, port = int(lines[0]), int(lines[3])
    except ValueError:
        return None
    socket_dir = Path(lines[4].strip()) if lines[4].strip() else None
    return _Postmaster(pid=pid, port=port, socket_dir=socket_dir, status=lines[7].strip())


def _is_postmaster(pid: int) -> bool:
    """True if ``pid`` is a live postgres process (a stale pid file may name a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but belongs to another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True  # no /proc (macOS): trust kill(0)
    except OSError:
        return True
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
    return state != "Z" and comm in ("postgres", "postmaster")


def _running_postmaster(pgdata: Path) -> _Postmaster | None:
    """The postmaster serving ``pgdata`` if it is up and accepting connections."""
    info = _read_postmaster(pgdata)
    if info is None or info.status != "ready" or info.socket_dir is None:
        return None
    if not _is_postmaster(info.pid):
        return None
    if not (info.socket_dir / f".s.PGSQL.{info.port}").exists():
        return None
    return info


def _url(info: _Postmaster, database: str) -> str:
    assert info.socket_dir is not None
    host = quote(str(info.socket_dir), safe="/")
    # Explicit port: the socket file name depends on it, and PGPORT must not override it.
    return f"postgresql://{_SUPERUSER}@/{quote(database, safe='')}?host={host}&port={info.port}"


def _ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE ``database`` unless it exists."""
    if database == _SUPERUSER:
        return
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                # A concurrent creator outside our lock surfaces as either error.
                with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise EmbeddedServerError(
            f"could not create database {database!r} on the embedded PostgreSQL: "
            f"{_first_line(str(exc))}"
        ) from exc


# --------------------------------------------------------------------------- helpers


def _resolve(path: Path) -> Path:
    return Path(path).expanduser().resolve()


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``data_dir/embedded.lock``, waiting up to two minutes."""
    with open(data_dir / _LOCK, "a") as handle:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"timed out waiting for {data_dir / _LOCK}; another pgjobs process "
                        "is stuck starting the embedded PostgreSQL"
                    ) from exc
                time.sleep(0.05)  # another process is starting the server; poll the lock
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _signal_and_wait(pid: int, sig: signal.Signals, timeout: float) -> bool:
    """Send ``sig`` to the postmaster and wait until it has exited; False on timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_postmaster(pid):
            return True
        time.sleep(0.05)  # the postmaster is not our child, so there is nothing to wait() on
    return False


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_log_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
