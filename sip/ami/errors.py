"""Errors of the AMI connection layer. Callers catch ``AMIError``; the subclasses say why."""

from __future__ import annotations

from panoramisk.message import Message


class AMIError(Exception):
    """Base class: the action did not produce a usable answer."""


class AMINotConnected(AMIError):
    """Sent while there was no logged-in session: fails at once instead of queueing, because a
    queued Originate replayed after a reconnect could dial a number twice."""


class AMIConnectError(AMIError):
    """The TCP connection to Asterisk could not be opened (refused, unreachable, timed out)."""


class AMIConnectionLost(AMIError):
    """The session died (EOF, reset, keepalive timeout, Shutdown) before the answer came.

    ``last_heard`` (wall clock, set on the reason a disconnected hook receives): when the dead
    session last read anything from Asterisk — every channel it had was alive until then."""

    last_heard: float | None = None


class AMIKeepaliveTimeout(AMIConnectionLost):
    """Asterisk did not answer a keepalive Ping in time: the peer is treated as dead."""


class AMIShutdown(AMIConnectionLost):
    """Asterisk announced ``Event: Shutdown`` (restart or stop) and is closing the session."""


class AMIClosed(AMIConnectionLost):
    """The client was closed by its owner."""


class AMITimeout(AMIError, TimeoutError):
    """No answer within the action's timeout; the session itself may still be alive."""


class AMIAuthError(AMIError):
    """Asterisk answered ``Authentication failed`` (wrong user or secret)."""


class AMIProtocolError(AMIConnectionLost):
    """The peer sent something that is not AMI (no framing, oversized message)."""


class AMIActionError(AMIError):
    """Asterisk answered ``Response: Error`` (or a list that does not add up)."""

    def __init__(self, message: str, response: Message | None = None) -> None:
        super().__init__(message)
        self.response = response


class AMIListIncomplete(AMIActionError):
    """A list action ended with fewer items than its ``ListItems`` count."""
