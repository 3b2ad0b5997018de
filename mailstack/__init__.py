"""mailstack: a whole mail system (SMTP, IMAP, POP3 over one Maildir store) on Twisted."""

__version__ = "0.1.0"
