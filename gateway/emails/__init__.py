"""The email channel: suppression list, unsubscribe links, bounce and complaint webhooks."""
