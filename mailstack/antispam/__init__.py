"""Spam and abuse defence on the MX and submission ports (issue 20): the content filter
(rspamd), DNS block and allow lists, greylisting and per-user outbound limits.  Each module
decides; the SMTP session asks and replies (policy raises MailError, the session replies)."""
