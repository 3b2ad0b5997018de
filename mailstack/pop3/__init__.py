"""The POP3 server (RFC 1939 with the RFC 2449 extensions) over the Maildir store.

The maildrop is the user's INBOX: :mod:`~mailstack.pop3.session` is the protocol (one table of
commands per state), :mod:`~mailstack.pop3.maildrop` the session's snapshot of the INBOX,
:mod:`~mailstack.pop3.transfer` RETR/TOP streaming, :mod:`~mailstack.pop3.uidl` the UIDLs
(Dovecot's ``pop3_uidl_format``), :mod:`~mailstack.pop3.server` the listener.
"""
