"""Usage exported to Stripe Billing as meter events (issue 15)."""
