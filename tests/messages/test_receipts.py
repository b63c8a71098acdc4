"""Status only moves forward: any order and any duplication of receipts ends where the truth ends."""

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.messages.service import apply_report
from gateway.messages.states import FINAL, can_move
from gateway.providers.contracts import StatusReport

RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}

histories = st.sampled_from(
    [
        ["queued", "sent", "delivered"],
        ["queued", "sent", "undelivered"],
        ["queued", "failed"],
        ["sent", "delivered"],
        ["queued", "sent"],
    ]
)


@st.composite
def shuffled_receipts(draw):
    truth = draw(histories)
    copies = [s for s in truth for _ in range(draw(st.integers(1, 3)))]
    return truth, draw(st.permutations(copies))


async def new_message(pg_pool, tenant_id) -> tuple[uuid.UUID, str]:
    message_id, ref = uuid.uuid4(), f"SB{uuid.uuid4().hex}"
    await pg_pool.execute(
        """
        INSERT INTO messages (id, tenant_id, direction, channel, to_number, body, purpose, status, provider,
                              provider_message_id, encoding, segments, trace_id)
        VALUES ($1, $2, 'outbound', 'sms', '+14155550100', 'x', 'transactional', 'queued', 'sandbox', $3,
                'GSM-7', 1, 'trace')
        """,
        message_id,
        tenant_id,
        ref,
    )
    return message_id, ref


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=shuffled_receipts())
async def test_any_receipt_order_ends_in_the_true_final_status(pg_pool, case):
    truth, receipts = case
    tenant_id = await pg_pool.fetchval(
        "INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 't' || substr(md5(random()::text), 1, 12)) RETURNING id"
    )
    message_id, ref = await new_message(pg_pool, tenant_id)
    seen = "queued"
    for status in receipts:
        await apply_report(pg_pool, StatusReport("sandbox", ref, status))
        now = await pg_pool.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
        assert RANK[now] >= RANK[seen], f"regressed from {seen} to {now} after {status}"
        assert now == seen or can_move(seen, now)
        seen = now
    expected = truth[-1] if truth[-1] in FINAL or truth[-1] == "sent" else "queued"
    assert seen == expected, (truth, receipts)
    events = await pg_pool.fetch(
        "SELECT type FROM events WHERE subject = $1 ORDER BY id", str(message_id)
    )
    applied = [e["type"] for e in events if e["type"] != "message.status_noop"]
    assert len(applied) == len(set(applied)), "a status was applied twice"
    assert len(events) == len(receipts), "every receipt is recorded, applied or as a no-op"


async def test_a_receipt_before_the_send_is_recorded_is_parked_then_applied(pg_pool):
    from gateway.messages.service import apply_orphans

    tenant_id = await pg_pool.fetchval(
        "INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'early') RETURNING id"
    )
    message_id, ref = uuid.uuid4(), "SBearly"
    assert await apply_report(pg_pool, StatusReport("sandbox", ref, "delivered")) is None
    await pg_pool.execute(
        """
        INSERT INTO messages (id, tenant_id, direction, channel, to_number, body, purpose, status, provider,
                              provider_message_id, encoding, segments, trace_id)
        VALUES ($1, $2, 'outbound', 'sms', '+14155550100', 'x', 'transactional', 'queued', 'sandbox', $3, 'GSM-7', 1, 't')
        """,
        message_id,
        tenant_id,
        ref,
    )
    async with pg_pool.acquire() as conn, conn.transaction():
        msg = await conn.fetchrow(
            "SELECT id, tenant_id, trace_id FROM messages WHERE id = $1", message_id
        )
        await apply_orphans(conn, msg, "sandbox", ref)
    assert (
        await pg_pool.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
        == "delivered"
    )
    assert await pg_pool.fetchval("SELECT count(*) FROM orphan_receipts") == 0
