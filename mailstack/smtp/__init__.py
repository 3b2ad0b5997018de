"""SMTP: the inbound servers, MX (port 25) and submission (587, 465).  Outbound delivery is
:mod:`mailstack.outbound`."""
