"""Cross-cutting HTTP: routing with OpenAPI, auth, problem+json, request context, metrics."""
