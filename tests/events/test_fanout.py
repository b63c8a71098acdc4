"""The hub's direct writes: clients that keep up are written by the hub in one C-level loop."""

from __future__ import annotations

import asyncio
import re
import socket

from tests.events.sse import SSEStream, sse_headers
from tests.events.support import emit_events


async def open_stream(client, token, last_event_id=None):
    resp = await client.get("/v1/events", headers=sse_headers(token, last_event_id))
    assert resp.status == 200, await resp.text()
    return SSEStream(resp)


async def raw_stream(client, token, rcvbuf: int | None = None):
    """An HTTP/1.0 client on a plain socket: the body is the bare event stream."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /v1/events HTTP/1.0\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return reader, writer


def hub_of(client):
    from gateway.events.http import HUB

    return client.app[HUB].hub


def all_subs(hub):
    return [s for subs in hub._subs.values() for s in subs]


async def until(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_caught_up_clients_are_written_directly_chunked_or_not(
    client, make_key, tenant_id, pg_pool
):
    token = await make_key("acme")
    acme = await tenant_id("acme")
    chunked = await open_stream(client, token)  # HTTP/1.1: chunked transfer encoding
    reader, writer = await raw_stream(client, token)  # HTTP/1.0: raw body
    hub = hub_of(client)
    assert await until(lambda: len(all_subs(hub)) == 2 and all(s.direct for s in all_subs(hub)))
    raw = b""
    got: list[int] = []
    for _ in range(3):  # one at a time: every one goes out while both clients are direct
        await emit_events(pg_pool, acme, 1)
        frame = await chunked.next()
        assert frame is not None
        got.append(frame.seq)
        while raw.count(b"\n\n") < len(got) + 1:  # the retry: hint, then the frames
            raw += await asyncio.wait_for(reader.read(65536), 10)
    assert [int(i) for i in re.findall(rb"(?m)^id: (\d+)$", raw)] == got
    assert all(s.direct for s in all_subs(hub)), "a client that keeps up stays direct"
    assert {g.position for gs in hub._groups.values() for g in gs.values()} == {got[-1]}
    await chunked.close()
    writer.close()


async def test_a_direct_client_that_stops_reading_leaves_the_set_and_is_cut_off(
    app_client, make_key, tenant_id, pg_pool
):
    client = await app_client(events={"sse_client_buffer": 50, "sse_flush_interval": 0})
    token = await make_key("acme")
    acme = await tenant_id("acme")
    _reader, writer = await raw_stream(client, token, rcvbuf=4096)  # ...and never reads
    keeping_up = await open_stream(client, token)
    hub = hub_of(client)
    assert await until(lambda: all(s.direct for s in all_subs(hub)) and len(all_subs(hub)) == 2)
    received: list[int] = []

    async def read_all() -> None:
        while (frame := await keeping_up.next()) is not None:
            received.append(frame.seq)

    reading = asyncio.create_task(read_all())
    sent = 0
    try:
        for _ in range(400):  # small chunks (each written directly) until the stalled one drops
            await emit_events(pg_pool, acme, 20, pad="x" * 500)
            sent += 20
            if len(all_subs(hub)) == 1:
                break
        assert len(all_subs(hub)) == 1, "the stalled client was not cut off"
        assert await until(lambda: len(received) == sent, 20)
        assert received == sorted(set(received)), "the other client missed nothing"
        assert all(s.direct for s in all_subs(hub))
    finally:
        reading.cancel()
        await keeping_up.close()
        writer.close()
