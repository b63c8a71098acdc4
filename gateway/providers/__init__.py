"""Provider contracts, registry and adapters; adapters are the only exit to the outside world."""
