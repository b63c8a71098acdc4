"""Call tracking from AMI events (DESIGN: sip/ holds the AMI connection, call tracking, pools).

``keys`` — the ChannelIds we choose and how to recognise them; ``causes`` — Q.850/SIP → final
status and whether another trunk may retry; ``tracker`` — AMI events → ``CallReport``s and the
reconcile after a (re)connect; ``leader`` — one tracker per Asterisk across processes.
"""

from sip.calls.keys import LegKey, agent_key, attempt_key, parse
from sip.calls.leader import LeaderLease
from sip.calls.tracker import CallSink, CallTracker, LiveLeg, Reconciled

__all__ = [
    "CallSink",
    "CallTracker",
    "LeaderLease",
    "LegKey",
    "LiveLeg",
    "Reconciled",
    "agent_key",
    "attempt_key",
    "parse",
]
