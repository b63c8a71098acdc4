"""What an ended Asterisk call means: Q.850 cause + SIP code + what we saw → a final status.

Facts from the transcripts (../shared/asterisk-ami/ 03a-f, see its README): with PJSIP every
rejection gives ``OriginateResponse`` ``Response: Failure`` ``Reason: 0`` — busy, not found,
congestion and decline alike — so the outcome is read from the ``Hangup``/``HangupRequest``
``Cause`` (Q.850) and ``TechCause`` (the SIP code):

====================  =====  ========  =======================  ===========================
far end               cause  SIP       status                   fail over to another trunk?
====================  =====  ========  =======================  ===========================
486 Busy Here         17     486       busy                     no: the called party's answer
603 Decline           21     603       no_answer (declined)     no
404 Not Found         1      404       failed (not found)       no
rings, no answer      19     480       no_answer                no
503 from the trunk    34     503       failed (congestion)      yes, unless answered
408 / no response     19     480/408   failed (unreachable)     yes: it never rang
====================  =====  ========  =======================  ===========================

Cause 19 means both "rang and nobody answered" (03e) and "nothing listening" (03f); only
whether the channel ever rang tells them apart. Once a call was answered, whatever ends it is
``completed`` — and nothing after an answer is ever a reason to fail over.
"""

from __future__ import annotations

from dataclasses import dataclass

# Q.850 causes Asterisk reports in Hangup/HangupRequest (the ones a trunk produces).
CAUSE_TEXT: dict[int, str] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    3: "No route to destination",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    21: "Call Rejected",
    22: "Number changed",
    27: "Destination out of order",
    28: "Invalid number format",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    47: "Resource unavailable, unspecified",
    58: "Bearer capability not available",
    102: "Recovery on timer expiry",
    127: "Interworking, unspecified",
}

BUSY_CAUSES = frozenset({17})
DECLINED_CAUSES = frozenset({21})
NO_ANSWER_CAUSES = frozenset({18, 19, 20})
NOT_FOUND_CAUSES = frozenset({1, 3, 22, 28})
# Our side or the carrier's: another trunk or provider may well complete the call.
CARRIER_CAUSES = frozenset({34, 38, 41, 42, 47, 58, 102})
CARRIER_SIP = frozenset({408, 500, 502, 503, 504})
BUSY_SIP = frozenset({486, 600})
DECLINED_SIP = frozenset({603})
NOT_FOUND_SIP = frozenset({404, 410, 484, 604})

# AMD() sets AMDSTATUS (09, 09b): MACHINE, HUMAN, NOTSURE or HANGUP.
AMD_STATUS: dict[str, str] = {"HUMAN": "human", "MACHINE": "machine", "NOTSURE": "notsure"}


@dataclass(frozen=True)
class Ending:
    status: str  # completed | busy | no_answer | failed | canceled
    error_code: str | None
    failover: bool = False


def classify(
    *,
    answered: bool,
    rang: bool,
    cause: int | None,
    sip_code: int | None,
    canceled: bool = False,
) -> Ending:
    """The final status of an originated leg from what was seen of it."""
    if answered:
        return Ending("completed", None)
    if canceled:
        return Ending("canceled", "canceled")
    if cause in BUSY_CAUSES or sip_code in BUSY_SIP:
        return Ending("busy", "user_busy")
    if cause in DECLINED_CAUSES or sip_code in DECLINED_SIP:
        return Ending("no_answer", "declined")
    if cause in NOT_FOUND_CAUSES or sip_code in NOT_FOUND_SIP:
        return Ending("failed", "not_found")
    if cause in CARRIER_CAUSES or (sip_code in CARRIER_SIP and not rang):
        return Ending("failed", "congestion" if cause in (34, 42) else "carrier_failure", True)
    if cause in NO_ANSWER_CAUSES:
        if rang:
            return Ending("no_answer", "no_answer")
        return Ending("failed", "unreachable", True)  # 03f: no 180, no answer, nothing
    if cause == 16:  # Normal Clearing before an answer: we hung up (a Hangup action)
        return Ending("canceled", "canceled")
    return Ending("failed", f"cause_{cause}" if cause is not None else "unknown")


def cause_text(cause: int | None) -> str | None:
    return None if cause is None else CAUSE_TEXT.get(cause, f"Cause {cause}")


def as_int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None
