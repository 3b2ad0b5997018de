"""Header fields written at final delivery, the same for SMTP deliveries and for bounces."""

from __future__ import annotations


def delivery_fields(sender: str, account: str) -> bytes:
    """``Return-Path`` (RFC 5321 4.4: the reverse-path, added by the delivering MTA; ``<>``
    for a bounce) and ``Delivered-To`` (the account it was delivered to, for loop detection)."""
    return f"Return-Path: <{sender}>\r\nDelivered-To: {account}\r\n".encode("utf-8")
