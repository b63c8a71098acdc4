"""IVR flow definitions, the flow engine, sessions in Redis with a TTL, and the AGI side."""
