"""Outbound delivery: the queue of messages leaving the server, the relay that takes them to
the recipients' MX hosts (or a smarthost), and the bounces it sends back.

Independent of the inbound server (:mod:`mailstack.smtp`); :mod:`mailstack.service` wires
the two together (a session hands remote recipients to :meth:`RelayService.enqueue`).
"""
