"""SMTP AUTH (RFC 4954) for the submission ports: the SASL exchange and the login, mixed
into :class:`~mailstack.smtp.server.SMTPSession` (which provides ``reply``, ``pause``,
``resume``, ``facts``, ``settings``, ``listener``, ``peer`` and ``auth_allowed``)."""

from __future__ import annotations

import base64

from twisted.logger import Logger

from mailstack import logcontext, sasl
from mailstack.accounts import IMailUser
from mailstack.errors import MailError
from mailstack.mail import codes as c
from mailstack.smtp.capabilities import MECHANISMS

log = Logger(namespace="mailstack.smtp.server")  # the session's: log lines keep their name


class AuthCommands:
    _sasl: sasl.Exchange | None = None

    def cmd_AUTH(self, text):
        if not self.facts.submission:
            raise MailError(c.BAD_SEQUENCE, c.E_INVALID_COMMAND, "AUTH is not available on this port")
        if self.facts.user is not None:
            raise MailError(c.BAD_SEQUENCE, c.E_INVALID_COMMAND, "Already authenticated")
        if not self.auth_allowed():
            raise MailError(c.ENCRYPTION_REQUIRED, c.E_ENCRYPTION_REQUIRED, "Encryption required: use STARTTLS first")
        mechanism, _, initial = text.partition(" ")
        if not mechanism:
            raise MailError(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "Syntax: AUTH mechanism [initial-response]")
        try:
            exchange = sasl.start(mechanism, None, MECHANISMS)
        except sasl.SaslError as e:
            return self._auth_refused(e, None)
        if initial:  # RFC 4954 4: the initial response, "=" for an empty one
            self._auth_respond(exchange, initial.encode())
        else:
            self._auth_continue(exchange)

    def _auth_response(self, line: bytes):
        exchange, self._sasl = self._sasl, None
        self._auth_respond(exchange, line)

    def _auth_respond(self, exchange: sasl.Exchange, line: bytes) -> None:
        try:
            exchange.respond(line)
        except sasl.SaslError as e:
            return self._auth_refused(e, exchange)
        self._auth_continue(exchange)

    def _auth_continue(self, exchange: sasl.Exchange) -> None:
        """Send the next challenge (RFC 4954 4), or check the password once the exchange is complete."""
        if exchange.challenge is not None:
            self._sasl = exchange
            self.reply(c.AUTH_CONTINUE, None, base64.b64encode(exchange.challenge).decode())
        else:
            self._login(exchange.credentials)

    def _auth_refused(self, e: sasl.SaslError, exchange: sasl.Exchange | None) -> None:
        if e.kind == "identity":  # the authzid names someone else: a failed login, not a syntax error
            log.info("auth failed {listener} from {peer} for {user}: {why}", listener=self.listener.key,
                     peer=self.peer, user=sasl.shown(exchange.credentials.authcid), why=str(e))
            self.reply(c.AUTH_INVALID, c.E_BAD_CREDENTIALS, "Authentication credentials invalid")
        elif e.kind == "unsupported":
            self.reply(c.PARAMETER_NOT_IMPLEMENTED, c.E_INVALID_ARGUMENTS, "Unrecognized authentication mechanism")
        elif e.kind == "cancelled":
            self.reply(c.SYNTAX_ERROR, c.E_SECURITY, "Authentication cancelled")
        else:  # malformed: bad base64, a PLAIN message without its parts, an empty user name
            self.reply(c.SYNTAX_ERROR, c.E_SYNTAX, f"{str(e)[:1].upper()}{str(e)[1:]}")

    def _login(self, creds: sasl.Credentials):
        user = sasl.shown(creds.authcid)
        self.pause()
        d = sasl.authenticate(self.settings.login_gate, creds.authcid, creds.password, self.peer, self.listener.key,
                              IMailUser)

        def ok(result: sasl.LoginResult):
            self.facts.user = result.address
            logcontext.set_user(self.peer, result.address)
            log.info("auth ok {listener} from {peer} as {user}", listener=self.listener.key, peer=self.peer,
                     user=result.address)
            self.reply(c.AUTH_SUCCEEDED, c.E_SECURITY_OK, "Authentication successful")

        def failed(failure):
            if failure.check(sasl.LoginRefused):
                log.info("auth failed {listener} from {peer} for {user}", listener=self.listener.key, peer=self.peer,
                         user=user)
                self.reply(c.AUTH_INVALID, c.E_BAD_CREDENTIALS, "Authentication credentials invalid")
            elif failure.check(sasl.LoginThrottled):
                self.reply(c.TEMPORARY_FAILURE, c.E_SECURITY_TEMPORARY, "Too many authentication failures from your "
                           f"address; try again in {int(failure.value.retry_after) + 1} s")
            else:  # LoginUnavailable, already logged
                self.reply(c.TEMPORARY_FAILURE, c.E_SECURITY_TEMPORARY, "Temporary authentication failure")

        d.addCallbacks(ok, failed).addBoth(lambda _: self.resume())
