"""PostgreSQL and Redis for benchmarks: the configured servers, or private ones like `trunkline dev`."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway import db
from gateway.devservices import PrivatePostgres, PrivateRedis, short_runtime_dir


@dataclass
class BenchServices:
    database_url: str
    redis_url: str
    # The private servers' process ids (PostgreSQL: the postmaster), to count their CPU;
    # empty when the configured servers are used.
    server_pids: dict[str, int] = field(default_factory=dict)


@contextmanager
def bench_services(
    database: str = "trunkline_bench", *, keep: Path | None = None
) -> Iterator[BenchServices]:
    """A fresh, migrated database and a Redis; private servers unless TRUNKLINE_*__URL are set.

    `keep`: the private servers' data lives in that directory and stays there after the run,
    and an existing database is migrated, not dropped — for a benchmark whose set-up (a big
    import) a later run can reuse. The caller removes the directory when done with it.
    """
    runtime = keep or short_runtime_dir("tl-bench-")
    started: list[PrivatePostgres | PrivateRedis] = []
    try:
        pg_url = os.environ.get("TRUNKLINE_DATABASE__URL")
        if not pg_url:
            pg = PrivatePostgres(runtime / "pg", delete_on_stop=keep is None)
            pg_url = pg.start()
            started.append(pg)
        redis_url = os.environ.get("TRUNKLINE_REDIS__URL")
        if not redis_url:
            rd = PrivateRedis(runtime / "redis")
            redis_url = rd.start()
            started.append(rd)
        url = urlunsplit(urlsplit(pg_url)._replace(path="/" + database))

        async def prepare() -> None:
            admin = await asyncpg.connect(pg_url)
            try:
                exists = await admin.fetchval(
                    "SELECT true FROM pg_database WHERE datname = $1", database
                )
                if keep is None or not exists:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                    await admin.execute(f'CREATE DATABASE "{database}"')
            finally:
                await admin.close()
            await db.migrate(url)

        asyncio.run(prepare())
        pids = {}
        for server in started:
            if isinstance(server, PrivatePostgres):
                pids["postgresql"] = int(
                    (server.data_dir / "postmaster.pid").read_text().split()[0]
                )
            else:
                pids["redis"] = server.pid
        yield BenchServices(database_url=url, redis_url=redis_url, server_pids=pids)
    finally:
        for server in reversed(started):
            server.stop()
        if keep is None:
            shutil.rmtree(runtime, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def daemon_env(services: BenchServices, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env |= {
        "TRUNKLINE_DATABASE__URL": services.database_url,
        "TRUNKLINE_REDIS__URL": services.redis_url,
        "TRUNKLINE_HTTP__PORT": str(port),
        "TRUNKLINE_LOG__LEVEL": "warning",
        "TRUNKLINE_LOG__FORMAT": "json",
    }
    return env | extra


ROOT = Path(__file__).resolve().parents[1]
