"""The Trunkline daemon: CLI, settings, HTTP API, pipeline, providers, events and webhooks."""
