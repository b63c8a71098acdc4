"""/docs: Swagger UI, vendored in gateway/http/swagger/ (no CDN, no build step), rendering
/openapi.json — parameters, bodies, the scope and an example per operation (examples.py).

The assets are read from the package once per process. The page's Content-Security-Policy
allows only this origin (Swagger UI sets inline styles, hence `style-src 'unsafe-inline'`;
its icons are data: images)."""

from __future__ import annotations

import functools
from importlib import resources as pkg_resources

ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "docs.js": "application/javascript",
    "docs.css": "text/css",
    "LICENSE": "text/plain",
    "NOTICE": "text/plain",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def asset(name: str) -> bytes:
    """One of the page's files (index.html or a name of ASSETS), as shipped in the package."""
    return pkg_resources.files("gateway.http").joinpath("swagger", name).read_bytes()
