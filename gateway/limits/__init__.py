"""GET /v1/limits: the rate limits, frequency caps and calling-hour policy that apply to the caller."""
