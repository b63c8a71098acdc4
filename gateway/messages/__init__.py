"""Messages: SMS and WhatsApp, outbound and inbound, with their status and timeline."""
