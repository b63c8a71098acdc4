"""What reaches the daemon below HTTP handlers, over a raw socket to the real process: requests
aiohttp's parser refuses (oversized header, CR/LF in a header, a path over 8 KB) and a client
that hangs up in the middle of a body. Each must be quiet in the log (no traceback, no error),
and a refused request is answered in problem+json like every other error."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest

from tests.helpers import wait_ready


@pytest.fixture
async def daemon(daemon_env) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """The real daemon (`trunkline run`, api role); yields its port and process."""
    env = daemon_env | {"TRUNKLINE_LOG__LEVEL": "debug"}
    port = int(env["TRUNKLINE_HTTP__PORT"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "run",
        "--role",
        "api",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        yield port, proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)


async def stop_and_read_log(proc: asyncio.subprocess.Process) -> list[dict]:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 15)
    out = (await proc.stdout.read()).decode() + (await proc.stderr.read()).decode()
    assert "Traceback" not in out, out
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # stdlib logging (aiohttp's own loggers) is not JSON
            lines.append({"event": line, "level": "stdlib"})
    return lines


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()  # the server closes after a refused request
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (h.split(": ", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


BAD_REQUESTS = {
    "oversized header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        "line_too_long",
    ),
    "CR in a header value": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\rb\r\n\r\n",
        "malformed_request",
    ),
    "LF in a header value": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\nb\r\n\r\n",
        "malformed_request",
    ),
    "path over 8 KB": (
        b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "line_too_long",
    ),
    "TLS to the plain port": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        "malformed_request",
    ),
}


async def test_requests_the_parser_refuses_get_problem_json_and_no_traceback(daemon):
    port, proc = daemon
    for name, (request, code) in BAD_REQUESTS.items():
        status, headers, body = parse(await raw(port, request))
        assert status == 400, name
        assert headers["content-type"].startswith("application/problem+json"), name
        problem = json.loads(body)
        assert problem["status"] == 400 and problem["code"] == code, (name, problem)
        assert problem["type"] == f"https://trunkline.dev/problems/{code}"
        assert "aiohttp" not in body.decode() and "Got more than" not in body.decode(), name
    log = await stop_and_read_log(proc)
    refused = [e for e in log if e["event"] == "bad http request"]
    assert [e["code"] for e in refused] == [code for _, code in BAD_REQUESTS.values()]
    assert all(e["level"] in ("info", "debug") for e in refused)
    assert not [e for e in log if e["level"] in ("error", "stdlib", "critical")], log


async def test_client_hanging_up_mid_body_is_one_quiet_line(daemon, make_key):
    port, proc = daemon
    token = await make_key("acme")
    body = json.dumps({"channel": "sms", "to": "+14155550100", "body": "hello there"}).encode()
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.3)  # the handler is waiting for the rest of the body
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    # the daemon still serves
    status, _, _ = parse(
        await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status == 200
    log = await stop_and_read_log(proc)
    about = [e for e in log if e.get("path") == "/v1/messages"]
    # one line: the access line, 499 "client closed request" (nginx's convention)
    assert [(e["event"], e["level"], e["status"]) for e in about] == [("request", "info", 499)]
    assert not [e for e in log if e["level"] in ("error", "stdlib", "critical")], log


async def test_a_body_with_broken_chunked_framing_is_a_400_problem(daemon, make_key):
    port, proc = daemon
    token = await make_key("acme")
    request = (
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        '5\r\n{"a":\r\nzz\r\n'
    ).encode()
    status, headers, body = parse(await raw(port, request))
    assert status == 400
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["code"] == "malformed_request"
    log = await stop_and_read_log(proc)
    assert not [e for e in log if e["level"] in ("error", "stdlib", "critical")], log
