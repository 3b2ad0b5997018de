"""The tests (RFC 5228 section 5 and the extensions): each returns True or False.

Header values come from the run's lazily parsed :class:`~mailstack.sieve.message.Message`;
every loop over fields, addresses or parts checks the run's deadline.
"""

from __future__ import annotations

from .body import body_texts
from .dates import current_date, date_part, header_date, parse_zone
from .errors import SieveRuntimeError
from .message import address_part


def evaluate(run, cmd) -> bool:
    return TESTS[cmd.name](run, cmd)


def _select(run, cmd, name: str):
    """The fields of ``name``, or only the :index'th one (RFC 5260 6, from the end with :last)."""
    fields = run.msg.named(name)
    index = cmd.targ("index")
    if index is None:
        return fields
    if index > len(fields):
        return []
    return [fields[-index] if cmd.tag("last") else fields[index - 1]]


def _compare(run, cmd, values, keys, match_variables: bool = True) -> bool:
    matcher = run.matcher(cmd)
    if matcher.kind == ":count":
        return matcher.count(len(values), keys)
    result = matcher.test(values, keys)
    return run.matched(matcher, result) if match_variables else result


def t_header(run, cmd) -> bool:
    values = []
    for name in run.expand_list(cmd.pos[0]):
        run.tick()
        values += [f.value for f in _select(run, cmd, name)]
    return _compare(run, cmd, values, run.expand_list(cmd.pos[1]))


#: RFC 5228 5.1: the address test is restricted to headers that contain addresses: at least
#: the seven it names, and (SHOULD) the other address-list fields (RFC 5322 3.6, RFC 4021).
ADDRESS_HEADERS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-bcc", "resent-reply-to", "return-path", "delivered-to", "x-original-to",
    "envelope-to", "x-envelope-to", "x-envelope-from", "errors-to", "mail-followup-to", "mail-reply-to",
    "disposition-notification-to", "apparently-to", "original-from", "x-sender",
})


def t_address(run, cmd) -> bool:
    part = cmd.tag("part", ":all")
    values = []
    for name in run.expand_list(cmd.pos[0]):
        run.tick()
        if name.lower() not in ADDRESS_HEADERS:  # e.g. Subject: never parsed as addresses
            continue
        fields = _select(run, cmd, name) if cmd.targ("index") is not None else None
        for address in run.msg.addresses(name, fields):
            if part != ":all" and not _valid_address(address):
                continue  # RFC 5228 2.7.4: an invalid address has no :localpart or :domain
            found = address_part(address, part)
            if found is not None:
                values.append(found)
    return _compare(run, cmd, values, run.expand_list(cmd.pos[1]))


def _valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain)


def t_envelope(run, cmd) -> bool:
    part = cmd.tag("part", ":all")
    env = run.envelope
    values = []
    for name in run.expand_list(cmd.pos[0]):
        name = name.lower()
        if name == "from":
            address = env.sender
        elif name == "to":
            address = env.recipient
        elif name == "auth":
            address = env.auth
            if not address:
                continue
        else:
            raise SieveRuntimeError(f"unknown envelope part {name!r}")
        if address.startswith("@") and ":" in address:  # RFC 5228 5.4: source routes dropped
            address = address.partition(":")[2]
        if address == "":  # RFC 5228 5.4: "" whatever the address part (:user, :detail too)
            if cmd.tag("match") != ":count":  # RFC 5231 4.2: but it counts as no address
                values.append("")
            continue
        found = address_part(address, part)
        if found is not None:
            values.append(found)
    return _compare(run, cmd, values, run.expand_list(cmd.pos[1]))


def t_exists(run, cmd) -> bool:
    return all(run.msg.named(name) for name in run.expand_list(cmd.pos[0]))


def t_size(run, cmd) -> bool:
    limit = cmd.pos[0]
    return run.msg.size > limit if cmd.tag("size") == ":over" else run.msg.size < limit


def t_allof(run, cmd) -> bool:
    return all(evaluate(run, t) for t in cmd.tests)


def t_anyof(run, cmd) -> bool:
    return any(evaluate(run, t) for t in cmd.tests)


def t_not(run, cmd) -> bool:
    return not evaluate(run, cmd.tests[0])


def t_body(run, cmd) -> bool:
    transform = cmd.tag("transform", ":text")
    types = tuple(run.expand_list(cmd.targ("transform"))) if transform == ":content" else ()
    key = (transform, types)
    texts = run.bodies.get(key)
    if texts is None:
        texts = run.bodies[key] = body_texts(run.msg.raw, transform, types, run.max_body, run.tick)
    # RFC 5173 6: body wildcards MUST NOT set match variables
    return _compare(run, cmd, texts, run.expand_list(cmd.pos[0]), match_variables=False)


def t_string(run, cmd) -> bool:
    values = run.expand_list(cmd.pos[0])
    matcher = run.matcher(cmd)
    keys = run.expand_list(cmd.pos[1])
    if matcher.kind == ":count":  # RFC 5229 5: empty strings are not counted
        return matcher.count(sum(1 for v in values if v), keys)
    return run.matched(matcher, matcher.test(values, keys))


def t_hasflag(run, cmd) -> bool:
    from .commands import _flag_list

    if cmd.pos[0] is None:
        flags = list(run.flags)
    else:
        flags = _flag_list([run.get_variable(n) for n in run.expand_list(cmd.pos[0])])
    # RFC 5232 4: a key such as "b A" is two flags (hasflag :is "b A" is true for "A B")
    return _compare(run, cmd, flags, _flag_list(run.expand_list(cmd.pos[1])))


def _zone(run, cmd):
    zone = cmd.targ("zone")
    if cmd.tag("zone") == ":originalzone":
        return "original"
    if zone is None:
        return None
    zone = parse_zone(run.expand(zone))
    if zone is None:
        raise SieveRuntimeError(f"bad time zone {cmd.targ('zone')!r}")
    return zone


def t_date(run, cmd) -> bool:
    name = run.expand(cmd.pos[0])
    part = run.expand(cmd.pos[1]).lower()
    zone = _zone(run, cmd)
    values = []
    fields = _select(run, cmd, name)
    if cmd.targ("index") is None:  # RFC 5260 4: only the first field (without :index)
        fields = fields[:1]
    for field in fields:
        when = header_date(field.value, name)
        if when is not None:
            found = date_part(when, part, zone)
            if found is None:
                raise SieveRuntimeError(f"unknown date part {part!r}")
            values.append(found)
    return _compare(run, cmd, values, run.expand_list(cmd.pos[2]))


def t_currentdate(run, cmd) -> bool:
    part = run.expand(cmd.pos[0]).lower()
    zone = _zone(run, cmd)
    found = date_part(current_date(run.now), part, zone)
    if found is None:
        raise SieveRuntimeError(f"unknown date part {part!r}")
    return _compare(run, cmd, [found], run.expand_list(cmd.pos[1]))


def t_mailboxexists(run, cmd) -> bool:
    return all(run.mailbox_exists(name) for name in run.expand_list(cmd.pos[0]))


TESTS = {
    "header": t_header, "address": t_address, "envelope": t_envelope, "exists": t_exists,
    "size": t_size, "allof": t_allof, "anyof": t_anyof, "not": t_not,
    "true": lambda run, cmd: True, "false": lambda run, cmd: False,
    "body": t_body, "string": t_string, "hasflag": t_hasflag, "date": t_date,
    "currentdate": t_currentdate, "mailboxexists": t_mailboxexists,
}
