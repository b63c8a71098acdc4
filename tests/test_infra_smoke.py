async def test_database_is_migrated_and_private(pg_pool):
    tables = {
        r["tablename"]
        for r in await pg_pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert {"tenants", "api_keys", "idempotency_keys", "dids", "schema_migrations"} <= tables
    await pg_pool.execute("INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'a')")


async def test_each_test_gets_a_clean_database(pg_pool):
    assert await pg_pool.fetchval("SELECT count(*) FROM tenants") == 0


async def test_redis_is_real_and_clean(redis_client):
    assert await redis_client.dbsize() == 0
    await redis_client.set("k", "v")
    assert await redis_client.get("k") == b"v"
