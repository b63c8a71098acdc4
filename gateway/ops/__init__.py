"""Operational endpoints: liveness, readiness, metrics, the OpenAPI document and its docs page."""
