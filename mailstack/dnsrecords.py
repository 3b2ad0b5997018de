"""The DNS records a domain needs for mail, and a checker that compares them with DNS.

``mailstack dns DOMAIN`` prints them; ``--check`` asks DNS (the ``[dns]`` resolver) and says
which are missing or wrong.  Records: MX; SPF (RFC 7208); the DKIM key (RFC 6376); DMARC
(RFC 7489); MTA-STS (RFC 8461) and TLS-RPT (RFC 8460); the client set-up SRV records of
RFC 6186 (and ManageSieve's of RFC 5804 1.8) and an autoconfig name for Thunderbird; MX and SPF of an
``[srs] domain`` of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dns.exception
import dns.resolver

from mailstack import mtasts
from mailstack.smtp import authentication


@dataclass
class Record:
    name: str
    rtype: str
    value: str
    why: str
    check: str = "exact"  # "exact" | "prefix" (the value starts with what we expect) | "contains" | "sts"


def records_for(cfg, domain: str) -> list[Record]:
    host = cfg.hostname
    keys = authentication.key_paths(cfg.dkim["keys"], domain, cfg.dkim["selector"])
    out = [
        Record(domain, "MX", f"10 {host}.", "mail for the domain comes here", "contains"),
        Record(domain, "TXT", "v=spf1 mx -all", "SPF: only the MX hosts send for the domain", "prefix"),
    ]
    if os.path.exists(keys["rsa"]):
        records = authentication.generate_keys(cfg.dkim["keys"], domain, cfg.dkim["selector"],
                                               os.path.exists(keys["ed25519"]))
        out.append(Record(f"{cfg.dkim['selector']}._domainkey.{domain}", "TXT", records["rsa"], "DKIM public key (RSA)"))
        if "ed25519" in records:
            out.append(Record(f"{authentication.ed25519_selector(cfg.dkim['selector'])}._domainkey.{domain}", "TXT",
                              records["ed25519"], "DKIM public key (Ed25519)"))
    else:
        out.append(Record(f"{cfg.dkim['selector']}._domainkey.{domain}", "TXT", "(run: mailstack dkim genkey " + domain + ")",
                          "DKIM public key: no key made yet", "contains"))
    out += [
        Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}",
               "DMARC policy and where reports go", "prefix"),
        # The id is a digest of the policy: the same until the policy changes (mailstack.mtasts).
        Record(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={mtasts.policy_id(cfg)}",
               f"MTA-STS; the policy is served at https://mta-sts.{domain}/.well-known/mta-sts.txt", "sts"),
        Record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}", "TLS reporting", "prefix"),
    ]
    services = {"submissions": 465, "submission": 587, "imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}
    for prio, (service, port) in enumerate(services.items()):
        if cfg.listener(service) is not None:
            out.append(Record(f"_{service}._tcp.{domain}", "SRV", f"{prio} 1 {port} {host}.", "client set-up (RFC 6186)",
                              "contains"))
    if cfg.listener("managesieve") is not None:  # RFC 5804 1.8: where ManageSieve clients find the server
        out.append(Record(f"_sieve._tcp.{domain}", "SRV", f"0 1 4190 {host}.", "ManageSieve, Sieve filters (RFC 5804)",
                          "contains"))
    out.append(Record(f"autoconfig.{domain}", "CNAME", f"{host}.", "Thunderbird's autoconfiguration", "exact"))
    out.append(Record(f"mta-sts.{domain}", "CNAME", f"{host}.", "MTA-STS policy host (the https listener)", "exact"))
    return out + (srs_records(cfg) if domain == cfg.domains[0] else [])


def srs_records(cfg) -> list[Record]:
    """An [srs] domain of its own (not one of [server] domains): bounces to the rewritten
    senders must reach this MX, and the senders must pass SPF (mailstack.srs)."""
    srs = getattr(cfg, "srs", None) or {}
    if not srs.get("enabled") or srs.get("domain", cfg.domains[0]) in cfg.domains:
        return []
    return [Record(srs["domain"], "MX", f"10 {cfg.hostname}.", "bounces to forwarded mail's SRS senders come here", "contains"),
            Record(srs["domain"], "TXT", "v=spf1 mx -all", "SPF for the SRS senders of forwarded mail", "prefix")]


def mta_sts_policy(cfg) -> str:
    return mtasts.policy_text(cfg)


def format_zone(records: list[Record]) -> str:
    width = max(len(r.name) for r in records) + 1
    lines = []
    for r in records:
        value = f'"{r.value}"' if r.rtype == "TXT" and not r.value.startswith("(") else r.value
        lines.append(f"{r.name + '.':<{width + 1}} {r.rtype:<5} {value}   ; {r.why}")
    return "\n".join(lines)


def check(records: list[Record], resolver: dns.resolver.Resolver) -> list[tuple[Record, str, str]]:
    """[(record, "ok" | "missing" | "wrong" | "error", detail)] from asking DNS."""
    results = []
    for r in records:
        try:
            answer = resolver.resolve(r.name, r.rtype, search=False)
            if r.rtype == "TXT":
                found = [b"".join(x.strings).decode("utf-8", "replace") for x in answer]
            else:
                found = [x.to_text() for x in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            results.append((r, "missing", ""))
            continue
        except dns.exception.DNSException as e:
            results.append((r, "error", str(e)))
            continue
        want = r.value
        if r.value.startswith("(run:"):
            results.append((r, "wrong", "a key is published but none is made here: " + "; ".join(found)))
            continue
        match = {
            "exact": lambda f: f.rstrip(".").lower() == want.rstrip(".").lower() or f == want,
            "prefix": lambda f: f.lower().startswith(want.split(";")[0].split(" ")[0].lower()),
            "contains": lambda f: want.split()[-1].rstrip(".").lower() in f.lower(),
            # an old id makes senders keep the old policy (RFC 8461 section 3.1): compare it too
            "sts": lambda f: "".join(f.split()).rstrip(";") == "".join(want.split()),
        }[r.check]
        ok = any(match(f) for f in found)
        results.append((r, "ok" if ok else "wrong", "; ".join(found)))
    return results
