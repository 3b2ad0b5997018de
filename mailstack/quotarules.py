"""Quota limits as administrators write them: ``[quota]`` values and the per-user rules of
Dovecot's passwd-file (``userdb_quota_rule=*:storage=1G``, ``userdb_quota_rule2=*:messages=N``).

Sizes take Dovecot's units: ``b``, ``k``, ``M``, ``G``, ``T`` (powers of 1024, any case, an
optional trailing ``B``).  A bare number is bytes in ``[quota] storage`` and in a rule's
``bytes=``, but kilobytes in a rule's ``storage=`` (Dovecot's meaning, kept so that users
files brought from Dovecot mean the same here).  0 is "no limit" everywhere.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: The extra fields read: Dovecot's userdb names with and without the ``userdb_`` prefix.
RULE_FIELD = re.compile(r"^(?:userdb_)?quota_rule(\d*)$")


def parse_size(text: str, bare_unit: int = 1) -> int:
    """``"1G"`` -> 1073741824; ValueError for anything else."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (a number with an optional unit b, k, M, G or T)")
    unit = _UNITS[m.group(2).lower()] if m.group(2) else bare_unit
    return int(m.group(1)) * unit


def format_size(n: int) -> str:
    """The largest exact unit: 1073741824 -> "1G", 1500 -> "1500"."""
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def parse_rule(value: str) -> dict[str, int]:
    """One rule's value, ``*:storage=1G`` or ``*:messages=1000`` or both (``*:storage=1G:messages=10``):
    {"storage": bytes, "messages": n}.  Rules for one mailbox (``Trash:storage=+100M``) and
    ``ignore`` are Dovecot's refinements this server does not apply: {} (see README, Quotas).
    ValueError for a ``*`` rule it cannot read."""
    root, sep, rest = value.partition(":")
    if not sep or root != "*":
        return {}
    out: dict[str, int] = {}
    for part in re.split(r"[: ]+", rest.strip()):
        if not part or part == "ignore":
            continue
        key, eq, number = part.partition("=")
        key = key.lower()
        if not eq or key not in ("storage", "bytes", "messages"):
            raise ValueError(f"unknown quota limit {part!r} (storage=, bytes= or messages=)")
        if number.startswith(("+", "-")) or number.endswith("%"):
            raise ValueError(f"relative limits are not supported: {part!r}")
        if key == "messages":
            if not number.isdigit():
                raise ValueError(f"messages= needs a whole number, not {number!r}")
            out["messages"] = int(number)
        else:
            out["storage"] = parse_size(number, 1024 if key == "storage" else 1)
    return out


def rules_of(extra_fields: str) -> dict[str, int]:
    """The limits the extra fields of a passwd-file line set (later rule numbers win)."""
    found: list[tuple[int, dict]] = []
    for field in extra_fields.split():
        key, eq, value = field.partition("=")
        m = RULE_FIELD.match(key)
        if eq and m:
            found.append((int(m.group(1) or 1), parse_rule(value)))
    out: dict[str, int] = {}
    for _n, limits in sorted(found, key=lambda item: item[0]):
        out.update(limits)
    return out


def with_rules(extra_fields: str, storage: int | None, messages: int | None) -> str:
    """The extra fields with the ``*`` storage and messages rules replaced (None: left as
    they are; 0 keeps an explicit "no limit").  Other fields keep their place."""
    kept, rules = [], []
    for field in extra_fields.split():
        key, eq, value = field.partition("=")
        m = RULE_FIELD.match(key)
        if eq and m and value.startswith("*:"):
            limits = parse_rule(value)
            if storage is not None:
                limits.pop("storage", None)
            if messages is not None:
                limits.pop("messages", None)
            rules += [f"*:{k}={_rule_size(v) if k == 'storage' else v}" for k, v in limits.items()]
            continue
        kept.append(field)
    if storage is not None:
        rules.append(f"*:storage={_rule_size(storage)}")
    if messages is not None:
        rules.append(f"*:messages={messages}")
    taken = [int(m.group(1) or 1) for f in kept if (m := RULE_FIELD.match(f.partition("=")[0]))]
    first = max(taken, default=0) + 1
    numbered = [f"userdb_quota_rule{'' if n == 1 else n}={rule}" for n, rule in enumerate(rules, first)]
    return " ".join(kept + numbered)


def _rule_size(n: int) -> str:
    """A size for a rule's ``storage=``, where a bare number would mean kilobytes."""
    text = format_size(n)
    return text if not text.isdigit() or n == 0 else f"{n}b"
