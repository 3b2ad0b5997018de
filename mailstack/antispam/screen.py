"""Checks of the client at connect on the MX port (issue 20 item 3): the local allow/block
list, DNS block and allow lists, reverse DNS (iprev) and clients that talk before the greeting.

:class:`ClientScreen` is what every session of the MX listener shares (the lists, the
resolver); :meth:`ClientScreen.start` gives a session its :class:`SessionScreen`, which starts
every lookup at once when the client connects and answers them by the time the client reaches
the point where a refusal is given (``[antispam] reject_at``: RCPT, or EHLO/HELO).  A command
that gets there first waits for the answers, never the reactor.  Submission listeners have no
screen (an authenticated user's address is whatever network they are on), nor have clients in
``[smtp] trusted_networks``.

A list that cannot be asked (a timeout, SERVFAIL, a refusal code) is skipped and logged: a
DNS failure never refuses mail.  An iprev ``temperror`` is recorded, and refused with ``450``
only when ``iprev = "require"``.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor
from twisted.logger import Logger

from mailstack import metrics
from mailstack.antispam import dnslists, iprev
from mailstack.antispam.clientlists import ALLOW, BLOCK, ClientList
from mailstack.errors import ConfigError, MailError
from mailstack.mail import codes as c

log = Logger()

REJECT_AT = {"rcpt": ("cmd_RCPT",), "ehlo": ("cmd_EHLO", "cmd_HELO")}
IPREV = ("off", "record", "require")
E_IPREV_TEMPORARY, E_IPREV_FAILED = "4.7.25", "5.7.25"  # RFC 7372 3.3: reverse DNS validation failed
MAILBOX_BUSY = 450  # RFC 5321 4.2.3: requested action not taken, try again


def check_config(values: dict, path: str) -> dict:
    """[antispam]: the list specifications, the modes, the client list file (read once here,
    so that a broken one stops start-up naming its line)."""
    section = values["antispam"]
    for key in ("dnsbl", "dnswl"):
        for spec in section[key]:
            try:
                dnslists.parse_spec(spec)
            except ValueError as e:
                raise ConfigError(path, f"[antispam] {key}", str(e)) from None
    if section["dnsbl_threshold"] < 1:
        raise ConfigError(path, "[antispam] dnsbl_threshold", "must be at least 1")
    if section["reject_at"] not in REJECT_AT:
        raise ConfigError(path, "[antispam] reject_at", f'must be "rcpt" or "ehlo", not {section["reject_at"]!r}')
    if section["iprev"] not in IPREV:
        raise ConfigError(path, "[antispam] iprev", f'must be "off", "record" or "require", not {section["iprev"]!r}')
    if not 0 <= section["greet_wait"] <= 30:
        raise ConfigError(path, "[antispam] greet_wait", "must be 0 to 30 seconds")
    if section["client_list"]:
        from mailstack import fileaccess

        fileaccess.readable(path, "[antispam] client_list", section["client_list"])
        fileaccess.not_writable_by_others(path, "[antispam] client_list", section["client_list"])  # it lets clients in
        try:
            ClientList(section["client_list"])
        except ConfigError as e:
            raise ConfigError(path, "[antispam] client_list", str(e)) from None
    return section


class ClientScreen:
    """The MX listener's checks, built from ``[antispam]`` (None when nothing is configured)."""

    def __init__(self, section: dict, resolver, policy):
        self.dnsbl = [dnslists.parse_spec(s) for s in section["dnsbl"]]
        self.dnswl = [dnslists.parse_spec(s) for s in section["dnswl"]]
        self.threshold = section["dnsbl_threshold"]
        self.reject_at = REJECT_AT[section["reject_at"]]
        self.iprev = section["iprev"]
        self.early_talkers = section["early_talkers"]
        self.greet_wait = section["greet_wait"]
        self.client_list = ClientList(section["client_list"]) if section["client_list"] else None
        self.resolver, self.policy = resolver, policy

    @classmethod
    def build(cls, context, listener, policy) -> ClientScreen | None:
        section = context.config.antispam
        if listener.protocol != "smtp" or not section:
            return None
        if not (section["dnsbl"] or section["dnswl"] or section["client_list"] or section["iprev"] != "off"
                or section["early_talkers"]):
            return None
        return cls(section, context.resolver, policy)

    def start(self, session) -> SessionScreen | None:
        """A connection came in: its screen (which greets the client), or None (greet it now)."""
        if self.policy.trusted_peer(session.peer):
            return None
        ip = dnslists.client_address(session.peer)
        listed = self.client_list.for_client(ip) if self.client_list is not None else None
        if listed == ALLOW or ip is None:
            return None
        return SessionScreen(self, session, ip, listed)


class SessionScreen:
    """One MX session's checks: started at connect, asked at the refusal point."""

    def __init__(self, screen: ClientScreen, session, ip, listed: str | None):
        self.screen, self.session, self.ip, self.listed = screen, session, ip, listed
        self.early = False  # spoke before the greeting: every command but QUIT is refused
        self.answers: list[dnslists.ListAnswer] = []
        self.iprev: iprev.Iprev | None = None
        self.ready = False
        self._waiters: list[defer.Deferred] = []
        lookups = []
        if listed is None:
            lookups = [dnslists.ask(screen.resolver, lst, ip) for lst in screen.dnsbl + screen.dnswl]
        if screen.iprev != "off":
            lookups.append(iprev.check(screen.resolver, ip).addCallback(self._iprev))
        defer.gatherResults(lookups).addCallback(self._answered).addErrback(self._broken)
        if not screen.early_talkers:
            session.greet()
        elif screen.greet_wait > 0:
            session.transport.pauseProducing()  # the socket is not read: what comes is peeked at after
            reactor.callLater(screen.greet_wait, self._greet, True)
        else:
            self._greet()

    # -- the greeting --------------------------------------------------------------------------

    def _greet(self, resume: bool = False) -> None:
        """Greet, unless the client has already sent something (Postfix postscreen's "pregreet"
        test): RFC 5321 4.3.1 and RFC 2920 3.1 let a client speak only after the greeting.  Then
        the greeting is ``554`` and, as RFC 5321 3.1 says, every command but QUIT gets ``503``."""
        session = self.session
        if getattr(session, "_lost", False):
            return
        if resume:
            session.transport.resumeProducing()
        if not _input_waiting(session.transport):
            session.greet()
            return
        self.early = True
        metrics.client_refused("early_talker")
        log.info("refused {peer}: it spoke before the greeting", peer=session.peer)
        session.reply(c.TRANSACTION_FAILED, c.E_INVALID_COMMAND,
                      f"Service unavailable; client [{self.ip}] spoke before the greeting")

    # -- the answers ---------------------------------------------------------------------------

    def _iprev(self, result: iprev.Iprev) -> None:
        self.iprev = result
        if result.result != "pass":
            log.info("iprev {result} for {peer}: {reason}", result=result.result, peer=self.session.peer,
                     reason=result.reason)

    def _answered(self, results) -> None:
        self.answers = [r for r in results if isinstance(r, dnslists.ListAnswer)]
        for answer in self.answers:
            if answer.error:
                metrics.dnslist_failure(answer.dnslist.zone)
                log.warn("DNS list {zone}: no answer for {ip} ({error}); the list is skipped, nothing refused",
                         zone=answer.dnslist.zone, ip=str(self.ip), error=answer.error, peer=self.session.peer)
        self._done()

    def _broken(self, failure) -> None:
        log.failure("client checks of {peer} failed; nothing refused", failure, peer=self.session.peer)
        self._done()

    def _done(self) -> None:
        self.ready = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # -- what the session asks -----------------------------------------------------------------

    def before(self, method: str, sender: str | None) -> defer.Deferred | None:
        """Before a command runs: a Deferred to wait for (the answers are not in yet), or None
        to go on; a MailError when the command, and so the client, is refused here."""
        if self.early:
            if method != "cmd_QUIT":
                raise MailError(c.BAD_SEQUENCE, c.E_INVALID_COMMAND, "Bad sequence of commands: no service here")
            return None
        at_point = method in self.screen.reject_at
        if not at_point and method != "cmd_RCPT":
            return None
        if not self.ready:
            d = defer.Deferred()
            self._waiters.append(d)
            return d
        refusal = None
        sender_listed = None
        if method == "cmd_RCPT" and sender and self.screen.client_list is not None:
            sender_listed = self.screen.client_list.for_sender(sender)
            if sender_listed == BLOCK:
                refusal = ("sender_domain", MailError(
                    c.TRANSACTION_FAILED, c.E_NOT_AUTHORIZED,
                    f"Service unavailable; sender domain {sender.rpartition('@')[2]} blocked by local policy"))
        if refusal is None and at_point and sender_listed != ALLOW:
            refusal = self._verdict()
        if refusal is not None:
            metrics.client_refused(refusal[0])
            raise refusal[1]
        return None

    def _verdict(self) -> tuple[str, MailError] | None:
        """The verdict on the client at the refusal point: (reason, the refusal), or None."""
        ip = self.ip
        if self.listed == BLOCK:
            return "client_list", MailError(c.TRANSACTION_FAILED, c.E_NOT_AUTHORIZED,
                                            f"Service unavailable; client [{ip}] blocked by local policy",
                                            cause="the client list")
        hits = [a for a in self.answers if a.listed and a.dnslist in self.screen.dnsbl]
        allowed = [a for a in self.answers if a.listed and a.dnslist in self.screen.dnswl]
        score = sum(a.dnslist.weight for a in hits) - sum(a.dnslist.weight for a in allowed)
        if hits and score >= self.screen.threshold:
            worst = max(hits, key=lambda a: a.dnslist.weight)  # the first of the heaviest
            cause = ", ".join(f"{a.dnslist.zone} {'/'.join(a.codes)}" for a in hits + allowed)
            return "dnsbl", MailError(c.TRANSACTION_FAILED, c.E_NOT_AUTHORIZED,
                                      f"Service unavailable; client [{ip}] blocked using {worst.dnslist.zone}",
                                      cause=f"score {score} (threshold {self.screen.threshold}): {cause}")
        if self.screen.iprev == "require" and self.iprev is not None and self.iprev.result != "pass":
            if self.iprev.result == "temperror":
                return "iprev", MailError(MAILBOX_BUSY, E_IPREV_TEMPORARY,
                                          f"Reverse DNS of [{ip}] cannot be checked now; try again later",
                                          cause=self.iprev.reason)
            return "iprev", MailError(c.MAILBOX_UNAVAILABLE, E_IPREV_FAILED,
                                      f"Reverse DNS validation failed for [{ip}]", cause=self.iprev.reason)
        return None

    def auth_results(self) -> list:
        """Entries for the MX's Authentication-Results field (iprev, when it was checked)."""
        return [self.iprev.auth_result()] if self.iprev is not None else []


def _input_waiting(transport) -> bool:
    """Has the client sent anything yet?  Peeked at on the socket, nothing consumed."""
    try:
        return bool(transport.getHandle().recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except (AttributeError, OSError):
        return False
