"""The README's sandbox examples answer as printed, at any hour (issue 10 item 2): each
`curl … -d '{…}'` of POST /v1/messages and POST /v1/calls is sent as it is written, at a day
and at a night instant, and must get the 201 and status the README prints under it."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from tests.helpers import auth

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_CURL = re.compile(r"curl -X POST localhost:8080(/v1/(?:messages|calls)) .*?-d '(\{.*?\})'", re.S)
_PRINTED = re.compile(r"# (\d{3}) (\{.*)")


def examples() -> list[tuple[str, dict, int, str]]:
    """(path, body, printed HTTP status, printed status) of every such example."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for match in _CURL.finditer(block):
            body = json.loads(re.sub(r"\s*\n\s*", " ", match.group(2)))
            printed = _PRINTED.search(block[match.end() :])
            assert printed, f"no printed answer under {match.group(0)[:60]}"
            status = re.search(r'"status": "(\w+)"', printed.group(2))
            assert status, printed.group(0)
            found.append((match.group(1), body, int(printed.group(1)), status.group(1)))
    return found


def test_the_readme_has_the_examples():
    paths = [path for path, *_ in examples()]
    assert "/v1/messages" in paths and "/v1/calls" in paths


@pytest.mark.hours
async def test_readme_examples_answer_as_printed(client, make_key, time_of_day):
    token = await make_key("acme")
    for path, body, http, status in examples():
        resp = await client.post(path, json=body, headers=auth(token))
        out = await resp.json()
        assert (resp.status, out.get("status")) == (http, status), (time_of_day, path, out)
