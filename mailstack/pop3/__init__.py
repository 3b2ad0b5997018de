"""The POP3 server (RFC 1939 with the RFC 2449 extensions) over the Maildir store.

The maildrop is the user's INBOX; see :mod:`mailstack.pop3.server`.
"""
