"""No code path reaches a provider adapter without the guardrail chain (DESIGN principle 2).

Statically, over every Python file of the daemon (and bench/):
  * only guardrails/chain.py uses `_mint`, the one way to make a ClearedAction;
  * nothing constructs a ClearedAction itself;
  * the adapters' private implementations (`_send`, `_originate`: the abstract methods behind
    the public methods that take a ClearedAction) are called from nowhere but gateway/providers/;
  * in every module that can get hold of an adapter (it imports the provider registry, an
    adapter or the pipeline's PROVIDERS), the gated public calls (`.send(`, `.originate(`) are
    only in the dispatchers, and there their clearance is the `.cleared` of a chain decision.
At run time, real adapters refuse every forged clearance before any request leaves.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import guardrails.cleared as cleared_mod
from gateway.core.actions import OutboundAction
from gateway.core.ids import new_id
from gateway.providers import contracts
from gateway.providers.sandbox.messaging import SandboxMessaging
from gateway.providers.twilio.adapter import TwilioMessaging
from gateway.providers.twilio.client import TwilioConfig
from guardrails.chain import GuardrailChain
from guardrails.cleared import ClearedAction, ForgedClearance
from tests.fakes.twilio_server import FakeTwilio

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "sip", "ivr", "campaigns", "guardrails", "bench")
DISPATCHERS = {"gateway/pipeline/dispatch.py", "gateway/pipeline/calls/dispatch.py"}
MINT = "_" + "mint"  # spelled so that this file does not match its own rule


@functools.cache
def sources() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found[rel] = ast.parse(path.read_text(), filename=rel)
    return found


def contract_classes() -> list[type]:
    return [
        obj
        for _, obj in inspect.getmembers(contracts, inspect.isclass)
        if obj.__module__ == contracts.__name__ and getattr(obj, "__abstractmethods__", None)
    ]


def gated_methods() -> tuple[set[str], set[str]]:
    """(public methods that take a ClearedAction, the private methods implementing them)."""
    public, private = set(), set()
    for cls in contract_classes():
        for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction):
            if name.startswith("_"):
                continue
            params = inspect.signature(fn).parameters.values()
            if any("ClearedAction" in str(p.annotation) for p in params):
                public.add(name)
                if "_" + name in cls.__abstractmethods__:
                    private.add("_" + name)
    return public, private


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, node.func.attr


def test_the_contracts_are_what_this_test_thinks():
    public, private = gated_methods()
    assert {"send", "originate"} <= public
    assert {"_send", "_originate"} <= private


def test_only_the_chain_mints_cleared_actions():
    offenders = []
    for rel, tree in sources().items():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Name):
                names.append(node.id)
            elif isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, ast.ImportFrom):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.append(node.value)  # getattr(cleared, "_mint")
            if MINT in names and rel != "guardrails/chain.py":
                offenders.append(f"{rel}:{getattr(node, 'lineno', '?')}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ClearedAction"
                and rel != "guardrails/cleared.py"
            ):
                offenders.append(f"{rel}:{node.lineno} constructs a ClearedAction")
    assert offenders == []
    chain_tree = sources()["guardrails/chain.py"]
    assert any(
        isinstance(n, ast.Call) and getattr(n.func, "id", "") == MINT for n in ast.walk(chain_tree)
    ), "the chain is where clearances come from"


def test_adapter_implementations_are_called_only_by_the_providers_layer():
    _, private = gated_methods()
    offenders = [
        f"{rel}:{node.lineno} calls .{attr}("
        for rel, tree in sources().items()
        if not rel.startswith("gateway/providers/")
        for node, attr in calls(tree)
        if attr in private
    ]
    assert offenders == []


def adapter_modules(trees: dict[str, ast.Module]) -> set[str]:
    """Files that define a provider adapter (a subclass, however indirect, of a contract)."""
    adapters = {cls.__name__ for cls in contract_classes()}
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for rel, tree in trees.items():
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or node.name in adapters:
                    continue
                bases = {getattr(b, "id", None) or getattr(b, "attr", None) for b in node.bases}
                if bases & adapters:
                    adapters.add(node.name)
                    found.add(rel)
                    changed = True
    return found


def _reaches_adapters(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("gateway.providers") and any(
                a.name not in ("ProviderError", "TransientProviderError", "PermanentProviderError",
                               "StatusReport", "CallReport", "SendResult", "OriginateResult")
                for a in node.names
            ):  # fmt: skip
                return True
            if node.module == "gateway.pipeline.wiring" and any(
                a.name == "PROVIDERS" for a in node.names
            ):
                return True
    return False


def test_gated_calls_happen_only_in_dispatchers_with_a_chain_decision():
    public, _ = gated_methods()
    trees = sources()
    adapters = adapter_modules(trees)
    assert "sip/asterisk.py" in adapters or not (ROOT / "sip/asterisk.py").exists()
    offenders = []
    for rel, tree in trees.items():
        if rel.startswith("gateway/providers/") or rel in adapters or not _reaches_adapters(tree):
            continue
        for node, attr in calls(tree):
            if attr not in public:
                continue
            if rel not in DISPATCHERS:
                offenders.append(f"{rel}:{node.lineno} calls .{attr}( outside a dispatcher")
                continue
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Attribute) and first.attr == "cleared"):
                offenders.append(f"{rel}:{node.lineno} .{attr}( is not given a decision's .cleared")
    assert offenders == []
    dispatch = sources()["gateway/pipeline/dispatch.py"]
    assert any(attr == "send" for _, attr in calls(dispatch)), (
        "the dispatcher is where sends happen"
    )


# --------------------------------------------------------------------------------- run time


def an_action(**kw) -> OutboundAction:
    fields = {
        "tenant_id": new_id(),
        "subject": str(new_id()),
        "channel": "sms",
        "to": "+14155550100",
        "from_": "+14155550199",
        "purpose": "transactional",
        "trace_id": "t" * 32,
        "body": "Your code is 1234",
    }
    return OutboundAction(**(fields | kw))


async def genuine(action: OutboundAction | None = None) -> ClearedAction:
    decision = await GuardrailChain([]).evaluate(action or an_action(), stage="dispatch")
    assert decision.cleared is not None
    return decision.cleared


def forgeries(real: ClearedAction) -> dict[str, object]:
    other = dataclasses.replace(real.action, to="+14155550123")
    blank = object.__new__(ClearedAction)
    copied = object.__new__(ClearedAction)
    for name, value in (
        ("action", other),
        ("stage", real.stage),
        ("issued_at", real.issued_at),
        ("seal", real.seal),
    ):
        object.__setattr__(copied, name, value)
    return {
        "constructed": ClearedAction(real.action, real.stage, time.monotonic(), b"\0" * 32),
        "replace(action=another recipient)": dataclasses.replace(real, action=other),
        "replace(stage)": dataclasses.replace(real, stage="accept"),
        "object.__new__ with a copied seal": copied,
        "object.__new__, empty": blank,
        "not a ClearedAction at all": SimpleNamespace(
            verify=lambda: real.action, action=real.action
        ),
        "a bare OutboundAction": real.action,
    }


async def test_the_sandbox_adapter_refuses_forged_clearances(redis_client):
    sink_calls = []

    async def sink(report):
        sink_calls.append(report)

    adapter = SandboxMessaging(redis_client, sink, receipt_delay=0)
    real = await genuine()
    for what, forged in forgeries(real).items():
        with pytest.raises((ForgedClearance, AttributeError, TypeError)):
            await adapter.send(forged, f"key-{what}")  # type: ignore[arg-type]
        assert await adapter.sends_for(f"key-{what}") == 0, what
    assert not await redis_client.keys("tl:sandbox:*")
    # the genuine clearance goes through (the control)
    result = await adapter.send(real, "key-genuine")
    assert (
        result.provider_message_id.startswith("SB") and await adapter.sends_for("key-genuine") == 1
    )
    await adapter.close()


async def test_an_expired_clearance_is_refused(redis_client, monkeypatch):
    adapter = SandboxMessaging(redis_client, lambda r: None, receipt_delay=0)
    real = await genuine()
    later = real.issued_at + cleared_mod.MAX_AGE_SECONDS + 1
    monkeypatch.setattr(cleared_mod, "time", SimpleNamespace(monotonic=lambda: later))
    with pytest.raises(ForgedClearance, match="expired"):
        await adapter.send(real, "key-expired")
    assert await adapter.sends_for("key-expired") == 0


async def test_the_twilio_adapter_refuses_forged_clearances_before_any_request():
    async with FakeTwilio() as fake:
        adapter = TwilioMessaging(
            TwilioConfig(fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=2),
            public_base_url=None,
            messaging_service_sid=None,
        )
        await adapter.start()
        try:
            real = await genuine()
            for what, forged in forgeries(real).items():
                with pytest.raises((ForgedClearance, AttributeError, TypeError)):
                    await adapter.send(forged, f"key-{what}")  # type: ignore[arg-type]
            assert fake.requests == []
            await adapter.send(real, "key-genuine")
            assert len(fake.requests_to("/Messages.json")) == 1
        finally:
            await adapter.close()


async def test_voice_originate_verifies_the_clearance_first():
    originated = []

    class Recording(contracts.VoiceProvider):
        name = "recording"

        async def _originate(self, action, attempt_key, spec):
            originated.append(action)

        async def _hangup(self, call):
            return None

        async def _bridge(self, call, target):
            return None

    voice = Recording()
    real = await genuine(an_action(channel="voice", body=None))
    for forged in forgeries(real).values():
        with pytest.raises((ForgedClearance, AttributeError, TypeError)):
            await voice.originate(forged, "k", None)  # type: ignore[arg-type]
    assert originated == []
    await voice.originate(real, "k", None)  # type: ignore[arg-type]
    assert len(originated) == 1
