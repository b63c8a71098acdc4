"""IVR tests: the real app (all roles) on real PostgreSQL and Redis, the guardrail chain's
clock pinned (tests/conftest.py), webhooks allowed to reach this machine's test servers."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from tests.helpers import auth

OPEN = {"rate": 10000.0, "burst": 10000}

# The example flow (issue 12), as a user uploads it.
MAIN_MENU: dict[str, Any] = {
    "name": "main-menu",
    "start": "greet",
    "nodes": {
        "greet": {"say": "Thanks for calling Acme.", "next": "menu"},
        "menu": {
            "gather": {
                "say": "Press 1 for billing, 2 to talk to our assistant.",
                "digits": 1,
                "timeout": 5,
                "retries": 2,
            },
            "on": {"1": "billing", "2": "agent"},
            "no_input": "goodbye",
            "invalid": "menu",
        },
        "billing": {
            "webhook": {"url": "https://acme.example/ivr/billing", "timeout": 2},
            "on_error": "goodbye",
        },
        "agent": {"agent": {"system_prompt": "You help Acme customers."}},
        "goodbye": {"say": "Goodbye.", "then": "hangup"},
    },
}


def main_menu(**changes: Any) -> dict[str, Any]:
    flow = copy.deepcopy(MAIN_MENU)
    flow.update(changes)
    return flow


@pytest.fixture
def settings(database_url, redis_url):
    from gateway.settings import load_settings

    return load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
        webhooks={"allow_private_targets": True},
        guardrails={
            # A transfer is transactional: exempt from calling hours here, so no test depends
            # on the time of day (the chain still runs DNC, content and rate limits).
            "policy": {"exempt_transactional_from_calling_hours": True},
            "rate_limits": {"tenant": OPEN, "api_key": OPEN, "destination": OPEN, "sender": OPEN},
        },
    )


class Ivr:
    """What a test does with the IVR API."""

    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.token = token

    async def request(self, method: str, path: str, expect: int, body: Any = None) -> dict:
        resp = await self.client.request(method, path, json=body, headers=auth(self.token))
        data = await resp.json()
        assert resp.status == expect, (resp.status, data)
        return data

    async def upload(self, flow: dict[str, Any], expect: int = 201) -> dict:
        return await self.request("POST", "/v1/ivr/flows", expect, flow)

    async def simulate(self, flow: str, inputs: list[str], expect: int = 200, **kw: Any) -> dict:
        body = {"flow": flow, "from": "+14155550123", "inputs": inputs} | kw
        return await self.request("POST", "/v1/ivr/simulate", expect, body)


@pytest.fixture
async def ivr(client, make_key) -> Ivr:
    return Ivr(client, await make_key("acme"))


def entered(transcript: list[dict]) -> list[str]:
    """The nodes entered, in order (a transcript's node entries have a `kind`)."""
    return [e["node"] for e in transcript if "kind" in e]


async def transfer_call(db: Any, transcript: list[dict]) -> tuple[Any, list[tuple[str, dict]]]:
    """The transfer's call record (named by the transcript's transfer entry) and its events."""
    (entry,) = [e for e in transcript if "transfer" in e]
    call_id = uuid.UUID(entry["call_id"])
    row = await db.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
    events = await db.fetch(
        "SELECT type, data FROM events WHERE subject = $1 ORDER BY id", str(call_id)
    )
    return row, [(e["type"], e["data"]) for e in events]


async def assert_refused_by_dnc(db: Any, transcript: list[dict], to: str, fallback: str) -> None:
    """A transfer to a DNC-listed number went through the pipeline as a call, was refused by
    the chain at accept (the call `rejected`, with the verdict and call events), never reached
    the dispatch stage, and the flow took its fallback."""
    (entry,) = [e for e in transcript if "transfer" in e]
    assert entry["transfer"] == "refused" and entry["branch"] == fallback
    assert "dnc_listed" in entry["reason"]
    call, events = await transfer_call(db, transcript)
    assert call["status"] == "rejected" and call["error_code"] == "dnc_listed"
    assert call["to_number"] == to and call["pool"] == "ivr"
    assert call["metadata"]["ivr_node"] == entry["node"]
    assert [t for t, _ in events] == ["call.rejected", "guardrail.deny"]
    deny = events[1][1]
    assert deny["stage"] == "accept" and deny["code"] == "dnc_listed"
    assert deny["action"]["to"] == to and deny["action"]["channel"] == "voice"


async def assert_transferred(db: Any, transcript: list[dict], to: str, status: str) -> None:
    """A cleared transfer: the chain at accept and again at dispatch, an attempt, the call
    dialling, then ended with `status`."""
    call, events = await transfer_call(db, transcript)
    assert call["status"] == status and call["to_number"] == to
    kinds = [t for t, _ in events]
    assert kinds[:2] == ["call.accepted", "guardrail.allow"]
    assert kinds[2:5] == ["guardrail.allow", "call.attempt_started", "call.dialing"]
    assert [d["stage"] for t, d in events if t == "guardrail.allow"] == ["accept", "dispatch"]
    assert kinds[-1] == f"call.{status}"
