"""The README's list and event-stream examples answer as printed: each `curl` of a GET in
the "Lists" and "The event stream" sections is sent as written (with a real cursor where the
README shows an elided one) and gets a 200 with the envelope it prints."""

from __future__ import annotations

import itertools
import pathlib
import re
import shlex

from tests.helpers import auth, eventually

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def section(start: str, end: str) -> str:
    text = README.read_text()
    return text[text.index(start) : text.index(end, text.index(start))]


def get_examples() -> list[tuple[str, dict[str, str], str | None]]:
    """(path with query, extra headers, the JSON keys printed under it) of each GET curl."""
    text = section("### Lists", "## Messaging") + section("## The event stream", "## Webhooks")
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("curl ") or "-X POST" in line:
                continue
            words = shlex.split(line.split(" #")[0])
            url = next(w for w in words if w.startswith("localhost:8080"))
            headers = dict(w.split(": ", 1) for k, w in itertools.pairwise(words) if k == "-H")
            printed = lines[i + 1] if i + 1 < len(lines) else ""
            keys = re.findall(r'^# 200 \{"(\w+)"', printed)
            found.append((url.removeprefix("localhost:8080"), headers, keys[0] if keys else None))
    return found


async def test_the_list_and_event_examples_answer_as_printed(client, make_key):
    token = await make_key("acme")
    for _ in range(3):
        resp = await client.post(
            "/v1/messages",
            json={"to": "+14155550100", "body": "hi", "purpose": "transactional"},
            headers=auth(token),
        )
        assert resp.status == 201

    async def delivered() -> bool:
        resp = await client.get("/v1/messages?status=delivered", headers=auth(token))
        return len((await resp.json())["data"]) == 3

    await eventually(delivered, timeout=20)
    examples = get_examples()
    assert len(examples) >= 5, examples
    cursor = None
    for path, headers, first_key in examples:
        if "cursor=" in path:
            assert cursor, "the README pages on before it shows a cursor"
            path = re.sub(r"cursor=[^&]*", f"cursor={cursor}", path)
        headers = {k: v for k, v in headers.items() if k != "Authorization"} | auth(token)
        if headers.get("Accept") == "text/event-stream":
            resp = await client.get(path.replace("*", "%2A"), headers=headers)
            assert resp.status == 200 and resp.content_type == "text/event-stream", path
            assert (await resp.content.readline()).startswith(b"retry: ")
            resp.close()
            continue
        resp = await client.get(path, headers=headers)
        body = await resp.json()
        assert resp.status == 200, (path, body)
        if first_key is not None:
            assert next(iter(body)) == first_key, (path, body)
        if body.get("next_cursor"):
            cursor = body["next_cursor"]
