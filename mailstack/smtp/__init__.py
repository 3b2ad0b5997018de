"""SMTP: the MX and submission servers (and, later, the outbound queue)."""
