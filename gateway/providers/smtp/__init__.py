"""The SMTP email adapter (aiosmtplib): MIME building, sending, DSN parsing."""
