"""The shared vocabulary: ids, phone numbers, errors, and (later) actions, verdicts and events."""
