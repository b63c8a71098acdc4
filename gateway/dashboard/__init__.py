"""The operator dashboard: a static page on the public API, and its session cookie."""
