"""Sandbox providers: realistic, deterministic progress so the whole system runs with no account."""
