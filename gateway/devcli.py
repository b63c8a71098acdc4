"""`trunkline dev`: the zero-setup mode behind `make run`.

Starts a private PostgreSQL and Redis when no URL is configured (gateway/devservices.py),
writes their URLs where the other commands look (gateway/devstate.py), migrates, makes the dev
tenant and reuses its key (one key however often it runs), then serves like `trunkline run`.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import SecretStr

from gateway import db, devstate
from gateway.core.errors import Problem
from gateway.daemon import run_daemon, serve
from gateway.devservices import PrivatePostgres, PrivateRedis
from gateway.ops import reach
from gateway.settings import Settings


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Zero-setup: private PostgreSQL/Redis when no URL is given, a dev tenant and key, then serve."""
    from gateway.core.scopes import SCOPES
    from gateway.tenants.service import authenticate_token, create_key, create_tenant

    data_dir = settings.dev.data_dir.resolve()
    started: list[PrivatePostgres | PrivateRedis] = []
    try:
        if settings.database.url is None:
            pg = PrivatePostgres(data_dir / "pg")
            print(f"starting private PostgreSQL in {pg.data_dir} …", flush=True)
            url = pg.start()
            started.append(pg)
            settings.database = settings.database.model_copy(update={"url": SecretStr(url)})
        if settings.redis.url is None:
            rd = PrivateRedis(data_dir / "redis")
            print(f"starting private Redis in {rd.data_dir} …", flush=True)
            url = rd.start()
            started.append(rd)
            settings.redis = settings.redis.model_copy(update={"url": SecretStr(url)})

        base = f"http://{settings.http.host}:{settings.http.port}"
        local = base.replace("://0.0.0.0:", "://127.0.0.1:")
        if started:  # for the CLI beside us; URLs given in the environment are there already
            devstate.write_services(
                data_dir,
                database_url=settings.database_url(),
                redis_url=settings.redis_url(),
                http_url=local,
            )

        async def main() -> None:
            await db.migrate(settings.database_url())

            async def provision(pool: Any) -> tuple[str, bool]:
                try:
                    await create_tenant(pool, settings.dev.tenant)
                except Problem as exc:
                    if exc.code != "tenant_exists":
                        raise
                kept = devstate.read_dev_key(data_dir)
                if kept is not None and await authenticate_token(pool, kept) is not None:
                    return kept, False
                # The dev box's one tenant is its operator too: ops:read for the dashboard's
                # trunk-wide panels (keys made without --scopes do not get it).
                issued = await create_key(pool, settings.dev.tenant, sorted(SCOPES), "dev")
                devstate.write_dev_key(data_dir, issued.token)
                return issued.token, True

            token, minted = await reach.with_pool(settings, provision)
            print()
            key_file = data_dir / devstate.DEV_KEY
            if minted:
                print(f"Dev API key for tenant {settings.dev.tenant} (kept in {key_file}):")
            else:
                print(f"Dev API key for tenant {settings.dev.tenant} (the one in {key_file}):")
            print(f"  {token}")
            print(f'  try: curl -H "Authorization: Bearer {token}" {base}/v1/whoami')
            print(f"       curl {base}/readyz      docs: {base}/docs")
            print(f"       dashboard: {local}/dashboard (paste the key once)")
            print("       trunkline status    (the CLI finds this database and Redis by itself)")
            print(flush=True)
            await serve(settings, args.role, dev=True)

        run_daemon(main())
    finally:
        if started:
            devstate.forget_services(data_dir)
        for server in reversed(started):
            server.stop()
    return 0
