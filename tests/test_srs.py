"""SRS (mailstack.srs): the codec on vectors worked out by hand from the scheme, the key file and
[srs], and the SMTP side in process: alias forwarding rewrites the queued copy's sender, the MX
reverses our SRS addresses and refuses forged ones.  tests/test_srs_forwarding.py does the
round trip through real twistd processes and fake remote MXes.

The hashes below were computed with ``openssl dgst -sha1 -hmac KEY -binary | base64 | cut -c1-4``
over the lower-cased fields joined by "=" (an implementation apart from ours), e.g.
``printf 'ra=orig.example=alice' | openssl dgst -sha1 -hmac k -binary | base64`` -> ``I4dV...``.
"""

from __future__ import annotations

import os
import smtplib
import stat
import time

import pytest

from mailstack import config as config_mod
from mailstack.errors import ConfigError, MailError
from mailstack.outbound.queue import OutboundQueue
from mailstack.smtp.address import parse_address
from mailstack.smtp.policy import SessionFacts, SmtpPolicy
from mailstack.srs import SRS, SRSError, ensure_key_file, load_keys, timestamp, timestamp_age

DAY = 86400
#: Day 20000 since the epoch (2024-10-04): 20000 % 1024 = 544 = 17 * 32 + 0 -> "R" "A".
NOW = 20000 * DAY


def make(now: float = NOW, keys=b"k", **kw) -> SRS:
    return SRS(keys, "fwd.example", clock=lambda: now, local_domains=["fwd.example", "ours.example"], **kw)


# -- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("day, stamp", [(0, "AA"), (1, "AB"), (31, "A7"), (32, "BA"), (544, "RA"), (1023, "77"),
                                        (1024, "AA"), (20000, "RA")])
def test_timestamp_is_ten_bits_of_days_in_base32(day, stamp):
    assert timestamp(day * DAY + 3600) == stamp


def test_srs0_of_a_plain_sender():
    assert make().forward("alice@orig.example") == "SRS0=I4dV=RA=orig.example=alice@fwd.example"
    assert make().reverse("SRS0=I4dV=RA=orig.example=alice@fwd.example") == "alice@orig.example"


def test_the_hash_is_compared_without_case_and_the_fields_hashed_lower_cased():
    srs = make()
    assert srs.reverse("SRS0=i4Dv=RA=orig.example=alice@fwd.example") == "alice@orig.example"
    assert srs.reverse("srs0=i4dv=ra=orig.example=alice@FWD.example") == "alice@orig.example"
    assert srs.reverse("SRS0=I4DV=RA=ORIG.EXAMPLE=ALICE@fwd.example") == "ALICE@ORIG.EXAMPLE"


def test_other_separators_after_the_tag_are_read():
    assert make().reverse("SRS0+I4dV=RA=orig.example=alice@fwd.example") == "alice@orig.example"
    assert make().reverse("SRS0-I4dV=RA=orig.example=alice@fwd.example") == "alice@orig.example"


def test_a_local_part_with_equals_signs_survives():
    srs = make()
    address = srs.forward("a=b=c@orig.example")
    assert address.startswith("SRS0=") and address.endswith("=RA=orig.example=a=b=c@fwd.example")
    assert srs.reverse(address) == "a=b=c@orig.example"


def test_srs1_from_another_forwarders_srs0():
    srs = make()
    srs0 = "SRS0=abcd=RA=orig.example=alice@other.example"
    assert srs.forward(srs0) == "SRS1=+2LX=other.example==abcd=RA=orig.example=alice@fwd.example"
    # one hop back: the first forwarder's address, whose hash only it can check
    assert srs.reverse("SRS1=+2LX=other.example==abcd=RA=orig.example=alice@fwd.example") == srs0
    assert srs.reverse("srs1=+2lx=OTHER.example==abcd=RA=orig.example=alice@fwd.example") == \
        "SRS0=abcd=RA=orig.example=alice@OTHER.example"


def test_srs1_keeps_the_separator_of_the_srs0_it_wraps():
    srs = make()
    address = srs.forward("SRS0+abcd=RA=orig.example=alice@other.example")
    assert address == "SRS1=JVj0=other.example=+abcd=RA=orig.example=alice@fwd.example"
    assert srs.reverse(address) == "SRS0+abcd=RA=orig.example=alice@other.example"


def test_srs1_from_an_srs1_keeps_the_first_forwarder_and_rehashes():
    srs = make()
    srs1 = "SRS1=zzzz=first.example==abcd=RA=orig.example=alice@second.example"
    assert srs.forward(srs1) == "SRS1=i1W6=first.example==abcd=RA=orig.example=alice@fwd.example"
    assert srs.reverse("SRS1=i1W6=first.example==abcd=RA=orig.example=alice@fwd.example") == \
        "SRS0=abcd=RA=orig.example=alice@first.example"


def test_a_malformed_srs1_sender_is_wrapped_as_a_plain_one():
    srs = make()
    for sender in ("SRS1=zzzz=first.example=abcd@second.example", "SRS1=zzzz@second.example"):
        address = srs.forward(sender)
        assert address.startswith("SRS0=") and srs.reverse(address) == sender


def test_srs1_has_no_timestamp_of_its_own():
    assert make(NOW + 500 * DAY).reverse("SRS1=+2LX=other.example==abcd=RA=orig.example=alice@fwd.example") == \
        "SRS0=abcd=RA=orig.example=alice@other.example"


@pytest.mark.parametrize("sender", ["", "bob@fwd.example", "bob@OURS.example", "SRS0=I4dV=RA=orig.example=alice@fwd.example",
                                    '"john doe"@orig.example'])
def test_senders_left_as_they_are(sender):
    assert make().forward(sender) == sender


def test_validity_is_max_age_days():
    address = make().forward("alice@orig.example")
    assert make(NOW + 21 * DAY).reverse(address) == "alice@orig.example"
    with pytest.raises(SRSError, match="expired"):
        make(NOW + 22 * DAY).reverse(address)
    assert SRS(b"k", "fwd.example", max_age_days=30, clock=lambda: NOW + 30 * DAY).reverse(address) == "alice@orig.example"


def test_validity_across_the_1024_day_wrap():
    made = (1024 * 19 + 1020) * DAY  # day 1020 of a cycle = 31 * 32 + 28: "7" (31) "4" (28)
    address = make(made).forward("alice@orig.example")
    assert address.split("=")[2] == "74"
    assert timestamp_age("74", 1024 * 20 * DAY + 5 * DAY) == 9
    assert make(1024 * 20 * DAY + 5 * DAY).reverse(address) == "alice@orig.example"  # 9 days, in the next cycle
    with pytest.raises(SRSError, match="expired"):
        make(1024 * 20 * DAY + 18 * DAY).reverse(address)  # 22 days
    with pytest.raises(SRSError, match="expired"):
        make(made - DAY).reverse(address)  # made "tomorrow": 1023 days old, not -1


@pytest.mark.parametrize("address, why", [
    ("SRS0=I4dX=RA=orig.example=alice@fwd.example", "hash"),  # hash altered
    ("SRS0=I4dV=RA=orig.example=mallory@fwd.example", "hash"),  # original sender altered
    ("SRS0=I4dV=RA=evil.example=alice@fwd.example", "hash"),
    ("SRS0=I4dV=RB=orig.example=alice@fwd.example", "hash"),  # timestamp altered (it is hashed)
    ("SRS0=I4d=RA=orig.example=alice@fwd.example", "hash length"),
    ("SRS0=I4dVV=RA=orig.example=alice@fwd.example", "hash length"),
    ("SRS0=I4dV=RA=orig.example=alice@elsewhere.example", "SRS domain"),
    ("SRS0=I4dV=RA=orig.example@fwd.example", "malformed"),
    ("SRS0=====@fwd.example", "malformed"),
    ("SRS0=I4dV=R1=orig.example=alice@fwd.example", "hash"),  # not base32, and not the hash either
    ("SRS1=+2LX=other.example@fwd.example", "malformed"),
    ("SRS1=+2LX=other.example=abcd@fwd.example", "malformed"),  # the SRS0 part must start with a separator
    ("SRS1=+2LY=other.example==abcd=RA=orig.example=alice@fwd.example", "hash"),
    ("SRS1=+2LX=evil.example==abcd=RA=orig.example=alice@fwd.example", "hash"),
    ("alice@fwd.example", "not an SRS address"),
    ("SRS2=I4dV=RA=orig.example=alice@fwd.example", "not an SRS address"),
    ("no-at-sign", "not an address"),
])
def test_forged_and_malformed_addresses_are_refused(address, why):
    with pytest.raises(SRSError, match=why):
        make().reverse(address)


def test_the_host_local_split_is_part_of_the_hash():
    # with the fields simply concatenated, "orig.example"+"alice" and "orig.examplea"+"lice" would hash alike
    with pytest.raises(SRSError):
        make().reverse("SRS0=I4dV=RA=orig.examplea=lice@fwd.example")


def test_a_bad_timestamp_with_a_good_hash_is_refused():
    srs = make()
    good = srs._hash(b"k", "R1", "orig.example", "alice")
    with pytest.raises(SRSError, match="bad timestamp"):
        srs.reverse(f"SRS0={good}=R1=orig.example=alice@fwd.example")


def test_is_srs_and_is_ours():
    srs = make()
    assert srs.is_srs("SRS0=x=y=z=w@anywhere.example") and srs.is_srs("srs1+a=b==c@x.example")
    assert not srs.is_srs("SRS0@fwd.example") and not srs.is_srs("SRS=a@fwd.example") and not srs.is_srs("")
    assert srs.is_ours("SRS0=x=y=z=w@FWD.example") and not srs.is_ours("SRS0=x=y=z=w@anywhere.example")


def test_key_rotation_first_signs_all_verify():
    old = make(keys=b"old").forward("alice@orig.example")
    assert old == "SRS0=PRU+=RA=orig.example=alice@fwd.example"
    rotated = make(keys=[b"k", b"old"])
    assert rotated.forward("alice@orig.example") == "SRS0=I4dV=RA=orig.example=alice@fwd.example"
    assert rotated.reverse(old) == "alice@orig.example"
    with pytest.raises(SRSError):
        make(keys=[b"k"]).reverse(old)
    with pytest.raises(ValueError):
        SRS([], "fwd.example")


def test_long_srs_local_parts_are_accepted_by_the_address_parser():
    long_srs = "SRS0=I4dV=RA=" + "d" * 40 + ".example=" + "l" * 40 + "@fwd.example"
    assert parse_address(long_srs) == long_srs
    with pytest.raises(MailError, match="64 octets"):
        parse_address("x" * 65 + "@fwd.example")


# -- the key file and [srs] ---------------------------------------------------------------------


def test_key_file_made_once_private_and_read_back(tmp_path):
    path = str(tmp_path / "data" / "srs.key")
    assert ensure_key_file(path) is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [key] = load_keys(path)
    assert len(key) == 64 and int(key, 16) >= 0  # 32 random bytes, hex
    assert ensure_key_file(path) is False and load_keys(path) == [key]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["srs.key"]  # no temporary file left
    with open(path, "ab") as f:
        f.write(b"\n# an old key, still accepted\nolder-secret\n")
    assert load_keys(path) == [key, b"older-secret"]
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_keys(str(tmp_path / "empty"))


def _config(tmp_path, srs: str = "", domains='["example.test", "other.test"]'):
    (tmp_path / "users").write_text("")
    (tmp_path / "users").chmod(0o600)
    path = tmp_path / "mailstack.toml"
    path.write_text(f'[server]\nhostname = "mail.example.test"\ndomains = {domains}\nuser = ""\n'
                    f'[accounts]\nusers = "users"\n[store]\nroot = "data/mail"\n[srs]\n{srs}')
    path.chmod(0o600)
    return config_mod.load(str(path))


def test_srs_defaults(tmp_path):
    cfg = _config(tmp_path)
    assert cfg.srs == {"enabled": True, "domain": "example.test", "key_file": str(tmp_path / "data" / "srs.key"),
                       "max_age_days": 21}
    assert not (tmp_path / "data" / "srs.key").exists()  # loading the configuration makes nothing
    srs = SRS.from_config(cfg)  # start-up does
    assert srs.domain == "example.test" and srs.local_domains == ["example.test", "other.test"]
    assert load_keys(cfg.srs["key_file"]) == srs.keys
    assert SRS.from_config(_config(tmp_path, "enabled = false")) is None


def test_srs_config_checks(tmp_path):
    cfg = _config(tmp_path, 'domain = "Bounces.Example.Test."\nmax_age_days = 30\nkey_file = "keys/srs"')
    assert cfg.srs["domain"] == "bounces.example.test" and cfg.srs["key_file"] == str(tmp_path / "keys" / "srs")
    with pytest.raises(ConfigError, match=r"\[srs\] domain: not a domain name"):
        _config(tmp_path, 'domain = "not a domain"')
    with pytest.raises(ConfigError, match=r"\[srs\] max_age_days: must be between 1 and 1000"):
        _config(tmp_path, "max_age_days = 0")
    key = tmp_path / "srs.key"
    key.write_text("secret\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\[srs\] key_file: private key .* is world-readable"):
        _config(tmp_path, 'key_file = "srs.key"')
    key.chmod(0o600)
    key.write_text("\n")
    with pytest.raises(ConfigError, match="holds no key"):
        _config(tmp_path, 'key_file = "srs.key"')
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match=r"\[srs\] key_file: .* is a directory"):
        _config(tmp_path, 'key_file = "data"')


def test_dns_lists_an_srs_domain_of_its_own(tmp_path):
    from mailstack import dnsrecords

    def srs_rows(cfg, domain):
        return [(r.name, r.rtype, r.value) for r in dnsrecords.records_for(cfg, domain) if "SRS" in r.why]

    assert srs_rows(_config(tmp_path), "example.test") == []  # the default: the first domain, listed already
    cfg = _config(tmp_path, 'domain = "srs.example.test"')
    assert srs_rows(cfg, "example.test") == [("srs.example.test", "MX", "10 mail.example.test."),
                                             ("srs.example.test", "TXT", "v=spf1 mx -all")]
    assert srs_rows(cfg, "other.test") == []


def test_cli_forward_and_reverse(tmp_path, capsys):
    from mailstack import cli

    cfg = _config(tmp_path)
    assert cli.main(["--config", cfg.path, "srs", "forward", "dave@outside.test"]) == 0
    address = capsys.readouterr().out.strip()
    assert address.startswith("SRS0=") and address.endswith("=outside.test=dave@example.test")
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "srs.key").st_mode) == 0o600
    assert cli.main(["--config", cfg.path, "srs", "reverse", address]) == 0
    assert capsys.readouterr().out == "dave@outside.test\n"
    assert cli.main(["--config", cfg.path, "srs", "reverse", address.replace("SRS0=", "SRS0=x", 1)]) == 1
    assert "hash" in capsys.readouterr().err


# -- SMTP policy ---------------------------------------------------------------------------------


class _Accounts:
    """Accounts with alice, an alias fwd@ forwarding outside, and a catch-all."""

    def __init__(self):
        self.domains = ["example.test"]

    def is_local_domain(self, domain):
        return domain in self.domains

    def resolve(self, address):
        from mailstack.accounts import Resolution

        r = Resolution()
        if address in ("alice@example.test", "catchall@example.test"):
            r.local.append(address)
        elif address == "fwd@example.test":
            r.remote.append("carol@remote.test")
        else:
            r.local.append("catchall@example.test")  # the catch-all alias
        return r


def _policy(srs):
    return SmtpPolicy(_Accounts(), ["example.test"], 100, [], srs)


def test_policy_reverses_our_srs_addresses_before_aliases():
    srs = SRS(b"k", "example.test", clock=lambda: NOW)
    policy, facts = _policy(srs), SessionFacts(peer="192.0.2.1", submission=False)
    address = srs.forward("dave@outside.test")
    r = policy.check_recipient(facts, address, 0, "")
    assert (r.address, r.local, r.remote, r.forward) == (address, [], ["dave@outside.test"], True)
    local = srs._srs0("alice", "example.test")  # a sender whose domain became ours since
    r = policy.check_recipient(facts, local, 0, "")
    assert (r.local, r.remote) == (["alice@example.test"], [])
    r = policy.check_recipient(facts, "fwd@example.test", 0, "dave@outside.test")
    assert (r.remote, r.forward) == (["carol@remote.test"], True)
    for forged in (address.replace("=outside.test=", "=evil.test="), "SRS0=x@example.test",
                   SRS(b"other", "example.test", clock=lambda: NOW).forward("dave@outside.test")):
        with pytest.raises(MailError) as e:
            policy.check_recipient(facts, forged, 0, "")
        assert (e.value.code, e.value.enhanced) == (550, "5.1.1")


def test_an_srs_domain_that_is_not_a_mail_domain_is_reversed_too():
    srs = SRS(b"k", "srs.example.test", local_domains=["example.test"])
    policy, facts = _policy(srs), SessionFacts(peer="192.0.2.1", submission=False)
    r = policy.check_recipient(facts, srs.forward("dave@outside.test"), 0, "")
    assert (r.remote, r.forward) == (["dave@outside.test"], True)
    with pytest.raises(MailError) as e:  # anything else there is not ours: relay denied as before
        policy.check_recipient(facts, "someone@srs.example.test", 0, "")
    assert e.value.code == 554


def test_without_srs_the_catch_all_takes_srs_looking_addresses():
    r = _policy(None).check_recipient(SessionFacts(peer="192.0.2.1", submission=False), "SRS0=a=b=c=d@example.test", 0)
    assert r.local == ["catchall@example.test"]


def test_relayed_mail_is_not_forwarding():
    policy = SmtpPolicy(_Accounts(), ["example.test"], 100, [], SRS(b"k", "example.test"))
    r = policy.check_recipient(SessionFacts(peer="192.0.2.1", submission=True, user="alice@example.test"),
                               "carol@remote.test", 0, "alice@example.test")
    assert (r.remote, r.forward) == (["carol@remote.test"], False)


def test_queue_entries_per_envelope_sender():
    from mailstack.smtp.accept import SMTPSettings

    settings = SMTPSettings.__new__(SMTPSettings)
    settings.srs = SRS(b"k", "example.test", clock=lambda: NOW, local_domains=["example.test"])
    srs0 = settings.srs.forward("dave@outside.test")
    assert settings.outgoing("dave@outside.test", [], ["carol@remote.test"]) == [(srs0, ["carol@remote.test"])]
    assert settings.outgoing("dave@outside.test", ["x@r.test"], ["carol@remote.test", "x@r.test"]) == \
        [("dave@outside.test", ["x@r.test"]), (srs0, ["carol@remote.test"])]
    assert settings.outgoing("alice@example.test", ["x@r.test"], ["carol@remote.test"]) == \
        [("alice@example.test", ["x@r.test", "carol@remote.test"])]
    assert settings.outgoing("", [], ["carol@remote.test"]) == [("", ["carol@remote.test"])]
    assert settings.outgoing("dave@outside.test", [], []) == []
    settings.srs = None
    assert settings.outgoing("dave@outside.test", [], ["carol@remote.test"]) == [("dave@outside.test", ["carol@remote.test"])]


# -- in process: the MX port ---------------------------------------------------------------------


@pytest.fixture
def mx(inproc_server_factory):
    """A server whose relay cannot reach anything (DNS on a closed port): queued mail waits."""
    from support.servers import free_port

    extra = (f'[dns]\nnameservers = ["127.0.0.1"]\nport = {free_port()}\ntimeout = 0.5\n'
             "[relay]\nretry_schedule = [3600]\n")
    srv = inproc_server_factory(listeners=["smtp"], extra=extra,
                                aliases="fwd@example.test: carol@remote.test\nboth@example.test: bob@example.test, "
                                        "carol@remote.test\n@example.test: alice@example.test\n")
    return srv.start()


def _queued(srv) -> list[tuple[str, list[str]]]:
    return sorted((env.sender, [r.address for r in env.recipients]) for env, _ in OutboundQueue(str(srv.base / "queue")).all())


def _srs(srv) -> SRS:
    return SRS(load_keys(str(srv.base / "srs.key")), "example.test")


def test_alias_forwarding_queues_with_an_srs0_sender(mx):
    assert stat.S_IMODE(os.stat(mx.base / "srs.key").st_mode) == 0o600  # made at start
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as s:
        s.sendmail("dave@outside.test", ["both@example.test"], b"Subject: fwd\r\n\r\nhi\r\n")
        s.sendmail("<>", ["fwd@example.test"], b"Subject: a bounce\r\n\r\nx\r\n")
        s.sendmail("bob@example.test", ["fwd@example.test"], b"Subject: ours\r\n\r\nx\r\n")
    srs0 = _srs(mx).forward("dave@outside.test")
    assert srs0.startswith("SRS0=") and srs0.endswith("=outside.test=dave@example.test")
    assert _queued(mx) == [("", ["carol@remote.test"]), (srs0, ["carol@remote.test"]),
                           ("bob@example.test", ["carol@remote.test"])]
    assert len(mx.messages("bob@example.test")) == 1  # the local copy keeps the original Return-Path
    assert mx.messages("bob@example.test")[0].startswith(b"Return-Path: <dave@outside.test>\r\n")


def test_a_bounce_to_an_srs0_address_goes_to_the_original_sender(mx):
    srs = _srs(mx)
    outside, local = srs.forward("dave@outside.test"), srs._srs0("bob", "example.test")
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as s:
        s.sendmail("<>", [outside], b"Subject: bounce 1\r\n\r\nx\r\n")
        s.sendmail("<>", [local], b"Subject: bounce 2\r\n\r\nx\r\n")
        s.sendmail("someone@else.test", [outside], b"Subject: a reply\r\n\r\nx\r\n")
    assert _queued(mx) == sorted([("", ["dave@outside.test"]),
                                  (srs.forward("someone@else.test"), ["dave@outside.test"])])
    [bounce] = mx.messages("bob@example.test")  # the local user's INBOX, not the catch-all's
    assert b"Subject: bounce 2" in bounce and not mx.messages("alice@example.test")
    assert "srs: <" + outside + "> from <> (127.0.0.1) reversed to <dave@outside.test>" in mx.log_text()


def test_an_srs1_address_goes_back_to_the_first_forwarder(mx):
    srs1 = _srs(mx).forward("SRS0=abcd=RA=orig.example=alice@first.example")
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as s:
        s.sendmail("<>", [srs1], b"Subject: bounce\r\n\r\nx\r\n")
    assert _queued(mx) == [("", ["SRS0=abcd=RA=orig.example=alice@first.example"])]


def test_forged_and_expired_srs_addresses_get_550_and_no_relay(mx):
    srs = _srs(mx)
    good = srs.forward("dave@outside.test")
    expired = SRS(srs.keys, "example.test", clock=lambda: time.time() - 22 * DAY).forward("dave@outside.test")
    forged = [good.replace("=outside.test=", "=victim.test="), SRS(b"guess", "example.test").forward("dave@outside.test"),
              expired, "SRS0=zz=AA=victim.test=x@example.test", "SRS1=abcd=victim.test==x@example.test"]
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as s:
        s.ehlo()
        s.mail("spammer@evil.test")
        for address in forged:
            code, text = s.rcpt(address)
            assert (code, text.split()[0]) == (550, b"5.1.1"), (address, text)
            assert text.endswith(b": not a valid address here")
        assert s.rcpt("victim@victim.test")[0] == 554  # and the MX still relays nothing else
    assert _queued(mx) == []
    assert mx.log_text().count("srs: refused <") == len(forged)


def test_a_rotated_key_applies_on_reload_and_the_old_one_still_verifies(mx):
    from support.inprocess import in_reactor

    from mailstack import metrics

    key_file = mx.base / "srs.key"
    old = _srs(mx)
    made_with_old = old.forward("dave@outside.test")
    key_file.write_text("a-new-secret\n" + key_file.read_text())
    in_reactor(mx.service.reload)
    new = SRS([b"a-new-secret"], "example.test")
    refused = metrics.REGISTRY.get_sample_value("mailstack_srs_total", {"result": "refused"})
    reversed_ = metrics.REGISTRY.get_sample_value("mailstack_srs_total", {"result": "reversed"})
    forwarded = metrics.REGISTRY.get_sample_value("mailstack_srs_total", {"result": "forwarded"})
    with smtplib.SMTP("127.0.0.1", mx.port("smtp")) as s:
        s.sendmail("erin@outside.test", ["fwd@example.test"], b"Subject: signed with the new key\r\n\r\nx\r\n")
        s.ehlo()
        s.mail("")
        assert s.rcpt(made_with_old)[0] == 250  # the old line still verifies
        assert s.rcpt(new.forward("frank@outside.test"))[0] == 250
        assert s.rcpt(SRS(b"a guess", "example.test").forward("frank@outside.test"))[0] == 550
    assert (new.forward("erin@outside.test"), ["carol@remote.test"]) in _queued(mx)  # the new first line signs
    assert metrics.REGISTRY.get_sample_value("mailstack_srs_total", {"result": "refused"}) == refused + 1
    assert metrics.REGISTRY.get_sample_value("mailstack_srs_total", {"result": "reversed"}) == reversed_ + 2
    assert metrics.REGISTRY.get_sample_value("mailstack_srs_total", {"result": "forwarded"}) == forwarded + 1


def test_a_report_to_an_expired_srs_sender_is_not_taken_by_a_catch_all(tmp_path):
    """The relay's report for a forwarded copy whose SRS sender no longer reverses (expired,
    or its key retired) goes to that SRS address, which refuses it, as the MX does: a
    catch-all alias of the SRS domain must not take it (someone else's delivery report)."""
    from types import SimpleNamespace

    from mailstack.outbound.bounce import BounceSender

    now = [1_800_000_000.0]
    srs = SRS(b"secret", "example.test", 21, ["example.test"], clock=lambda: now[0])
    address = srs.forward("dave@outside.test")
    now[0] += 30 * 86400
    taken = []
    accounts = SimpleNamespace(resolve=lambda a: SimpleNamespace(local=["alice@example.test"], remote=[]))
    bounces = BounceSender("mx.example.test", None, accounts, SimpleNamespace(
        deliver_batch=lambda items: taken.extend(items) or [None] * len(items)))
    bounces.srs = srs
    assert bounces.report_address(address) == address
    assert bounces.deliver_locally(address, b"Subject: report\r\n\r\nx\r\n") is False
    assert taken == []
    assert bounces.deliver_locally("alice@example.test", b"Subject: report\r\n\r\nx\r\n") is True
