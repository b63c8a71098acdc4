"""What `trunkline dev` (`make run`) leaves in its data directory for the CLI beside it.

``services.json`` holds the URLs of the private PostgreSQL and Redis it started, so that
``trunkline status``, ``tail``, ``dlq`` … run in the same directory reach them with nothing
set; a TRUNKLINE_*__URL in the environment or config still wins. ``dev-key`` holds the dev
API key, so that each ``make run`` prints the same key again instead of minting another
never-expiring one (a revoked or unknown key is replaced). Both files are 0600: the key is a
bearer secret, and the URLs name the private servers' sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pydantic import SecretStr

from gateway.settings import Settings

SERVICES = "services.json"
DEV_KEY = "dev-key"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def write_services(data_dir: Path, *, database_url: str, redis_url: str, http_url: str) -> Path:
    path = data_dir / SERVICES
    body = {"database_url": database_url, "redis_url": redis_url, "http_url": http_url}
    _write_private(path, json.dumps(body, indent=2) + "\n")
    return path


def forget_services(data_dir: Path) -> None:
    """On a clean stop: the servers are gone, so nothing should point at them."""
    with contextlib.suppress(FileNotFoundError):
        (data_dir / SERVICES).unlink()


def read_services(data_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((data_dir / SERVICES).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def use_dev_services(settings: Settings) -> dict[str, str]:
    """Fill the database and Redis URLs that are not configured from ``services.json``; the
    names of the ones taken from it (for error messages that say where a URL came from)."""
    found = read_services(settings.dev.data_dir)
    taken: dict[str, str] = {}
    if settings.database.url is None and found.get("database_url"):
        settings.database = settings.database.model_copy(
            update={"url": SecretStr(found["database_url"])}
        )
        taken["database"] = found["database_url"]
    if settings.redis.url is None and found.get("redis_url"):
        settings.redis = settings.redis.model_copy(update={"url": SecretStr(found["redis_url"])})
        taken["redis"] = found["redis_url"]
    return taken


def read_dev_key(data_dir: Path) -> str | None:
    try:
        token = (data_dir / DEV_KEY).read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


def write_dev_key(data_dir: Path, token: str) -> None:
    _write_private(data_dir / DEV_KEY, token + "\n")
