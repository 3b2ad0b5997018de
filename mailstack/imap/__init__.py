"""The IMAP server (RFC 3501 IMAP4rev1 and extensions) over the Maildir store."""
