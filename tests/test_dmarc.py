"""DMARC evaluation (mailstack.smtp.dmarc), section by section from RFC 7489, and compared
with authheaders (which mailstack used before) wherever authheaders reads the RFC right.
Also the Authentication-Results clauses, compared with authres's objects."""

from __future__ import annotations

import email.utils
import itertools

import pytest

from mailstack.smtp import dmarc
from mailstack.smtp.authentication import result_clause, results_header


class DnsDown(Exception):
    pass


def lookup_from(records: dict[str, list[str]], down: set[str] = frozenset(), asked: list | None = None):
    def txt(name: str) -> list[bytes]:
        if asked is not None:
            asked.append(name)
        if name in down:
            raise DnsDown(name)
        return [r.encode() for r in records.get(name, [])]
    return txt


def evaluate(records, from_value="Author <a@example.com>", spf=None, dkim=(), sample=lambda: 0.0, **kw):
    return dmarc.evaluate([from_value], spf, list(dkim), lookup_from(records, **kw), sample=sample)


# -- 3.2: the organisational domain --------------------------------------------------------------


@pytest.mark.parametrize("domain, organisation", [
    ("example.com", "example.com"),
    ("a.mail.example.com", "example.com"),
    ("mail.sendercorp.co.uk", "sendercorp.co.uk"),
    ("co.uk", "co.uk"),  # a public suffix is its own organisational domain
    ("com", "com"),
    ("x.y.github.io", "y.github.io"),  # the list's private part counts too
    ("MAIL.Example.COM.", "example.com"),
    ("mail.example.test", "example.test"),  # not on the list: the default rule "*" (the last label)
    ("example.test", "example.test"),
    ("a.b.c.localhost", "c.localhost"),
    ("x.a.b.kobe.jp", "a.b.kobe.jp"),  # wildcard rule *.kobe.jp
    ("x.city.kobe.jp", "city.kobe.jp"),  # exception rule !city.kobe.jp
])
def test_organizational_domain_is_the_public_suffix_and_one_label(domain, organisation):
    assert dmarc.organizational_domain(domain) == organisation


def test_the_suffix_list_is_parsed_once_and_prefers_the_system_copy(monkeypatch):
    first = dmarc.suffix_list()
    assert dmarc.suffix_list() is first
    paths = dmarc._list_paths()
    assert paths[0] == "/usr/share/publicsuffix/public_suffix_list.dat"  # Debian's, kept current by apt
    assert any(p.endswith("authheaders/public_suffix_list.txt") for p in paths)


# -- 6.6.1: the author domain ----------------------------------------------------------------------


@pytest.mark.parametrize("value, domains", [
    ("a@example.com", ["example.com"]),
    ("Author <a@example.com>", ["example.com"]),
    ('"Doe, John" <john@Example.COM.>', ["example.com"]),
    ("J. Doe <j@my-company.example>", ["my-company.example"]),  # authheaders read "my" here
    ("a@example.com, b@other.example", ["example.com", "other.example"]),
    ("a@example.com, Other <b@example.com>", ["example.com"]),
    ("Team: a@example.com, b@other.example;", ["example.com", "other.example"]),  # group syntax
    ("(comment) a@example.com (another)", ["example.com"]),
    ('"odd local"@example.com', ["example.com"]),
    ("=?utf-8?q?J=C3=B6rg?= <j@example.com>", ["example.com"]),
    ("Jörg <j@bücher.example>", ["xn--bcher-kva.example"]),  # RFC 6532 mail: the A-label is looked up
    ("faß@faß.de", ["xn--fa-hia.de"]),  # IDNA 2008: not fass.de, another domain with its own policy
    ("u@paypal.com, junk", ["paypal.com"]),  # a junk address beside a real one does not switch DMARC off
    ("u@paypal.com, a@[192.0.2.1]", ["paypal.com"]),
    ("a@" + "x" * 64 + ".example", None),  # a label DNS cannot hold (RFC 1035 2.3.4)
    ("no address here", None),
    ("a@[192.0.2.1]", None),  # a domain literal has no DMARC record
    ("", None),
    ("a@", None),
])
def test_from_domains(value, domains):
    assert dmarc.from_domains([value]) == domains


def test_the_quick_path_reads_what_the_email_package_reads():
    values = ["a@example.com", "Author <a@example.com>", '"Doe, John" <john@example.com>', "  x@y.example  ",
              "A B C <a.b+c@sub.example.org>", '"q\\"uote" <q@example.net>', "Name <n@example.com> ",
              "<bare@example.com>", "O'Brien <ob@example.ie>"]
    for value in values:
        assert dmarc._SIMPLE_ANGLE.match(value) or dmarc._SIMPLE_BARE.match(value), value
        expected = [a.rpartition("@")[2].lower() for _, a in email.utils.getaddresses([value])]
        assert dmarc.from_domains([value]) == expected, value


def test_from_field_values_unfold_and_find_every_from_field():
    head = (b"Subject: x\r\nFrom: Author\r\n <a@example.com>\r\nFROM : b@other.example\r\nX-From: c@no.example\r\n"
            b"Reply-To: d@no.example\r\n\r\n")
    assert dmarc.from_field_values(head) == ["Author <a@example.com>", "b@other.example"]


def test_no_from_field_or_no_domain_is_a_permerror():
    assert dmarc.evaluate([], None, [], lookup_from({})).result == "permerror"
    outcome = dmarc.evaluate(["undisclosed"], None, [], lookup_from({}))
    assert (outcome.result, outcome.header_from) == ("permerror", "none")


# -- 6.6.3: policy discovery -------------------------------------------------------------------------


def test_the_author_domain_record_is_used_first():
    asked = []
    outcome = evaluate({"_dmarc.example.com": ["v=DMARC1; p=reject"]}, asked=asked)
    assert (outcome.result, outcome.policy, outcome.comment) == ("fail", "reject", "Used From Domain Record")
    assert asked == ["_dmarc.example.com"]


def test_without_one_the_organisational_domain_record_and_its_sp():
    asked = []
    records = {"_dmarc.example.com": ["v=DMARC1; p=none; sp=quarantine"]}
    outcome = evaluate(records, from_value="a@mail.example.com", asked=asked)
    assert asked == ["_dmarc.mail.example.com", "_dmarc.example.com"]
    assert (outcome.result, outcome.policy, outcome.header_from) == ("fail", "quarantine", "mail.example.com")
    assert outcome.comment == "Used Org Domain Record"
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject"]}  # no sp: p applies to subdomains too
    assert evaluate(records, from_value="a@mail.example.com").policy == "reject"


def test_records_that_do_not_begin_with_the_version_are_discarded():
    records = {"_dmarc.example.com": ["v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC1;p=quarantine"]}
    assert evaluate(records).policy == "quarantine"
    assert evaluate({"_dmarc.example.com": ["v=DMARC10; p=reject"]}).result == "none"
    assert evaluate({"_dmarc.example.com": ["v = DMARC1 ; p = reject"]}).policy == "reject"  # *WSP allowed


def test_more_than_one_record_means_no_dmarc_processing():
    asked = []
    records = {"_dmarc.mail.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
               "_dmarc.example.com": ["v=DMARC1; p=reject"]}
    outcome = evaluate(records, from_value="a@mail.example.com", asked=asked)
    assert outcome.result == "none" and asked == ["_dmarc.mail.example.com"]  # no fallback either


def test_no_record_anywhere_is_none():
    outcome = evaluate({}, from_value="a@mail.example.com")
    assert (outcome.result, outcome.policy, outcome.header_from) == ("none", "", "mail.example.com")


def test_a_record_without_a_valid_p_counts_as_p_none_only_with_rua():
    assert evaluate({"_dmarc.example.com": ["v=DMARC1; p=bogus; rua=mailto:r@example.com"]}).policy == "none"
    assert evaluate({"_dmarc.example.com": ["v=DMARC1; rua=mailto:r@example.com"]}).result == "fail"
    assert evaluate({"_dmarc.example.com": ["v=DMARC1; p=bogus"]}).result == "none"
    assert evaluate({"_dmarc.example.com": ["v=DMARC1; p=reject; sp=bogus"]}).result == "none"


def test_a_tag_without_a_value_is_a_permerror():
    outcome = evaluate({"_dmarc.example.com": ["v=DMARC1; p=reject; mailto:x@example.com"]})
    assert (outcome.result, outcome.header_from) == ("permerror", "example.com")


def test_tags_and_values_ignore_case_and_unknown_tags_are_ignored():
    record = dmarc.parse_record("v=DMARC1; P=Reject; SP=NONE; adkim=S; aspf=s; pct=50; future=1;")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf, record.pct) == ("reject", "none", "s", "s", 50)
    record = dmarc.parse_record("v=DMARC1; p=none; adkim=x; pct=101")
    assert (record.adkim, record.pct) == ("r", 100)  # invalid values: the defaults


def test_a_dns_failure_propagates():
    with pytest.raises(DnsDown):
        evaluate({}, down={"_dmarc.example.com"})
    with pytest.raises(DnsDown):
        evaluate({}, from_value="a@mail.example.com", down={"_dmarc.example.com"})


# -- 3.1: identifier alignment -------------------------------------------------------------------------


@pytest.mark.parametrize("record, spf, dkim, result", [
    ("v=DMARC1; p=reject", "example.com", [], "pass"),
    ("v=DMARC1; p=reject", "bounces.example.com", [], "pass"),  # relaxed: same organisation
    ("v=DMARC1; p=reject; aspf=s", "bounces.example.com", [], "fail"),
    ("v=DMARC1; p=reject; aspf=s", "example.com", [], "pass"),
    ("v=DMARC1; p=reject", "example.net", [], "fail"),
    ("v=DMARC1; p=reject", None, ["example.com"], "pass"),
    ("v=DMARC1; p=reject", None, ["mail.example.com"], "pass"),
    ("v=DMARC1; p=reject; adkim=s", None, ["mail.example.com"], "fail"),
    ("v=DMARC1; p=reject; adkim=s", None, ["mail.example.com", "example.com"], "pass"),  # any aligned pass
    ("v=DMARC1; p=reject", None, ["list.example.org"], "fail"),
    ("v=DMARC1; p=reject", "example.net", ["example.org"], "fail"),
])
def test_alignment(record, spf, dkim, result):
    assert evaluate({"_dmarc.example.com": [record]}, spf=spf, dkim=dkim).result == result


def test_subdomains_of_unlisted_suffixes_are_not_all_aligned():
    records = {"_dmarc.example.test": ["v=DMARC1; p=reject"]}
    assert evaluate(records, from_value="a@example.test", dkim=["other.test"]).result == "fail"
    assert evaluate(records, from_value="a@example.test", dkim=["mail.example.test"]).result == "pass"


# -- 6.6.4: pct ----------------------------------------------------------------------------------------


def test_pct_applies_the_policy_to_its_sample_and_the_next_milder_one_to_the_rest():
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=25"]}
    assert evaluate(records, sample=lambda: 0.10).policy == "reject"
    outside = evaluate(records, sample=lambda: 0.60)
    assert (outside.result, outside.policy) == ("fail", "quarantine") and "pct=25" in outside.comment
    records = {"_dmarc.example.com": ["v=DMARC1; p=quarantine; pct=0"]}
    assert evaluate(records, sample=lambda: 0.0).policy == "none"
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=25"]}
    assert evaluate(records, spf="example.com", sample=lambda: 0.99).policy == "reject"  # a pass is a pass


# -- 6.6.1: several author domains -------------------------------------------------------------------------


def test_several_author_domains_the_strictest_failing_policy_applies():
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject"], "_dmarc.example.net": ["v=DMARC1; p=quarantine"],
               "_dmarc.example.org": ["v=DMARC1; p=none"]}
    outcome = evaluate(records, from_value="a@example.org, b@example.net", spf="example.org")
    assert (outcome.result, outcome.header_from, outcome.policy) == ("fail", "example.net", "quarantine")
    outcome = evaluate(records, from_value="a@example.com, b@example.net", spf="example.com")
    assert (outcome.result, outcome.header_from, outcome.policy) == ("fail", "example.net", "quarantine")
    outcome = evaluate(records, from_value="a@example.com, b@sub.example.com", spf="example.com")
    assert (outcome.result, outcome.header_from) == ("pass", "example.com")


# -- compared with authheaders -------------------------------------------------------------------------


def test_the_same_verdicts_as_authheaders_where_it_reads_the_rfc_right(monkeypatch):
    """Single From address, listed suffixes, no hyphen, one or no record, no pct, sp only on
    an organisational domain's record (authheaders applies sp to the author domain's own
    record too): the cases authheaders handles as RFC 7489 says."""
    authheaders = pytest.importorskip("authheaders")
    from authheaders import dmarc_lookup
    from authres import DKIMAuthenticationResult, SPFAuthenticationResult

    # authheaders parses its suffix list on every look-up (60 ms): its own list, parsed once
    path = next(p for p in dmarc._list_paths() if p.endswith("authheaders/public_suffix_list.txt"))
    with open(path, encoding="utf-8") as f:
        listed = dmarc_lookup.PublicSuffixList(f)
    monkeypatch.setattr(dmarc_lookup, "get_org_domain", listed.get_public_suffix)
    monkeypatch.setattr(authheaders, "get_org_domain", listed.get_public_suffix)
    records = [None, "v=DMARC1; p=reject", "v=DMARC1; p=quarantine; sp=none", "v=DMARC1; p=none; adkim=s; aspf=s",
               "v=DMARC1; p=reject; aspf=s", "v=DMARC1;p=quarantine;adkim=s;"]
    authors = ["example.com", "mail.example.com"]
    identities = [None, "example.com", "mail.example.com", "other.example.net"]
    compared = 0
    for record, at, author, spf, dkim in itertools.product(records, ["author", "organisation"], authors, identities, identities):
        if (at == "organisation" and author == "example.com") or (record and "sp=" in record and at == "author"):
            continue
        name = "_dmarc." + (author if at == "author" else "example.com")
        table = {name: [record]} if record else {}
        ours = evaluate(table, from_value=f"Author <a@{author}>", spf=spf, dkim=[dkim] if dkim else [])

        def dnsfunc(query, timeout=5):
            return table.get(query.rstrip("."), [None])[0]
        spf_result = SPFAuthenticationResult(result="pass" if spf else "fail", smtp_mailfrom=f"b@{spf or 'x.example.net'}")
        dkim_result = DKIMAuthenticationResult(result="pass" if dkim else "none", header_d=dkim)
        theirs = authheaders.check_dmarc(f"From: Author <a@{author}>\r\n\r\n".encode(), spf_result, dkim_result, dnsfunc=dnsfunc)
        case = (record, at, author, spf, dkim)
        assert ours.result == theirs.result, case
        if ours.result != "none":
            assert (ours.policy, ours.header_from, ours.comment) == (theirs.policy, theirs.header_from,
                                                                    theirs.result_comment), case
        compared += 1
    assert compared > 100


# -- Authentication-Results clauses (RFC 8601 2.2), compared with authres -------------------------------


def test_result_clauses_are_written_as_authres_writes_them():
    from authres import AuthenticationResultsHeader, DKIMAuthenticationResult, SPFAuthenticationResult
    from authres.dmarc import DMARCAuthenticationResult

    cases = [
        (result_clause("spf", "pass", reason="sender SPF authorized", properties=(("smtp.helo", "mx.example.com"), ("smtp.mailfrom", "example.com"))),
         SPFAuthenticationResult(result="pass", reason="sender SPF authorized", smtp_helo="mx.example.com", smtp_mailfrom="example.com")),
        (result_clause("spf", "softfail", reason="domain owner discourages use of this host", properties=(("smtp.helo", "[192.0.2.1]"), ("smtp.mailfrom", "example.com"))),
         SPFAuthenticationResult(result="softfail", reason="domain owner discourages use of this host", smtp_helo="[192.0.2.1]", smtp_mailfrom="example.com")),
        (result_clause("dkim", "pass", properties=(("header.d", "example.com"), ("header.i", "@example.com"), ("header.s", "sel"))),
         DKIMAuthenticationResult(result="pass", header_d="example.com", header_i="@example.com", header_s="sel")),
        (result_clause("dkim", "fail", comment="body hash mismatch", properties=(("header.d", "example.com"), ("header.i", "user@example.com"), ("header.s", "s 1"))),
         DKIMAuthenticationResult(result="fail", result_comment="body hash mismatch", header_d="example.com", header_i="user@example.com", header_s="s 1")),
        (result_clause("dkim", "permerror", comment="no key", properties=(("header.d", ""), ("header.i", ""), ("header.s", ""))),
         DKIMAuthenticationResult(result="permerror", result_comment="no key")),
        (result_clause("dmarc", "pass", comment="Used From Domain Record", properties=(("header.from", "example.com"), ("policy.dmarc", "reject"))),
         DMARCAuthenticationResult(result="pass", result_comment="Used From Domain Record", header_from="example.com", policy="reject")),
        (result_clause("dmarc", "none", properties=(("header.from", "example.com"), ("policy.dmarc", ""))),
         DMARCAuthenticationResult(result="none", header_from="example.com")),
    ]
    for ours, theirs in cases:
        assert ours == str(theirs)
    expected = str(AuthenticationResultsHeader(authserv_id="mx.example.com", results=[t for _, t in cases]))
    assert results_header("mx.example.com", [o for o, _ in cases]) == (expected + "\r\n").encode()
    assert results_header("mx.example.com", []) == b"Authentication-Results: mx.example.com; none\r\n"


def test_a_reason_from_a_message_cannot_end_the_comment_or_the_field():
    clause = result_clause("dkim", "permerror", comment="bad tag b'x)' (\\)\r\nX-Injected: 1",
                           properties=(("header.d", 'a"b'), ("header.s", "s;1\r\n")))
    assert clause == 'dkim=permerror (bad tag b\'x\\)\' \\(\\\\\\)??X-Injected: 1) header.d="a\\"b" header.s="s;1??"'


def test_a_junk_address_beside_a_real_one_leaves_its_policy_in_force():
    outcome = evaluate({"_dmarc.paypal.com": ["v=DMARC1; p=reject"]}, from_value="u@paypal.com, junk")
    assert (outcome.result, outcome.header_from, outcome.policy) == ("fail", "paypal.com", "reject")


def test_a_name_dns_cannot_hold_has_no_record_rather_than_a_temporary_failure():
    import dns.resolver

    from mailstack.smtp.authentication import txt_record

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], 9, 0.5
    assert txt_record(resolver, "_dmarc." + "x" * 64 + ".example") == []
    assert txt_record(resolver, "sel._domainkey." + "a." * 130 + "example") == []


def test_a_flaw_in_the_evaluation_is_a_permerror_not_a_451_for_ever(monkeypatch):
    from mailstack.smtp import authentication

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(authentication.dmarc_evaluation, "evaluate", broken)
    checker = authentication.InboundChecker("mx.example.test", None, spf=False, dkim=False)
    verdict = checker.check(b"From: a@example.com\r\n\r\nbody\r\n", "192.0.2.1", "a@example.com", "mx.example.com")
    assert verdict.action == "deliver" and b"dmarc=permerror" in verdict.header


def test_a_value_with_an_at_sign_is_bare_only_when_it_is_an_address():
    assert result_clause("dkim", "pass", properties=(("header.i", "user@example.com"),)) == "dkim=pass header.i=user@example.com"
    assert result_clause("dkim", "pass", properties=(("header.i", "a,b<c>@example.com"),)) == 'dkim=pass header.i="a,b<c>@example.com"'
