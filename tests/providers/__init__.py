"""Provider adapter tests, each against a protocol-level fake of the provider."""
