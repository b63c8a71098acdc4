"""IVR over HTTP: flow uploads, the sandbox simulation, session lookups (the engine is in ivr/)."""
