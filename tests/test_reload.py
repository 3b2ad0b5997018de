"""SIGHUP re-reads the configuration file (issue 17, part 5): what can change while running is
applied without dropping a session, each key that needs a restart is named and keeps its
running value, and a file with an error changes nothing."""

from __future__ import annotations

import signal
import smtplib

from support.waiting import wait_for


def hup_and_wait(srv, text: str) -> None:
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: text in srv.log_text(), timeout=20), srv.log_text()[-3000:]


def test_sighup_applies_limits_and_domains_and_names_what_needs_a_restart(server_factory):
    srv = server_factory(listeners=["smtp", "submission"]).start()
    port = srv.port("smtp")
    session = smtplib.SMTP("127.0.0.1", port, timeout=20)  # opened before the reload, used after it
    session.ehlo("client.example.net")
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.example.net")
        s.mail("someone@example.net")
        assert s.rcpt("x@second.test")[0] == 554  # not ours yet: no relaying
        assert s.rcpt("bob@example.test")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250

    text = srv.config_path.read_text()
    text = text.replace('domains = ["example.test"]', 'domains = ["example.test", "second.test"]')
    text = text.replace('submission = "tcp:0:interface=127.0.0.1"', 'submission = "tcp:1:interface=127.0.0.1"')
    srv.config_path.write_text(text + "[limits]\nrecipients = 1\n")
    hup_and_wait(srv, "reload: applied [limits] recipients, [server] domains")
    assert "reload: kept as running until a restart: [listeners] submission" in srv.log_text()
    assert wait_for(lambda: "reloaded users, aliases and certificate" in srv.log_text())

    session.mail("someone@example.net")
    assert session.rcpt("bob@example.test")[0] == 250
    code, text_ = session.rcpt("alice@example.test")
    assert (code, text_[:5]) == (452, b"4.5.3"), text_  # the new limit, in a session from before
    assert session.rcpt("x@second.test")[0] != 554  # now a local domain: an unknown user, not a relay
    session.quit()
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:  # the old port still serves
        assert s.ehlo()[0] == 250


def test_a_broken_file_at_sighup_changes_nothing(server_factory):
    srv = server_factory(listeners=["smtp"]).start()
    good = srv.config_path.read_text()
    srv.config_path.write_text(good + "[limits]\nrecipients = 1\nconnections = -5\n")
    hup_and_wait(srv, "[limits] connections: must be at least 1; nothing of the file was applied")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=20) as s:
        s.ehlo("client.example.net")
        s.mail("someone@example.net")
        assert s.rcpt("bob@example.test")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250  # recipients = 1 was not applied
    srv.config_path.write_text(good)
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload: the configuration file is unchanged" in srv.log_text(), timeout=20)
