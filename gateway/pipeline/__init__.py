"""The one outbound path: validate → template → guardrails → route → admit → dispatch."""
