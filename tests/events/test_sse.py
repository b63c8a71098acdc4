"""GET /v1/events: framing, resume, filters, reset, slow clients, lost bus messages."""

from __future__ import annotations

import asyncio

from tests.events.sse import SSEStream, sse_headers
from tests.events.support import emit_events
from tests.helpers import auth


async def open_stream(client, token, last_event_id=None, query=""):
    resp = await client.get(f"/v1/events{query}", headers=sse_headers(token, last_event_id))
    assert resp.status == 200, await resp.text()
    return SSEStream(resp)


async def test_live_events_arrive_with_id_type_and_json_data(client, make_key, tenant_id, pg_pool):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    stream = await open_stream(client, token)
    assert stream.resp.headers["Content-Type"] == "text/event-stream"
    assert stream.resp.headers["Cache-Control"] == "no-cache"
    await emit_events(pg_pool, acme, 3, status="delivered")
    frames = [await stream.next() for _ in range(3)]
    assert stream.retry == 3000
    assert [f.event for f in frames] == ["message.delivered"] * 3
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    body = frames[0].json
    assert set(body) == {"id", "type", "subject", "trace_id", "data", "created_at"}
    assert body["id"] == seqs[0] and body["data"] == {"i": 0, "status": "delivered"}
    await stream.close()


async def read_n(stream: SSEStream, n: int, timeout: float = 10.0):
    out = []
    for _ in range(n):
        frame = await stream.next(timeout)
        assert frame is not None, f"stream ended after {len(out)} of {n} frames"
        out.append(frame)
    return out


async def test_resume_with_last_event_id_replays_what_was_missed_once(
    client, make_key, tenant_id, pg_pool
):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    stream = await open_stream(client, token, last_event_id=0)
    await emit_events(pg_pool, acme, 5)
    first = await read_n(stream, 2)
    await stream.close()
    await emit_events(pg_pool, acme, 5)

    stream = await open_stream(client, token, last_event_id=first[-1].seq)
    rest = await read_n(stream, 8)
    seqs = [f.seq for f in first + rest]
    all_seqs = [
        r["seq"]
        for r in await pg_pool.fetch(
            "SELECT seq FROM events WHERE tenant_id = $1 ORDER BY seq", acme
        )
    ]
    assert seqs == all_seqs
    # ...and then it is live, with nothing repeated.
    await emit_events(pg_pool, acme, 1)
    (live,) = await read_n(stream, 1)
    assert live.seq > seqs[-1]
    await stream.close()


async def test_query_parameter_is_the_first_connect_and_the_header_wins(
    client, make_key, tenant_id, pg_pool
):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 4)
    await asyncio.sleep(0)
    seqs = []
    for _ in range(50):
        rows = await pg_pool.fetch("SELECT seq FROM events WHERE seq IS NOT NULL ORDER BY seq")
        seqs = [r["seq"] for r in rows]
        if len(seqs) == 4:
            break
        await asyncio.sleep(0.05)
    stream = await open_stream(client, token, query=f"?last_event_id={seqs[0]}")
    assert [f.seq for f in await read_n(stream, 3)] == seqs[1:]
    await stream.close()
    resp = await client.get(
        f"/v1/events?last_event_id={seqs[0]}",
        headers=sse_headers(token, last_event_id=seqs[2]),
    )
    stream = SSEStream(resp)
    assert [f.seq for f in await read_n(stream, 1)] == seqs[3:]
    await stream.close()


async def test_types_filter_applies_to_replay_and_live(client, make_key, tenant_id, pg_pool):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 2, type_="message.sent")
    await emit_events(pg_pool, acme, 2, type_="call.answered")
    await emit_events(pg_pool, acme, 2, type_="message.failed")
    await emit_events(pg_pool, acme, 1, type_="messages_x.other")
    stream = await open_stream(client, token, 0, query="?types=call.*,message.failed")
    replayed = await read_n(stream, 4)
    assert [f.event for f in replayed] == ["call.answered"] * 2 + ["message.failed"] * 2
    await emit_events(pg_pool, acme, 1, type_="message.sent")
    await emit_events(pg_pool, acme, 1, type_="call.completed")
    (live,) = await read_n(stream, 1)
    assert live.event == "call.completed"
    await stream.close()


async def test_stream_needs_the_event_stream_accept_header_and_the_scope(client, make_key):
    token = await make_key("acme")
    resp = await client.get("/v1/events", headers=auth(token))
    assert resp.status == 406
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert (await resp.json())["code"] == "not_acceptable"
    reader = await make_key("acme", ["messages:read"])
    resp = await client.get("/v1/events", headers=sse_headers(reader))
    assert resp.status == 403
    resp = await client.get("/v1/events", headers=sse_headers(token) | {"Last-Event-ID": "abc"})
    assert resp.status == 422
    resp = await client.get("/v1/events?types=Bad Type", headers=sse_headers(token))
    assert resp.status == 422
    resp = await client.get("/v1/events", headers={"Accept": "text/event-stream"})
    assert resp.status == 401
    # Ids beyond PostgreSQL's bigint are invalid input, not a server error.
    huge = 2**70
    resp = await client.get(f"/v1/events/page?after={huge}", headers=auth(token))
    assert resp.status == 422
    resp = await client.get(f"/v1/events?last_event_id={huge}", headers=sse_headers(token))
    assert resp.status == 422
    resp = await client.get("/v1/events", headers=sse_headers(token, huge))
    assert resp.status == 422


async def test_idle_stream_gets_heartbeats(app_client, make_key):
    client = await app_client("api", events={"sse_heartbeat": 0.2})
    token = await make_key("acme")
    stream = await open_stream(client, token)
    with_timeout = asyncio.create_task(stream.next(timeout=0.8))
    try:
        await with_timeout
    except TimeoutError:
        pass
    assert "keepalive" in stream.comments
    await stream.close()


async def test_resume_point_older_than_retention_gets_reset(client, make_key, tenant_id, pg_pool):
    from gateway.events import log

    token = await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 6)
    seqs = await wait_sequenced(pg_pool, 6)
    await pg_pool.execute(
        "UPDATE events SET created_at = now() - interval '8 days' WHERE seq <= $1", seqs[2]
    )
    assert await log.prune(pg_pool, older_than=7 * 86400, batch=2) == 3
    assert await log.pruned_through(pg_pool) == seqs[2]

    stream = await open_stream(client, token, last_event_id=seqs[0])
    frames = await read_n(stream, 4)
    assert frames[0].event == "reset" and frames[0].seq == seqs[2]
    assert frames[0].json["last_event_id"] == seqs[0]
    assert [f.seq for f in frames[1:]] == seqs[3:]
    await stream.close()
    # A client that resumes from the reset id is fine again.
    stream = await open_stream(client, token, last_event_id=seqs[2])
    assert [f.seq for f in await read_n(stream, 3)] == seqs[3:]
    await stream.close()
    # The JSON page says the same.
    page = await (await client.get(f"/v1/events/page?after={seqs[0]}", headers=auth(token))).json()
    assert page["reset"] is True
    assert [e["id"] for e in page["data"]] == seqs[3:]
    # A resume point from the future (another database?) is a reset too, not a silent wait.
    stream = await open_stream(client, token, last_event_id=seqs[-1] + 1000)
    (frame,) = await read_n(stream, 1)
    assert frame.event == "reset" and frame.seq == seqs[-1]
    await stream.close()


async def wait_sequenced(pg_pool, n: int, timeout: float = 15.0) -> list[int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await pg_pool.fetch("SELECT seq FROM events WHERE seq IS NOT NULL ORDER BY seq")
        if len(rows) >= n:
            return [r["seq"] for r in rows]
        assert asyncio.get_running_loop().time() < deadline, f"only {len(rows)} of {n} sequenced"
        await asyncio.sleep(0.02)


async def test_json_page_pages_in_order(client, make_key, tenant_id, pg_pool):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 7)
    seqs = await wait_sequenced(pg_pool, 7)
    got, after = [], None
    while True:
        q = "?limit=3" + (f"&after={after}" if after is not None else "")
        page = await (await client.get(f"/v1/events/page{q}", headers=auth(token))).json()
        got += [e["id"] for e in page["data"]]
        after = page["last_event_id"]
        if not page["has_more"]:
            break
    assert got == seqs and after == seqs[-1]
    empty = await (await client.get(f"/v1/events/page?after={after}", headers=auth(token))).json()
    assert empty == {"data": [], "has_more": False, "last_event_id": after, "reset": False}


async def test_shutdown_ends_open_streams_at_once(app_client, make_key):
    import time

    client = await app_client("api")
    token = await make_key("acme")
    streams = [await open_stream(client, token) for _ in range(3)]
    started = time.monotonic()
    await client.server.close()
    assert time.monotonic() - started < 2
    for s in streams:
        assert await s.next(timeout=2) is None
    await client.close()


async def test_a_client_that_stops_reading_is_cut_off_and_resumes_without_loss(
    app_client, make_key, tenant_id, pg_pool
):
    import aiohttp

    from gateway.events.http import HUB

    client = await app_client(events={"sse_client_buffer": 4, "sse_flush_interval": 0})
    token = await make_key("acme")
    acme = await tenant_id("acme")
    stalled = await open_stream(client, token, last_event_id=0)  # ...and never reads
    hub = client.app[HUB].hub
    total = 200
    for _ in range(total // 10):  # 20 MB: far more than the socket buffers hold
        await emit_events(pg_pool, acme, 10, type_="message.sent", pad="x" * 100_000)
    for _ in range(750):
        if hub.client_count == 0:
            break
        await asyncio.sleep(0.02)
    assert hub.client_count == 0, "the stalled client was not cut off"

    seen: list[int] = []
    try:
        while (frame := await stalled.next(timeout=2)) is not None:
            seen.append(frame.seq)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        pass  # the server dropped the connection mid-frame: that frame is simply re-sent
    assert len(seen) < total
    for _ in range(20):  # resume as EventSource does (a slow test machine may be cut off again)
        resumed = await open_stream(client, token, last_event_id=seen[-1] if seen else 0)
        try:
            while len(seen) < total and (frame := await resumed.next(timeout=10)) is not None:
                seen.append(frame.seq)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            pass
        finally:
            await resumed.close()
        if len(seen) == total:
            break
    expected = [r["seq"] for r in await pg_pool.fetch("SELECT seq FROM events ORDER BY seq")]
    assert seen == expected


async def test_retention_overtaking_a_replay_is_a_reset_not_a_silent_gap(
    client, make_key, tenant_id, pg_pool, monkeypatch
):
    from gateway.events import log
    from gateway.events import stream as stream_mod

    token = await make_key("acme")
    acme = await tenant_id("acme")
    await emit_events(pg_pool, acme, 6)
    seqs = await wait_sequenced(pg_pool, 6)
    real_page = log.tenant_page
    calls = 0

    async def page_then_prune(*args, **kwargs):
        nonlocal calls
        calls += 1
        rows = await real_page(*args, **kwargs)
        if calls == 1:  # the pruner runs right after our snapshot
            await pg_pool.execute(
                "UPDATE events SET created_at = now() - interval '9 days' WHERE seq <= $1", seqs[3]
            )
            await log.prune(pg_pool, older_than=7 * 86400, batch=100)
        return rows

    monkeypatch.setattr(stream_mod.log, "tenant_page", page_then_prune)
    stream = await open_stream(client, token, last_event_id=seqs[0])
    frames = await read_n(stream, 3)
    await stream.close()
    assert frames[0].event == "reset" and frames[0].seq == seqs[3]
    assert [f.seq for f in frames[1:]] == seqs[4:]
