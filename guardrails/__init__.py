"""DNC, calling hours, rate limits, content scanning, opt-out keywords, and the one chain that runs them."""
