"""The event log: outbox writer, sequencer, Redis bus, SSE and the JSON page."""
