"""Customer webhooks: endpoints, log-tailing fan-out and the signed delivery worker."""
