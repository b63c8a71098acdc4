"""Protocol-level stand-ins for outside services (real wire formats, local sockets)."""
