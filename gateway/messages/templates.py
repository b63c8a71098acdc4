"""Template rendering: `{{ name }}` placeholders and nothing else.

Values are substituted as plain text — no expressions, attribute access or
code — so a tenant's template can never execute anything.
"""

from __future__ import annotations

import re

from gateway.core.errors import ValidationFailed

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def variables_of(body: str) -> list[str]:
    return sorted(set(PLACEHOLDER.findall(body)))


def render(name: str, body: str, values: dict[str, str | int | float]) -> str:
    missing = [v for v in variables_of(body) if v not in values]
    if missing:
        raise ValidationFailed(
            f"template {name!r} needs variable(s) {', '.join(missing)}",
            code="missing_template_variable",
            missing=missing,
        )
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), body)
