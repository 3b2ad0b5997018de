"""The actions and the other commands (RFC 5228 section 4, RFC 5229, 5230, 5232, 5293,
5429, 6609, 3894, 5490): each adds to the run's action list or changes its state.

Duplicates collapse (RFC 5228 2.10.3): one store per mailbox (``keep`` is INBOX), one
redirect per address; ``reject`` excludes keep, fileinto, redirect and vacation (RFC 5429 2.4).
"""

from __future__ import annotations

import hashlib
import re

from .actions import FileInto, Keep, Redirect, Reject, Vacation
from .checker import valid_address, valid_field_name, valid_mailbox_list
from .errors import SieveRuntimeError
from .interp import Return, Stop
from .matching import fold, fold_upper, quote_regex, quote_wildcard

MAX_REDIRECTS = 32
MAX_ACTIONS = 256
#: RFC 5230 4.1 lets a site bound :days (a minimum of at least 1 day, a maximum above 7 and
#: preferably above 30 days); RFC 6131's :seconds gets the same maximum.
MIN_DAYS, MAX_DAYS, DEFAULT_DAYS = 1, 90, 7
#: Trace and loop-prevention fields stay as they are (RFC 5293's security considerations):
#: editing them is ignored, not an error.
PROTECTED_FIELDS = frozenset({"received", "auto-submitted"})


def _add(run, action) -> None:
    if len(run.actions) >= MAX_ACTIONS:
        raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")
    run.actions.append(action)


def _flag_list(values) -> list[str]:
    """Flags as a list: each string may hold several separated by spaces (RFC 5232 3)."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split():
            if flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return out


def store(run, mailbox: str, flags: tuple, create: bool, copy: bool, implicit: bool = False) -> None:
    """keep / fileinto: at most one store per mailbox, the last flag list winning (RFC 5232 3).
    ``fileinto "INBOX"`` is a keep (RFC 5228 2.10.3), so delivery sees one form."""
    is_inbox = mailbox.upper() == "INBOX"
    if not implicit and run.state.get("reject"):
        raise SieveRuntimeError("reject cannot be combined with keep or fileinto (RFC 5429 2.4)")
    for i, action in enumerate(run.actions):
        if is_inbox and isinstance(action, Keep):
            run.actions[i] = Keep(tuple(flags))
            break
        if not is_inbox and isinstance(action, FileInto) and action.mailbox == mailbox:
            run.actions[i] = FileInto(mailbox, tuple(flags), action.create or create)
            break
    else:
        _add(run, Keep(flags) if is_inbox else FileInto(mailbox, flags, create))
    if not copy:
        run.implicit_keep = False


#: An IMAP flag (RFC 3501 9): an atom, or "\\" and an atom; ASCII only.
_FLAG = re.compile(r'\\?[^(){ %*"\\\]\x00-\x1f\x7f-\U0010ffff]+\Z')


def _settable(flags: list[str]) -> list[str]:
    """RFC 5232 2: flags that fail the IMAP syntax, and \\Recent, are ignored, not errors."""
    return [f for f in flags if _FLAG.match(f) and f.lower() != "\\recent"]


def _flags_for(run, cmd) -> tuple:
    if cmd.tag("flags") is not None:
        return tuple(_settable(_flag_list(run.expand_list(cmd.targ("flags")))))
    return tuple(run.flags)


def do_keep(run, cmd) -> None:
    store(run, "INBOX", _flags_for(run, cmd), False, False)


def do_fileinto(run, cmd) -> None:
    mailbox = run.expand(cmd.pos[0])
    if not mailbox:
        raise SieveRuntimeError("fileinto needs a mailbox name")
    store(run, mailbox, _flags_for(run, cmd), bool(cmd.tag("create")), bool(cmd.tag("copy")))


def do_discard(run, cmd) -> None:
    run.implicit_keep = False


def do_stop(run, cmd) -> None:
    raise Stop()


def do_redirect(run, cmd) -> None:
    if run.state.get("reject"):
        raise SieveRuntimeError("reject cannot be combined with redirect (RFC 5429 2.4)")
    address = run.expand(cmd.pos[0]).strip()
    if not valid_address(address):
        raise SieveRuntimeError(f"redirect to an invalid address {address!r}")
    if not any(isinstance(a, Redirect) and a.address.lower() == address.lower() for a in run.actions):
        count = run.state["redirects"] = run.state.get("redirects", 0) + 1
        if count > MAX_REDIRECTS:
            raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
        _add(run, Redirect(address))
    if not cmd.tag("copy"):
        run.implicit_keep = False


def do_reject(run, cmd) -> None:
    if run.state.get("reject"):
        raise SieveRuntimeError("only one reject or ereject per run (RFC 5429 2.4)")
    if any(isinstance(a, (Keep, FileInto, Redirect, Vacation)) for a in run.actions):
        raise SieveRuntimeError(f"{cmd.name} cannot be combined with keep, fileinto, redirect or vacation"
                                " (RFC 5429 2.4)")
    run.state["reject"] = True
    _add(run, Reject(run.expand(cmd.pos[0]), ereject=cmd.name == "ereject"))
    run.implicit_keep = False


def do_vacation(run, cmd) -> None:
    if run.state.get("vacation"):
        raise SieveRuntimeError("only one vacation per run")
    if run.state.get("reject"):
        raise SieveRuntimeError("vacation cannot be combined with reject (RFC 5429 2.4, RFC 5230 4.7)")
    run.state["vacation"] = True
    reason = run.expand(cmd.pos[0])
    subject = cmd.targ("subject")
    from_addr = cmd.targ("from")
    subject = None if subject is None else run.expand(subject)
    from_addr = None if from_addr is None else run.expand(from_addr)
    if from_addr is not None and not valid_mailbox_list(from_addr):
        raise SieveRuntimeError(f"vacation :from needs a mailbox-list, not {from_addr!r} (RFC 5230 4.3)")
    mime = bool(cmd.tag("mime"))
    handle = cmd.targ("handle")
    if handle is None:  # RFC 5230 4.2: from the arguments that shape the reply, as written
        # (before variable expansion), so ":subject "Re: ${1}"" is one response for all subjects
        raw = [cmd.pos[0], cmd.targ("subject") or "", cmd.targ("from") or "", str(mime)]
        handle = "auto-" + hashlib.sha256("\0".join(raw).encode("utf-8")).hexdigest()[:32]
    else:
        handle = run.expand(handle)
    _add(run, Vacation(reason=reason, seconds=_period(cmd), subject=subject, from_addr=from_addr,
                       addresses=tuple(run.expand_list(cmd.targ("addresses"))), handle=handle, mime=mime))


def _period(cmd) -> int:
    tag, value = cmd.tags.get("period", (":days", DEFAULT_DAYS))
    if tag == ":seconds":  # RFC 6131: 0 means "reply every time"
        return max(0, min(value, MAX_DAYS * 86400))
    return max(MIN_DAYS, min(value, MAX_DAYS)) * 86400


def _flag_target(run, cmd):
    name = run.expand(cmd.pos[0]) if cmd.pos[0] is not None else None
    current = run.flags if name is None else _flag_list([run.get_variable(name)])
    return name, current, _flag_list(run.expand_list(cmd.pos[1]))


def _flag_store(run, name, flags) -> None:
    if name is None:
        run.flags = flags
    else:
        run.set_variable(name, " ".join(flags))


def do_setflag(run, cmd) -> None:
    name, _, given = _flag_target(run, cmd)
    _flag_store(run, name, _settable(given))


def do_addflag(run, cmd) -> None:
    name, current, given = _flag_target(run, cmd)
    _flag_store(run, name, _flag_list(current + _settable(given)))


def do_removeflag(run, cmd) -> None:
    name, current, given = _flag_target(run, cmd)
    doomed = {f.lower() for f in given}
    _flag_store(run, name, [f for f in current if f.lower() not in doomed])


def do_set(run, cmd) -> None:
    """RFC 5229 4: modifiers applied from the highest precedence (40) down to :length (10);
    the case ones change only US-ASCII letters (4.1.3)."""
    value = run.expand(cmd.pos[1])
    mod = cmd.tag("mod40")
    if mod == ":lower":
        value = fold(value)
    elif mod == ":upper":
        value = fold_upper(value)
    mod = cmd.tag("mod30")
    if mod == ":lowerfirst":
        value = fold(value[:1]) + value[1:]
    elif mod == ":upperfirst":
        value = fold_upper(value[:1]) + value[1:]
    mod = cmd.tag("mod20")
    if mod == ":quotewildcard":
        value = quote_wildcard(value)
    elif mod == ":quoteregex":
        value = quote_regex(value)
    if cmd.tag("mod10"):
        value = str(len(value))
    run.set_variable(run.expand(cmd.pos[0]), value)


def do_include(run, cmd) -> None:
    location = "global" if cmd.tag("location") == ":global" else "personal"
    name = str(cmd.pos[0])  # RFC 6609 3.2: a constant string, variables never expanded
    run.include(name, location, bool(cmd.tag("once")), bool(cmd.tag("optional")))


def do_return(run, cmd) -> None:
    raise Return()


def do_global(run, cmd) -> None:
    for name in cmd.pos[0]:
        name = name.lower()
        if name in run.frame.local and name not in run.frame.global_names:  # RFC 6609 3.4.1
            raise SieveRuntimeError(f"global {name!r}: already set as a local variable in this script")
        run.frame.global_names.add(name)


def do_addheader(run, cmd) -> None:
    name = run.expand(cmd.pos[0])
    if not valid_field_name(name):
        raise SieveRuntimeError(f"addheader: invalid field name {name!r}")
    if name.lower() in PROTECTED_FIELDS:
        return
    value = run.expand(cmd.pos[1])
    try:
        run.msg.add(name, value, bool(cmd.tag("last")))
    except ValueError as e:  # RFC 5293 4: fold or "flag an error"
        raise SieveRuntimeError(f"addheader {name}: {e}") from None


def do_deleteheader(run, cmd) -> None:
    name = run.expand(cmd.pos[0])
    if name.lower() in PROTECTED_FIELDS:
        return
    fields = run.msg.named(name)
    index = cmd.targ("index")
    if index is not None:  # RFC 5293 5: the N-th occurrence, from the end with :last
        if index > len(fields):
            return
        fields = [fields[-index] if cmd.tag("last") else fields[index - 1]]
    patterns = cmd.pos[1]
    if patterns is not None:
        matcher = run.matcher(cmd)
        keys = run.expand_list(patterns)
        fields = [f for f in fields if matcher.test([f.value], keys)]
    run.msg.delete(list(fields))


COMMANDS = {
    "keep": do_keep, "fileinto": do_fileinto, "discard": do_discard, "stop": do_stop,
    "redirect": do_redirect, "reject": do_reject, "ereject": do_reject, "vacation": do_vacation,
    "setflag": do_setflag, "addflag": do_addflag, "removeflag": do_removeflag, "set": do_set,
    "include": do_include, "return": do_return, "global": do_global,
    "addheader": do_addheader, "deleteheader": do_deleteheader,
}
