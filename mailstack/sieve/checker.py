"""Compile-time checks (RFC 5228 2.10.6, 3.2) turning the parse tree into immutable commands.

Everything a script could get wrong without seeing a message is refused here with the line
and column of the offending token: unknown commands, tests and tags, wrong arguments,
missing ``require``, misplaced ``require``/``elsif``/``else``, bad comparators, relations,
date parts, regexes and variable names.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from . import spec as S
from .errors import SieveSyntaxError
from .matching import compile_regex, RegexError
from .parser import Arg, Node

VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENCODED = re.compile(r"\$\{(hex|unicode):([^}$]*)\}", re.IGNORECASE)
_ZONE = re.compile(r"[+-][0-9]{4}\Z")
#: variable-ref with a namespace (RFC 5229 3): identifier "." *(variable-name ".") variable-name
_NAMESPACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\.((?:[A-Za-z0-9_]+\.)*[A-Za-z0-9_]+)\}")


class Template(str):
    """A string with ``${...}`` references (RFC 5229 3), expanded at run time."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Cmd:
    """One checked command or test.  ``tags`` maps a tag group to (tag, argument or None);
    ``pos`` holds the positional arguments in the order of the spec, None for omitted
    leading optional ones.  An ``if`` carries ``branches``: (test or None for else, block)."""

    name: str
    line: int
    column: int
    tags: dict
    pos: tuple = ()
    tests: tuple = ()
    block: tuple = ()
    branches: tuple = ()

    def tag(self, key: str, default=None):
        found = self.tags.get(key)
        return default if found is None else found[0]

    def targ(self, key: str, default=None):
        found = self.tags.get(key)
        return default if found is None else found[1]


def _fail(message: str, where) -> SieveSyntaxError:
    return SieveSyntaxError(message, where.line, where.column)


class Checker:
    def __init__(self) -> None:
        self.requires: set[str] = set()

    def script(self, nodes: list[Node]) -> tuple:
        body_started = False
        for node in nodes:
            if node.name == "require":
                if body_started:
                    raise _fail("require must come before any other command (RFC 5228 3.2)", node)
                self.require(node)
            else:
                body_started = True
        return self.block([n for n in nodes if n.name != "require"])

    def require(self, node: Node) -> None:
        self.command(node, S.COMMANDS["require"])
        for name in node.args[0].value:
            if name not in S.CAPABILITIES:
                raise _fail(f"unsupported extension {name!r} in require", node.args[0])
            self.requires.add(name)
            if name == "vacation-seconds":  # RFC 6131 2: it implies "vacation"
                self.requires.add("vacation")

    def needs(self, ext, where, what: str) -> None:
        for name in (ext if isinstance(ext, tuple) else (ext,)):
            if name and name not in self.requires:
                raise _fail(f'{what} needs require "{name}"', where)

    def block(self, nodes: list[Node]) -> tuple:
        out: list[Cmd] = []
        chain: list | None = None
        for node in nodes:
            if node.name in ("elsif", "else"):
                if chain is None:
                    raise _fail(f"{node.name} without a preceding if or elsif", node)
                self.command(node, S.COMMANDS[node.name])
                test = self.test(node.tests[0]) if node.name == "elsif" else None
                chain[1].append((test, self.block(node.block)))
                if node.name == "else":
                    out.append(self.finish_if(chain))
                    chain = None
                continue
            if chain is not None:
                out.append(self.finish_if(chain))
                chain = None
            if node.name == "require":
                raise _fail("require must come before any other command (RFC 5228 3.2)", node)
            if node.name == "if":
                self.command(node, S.COMMANDS["if"])
                chain = [node, [(self.test(node.tests[0]), self.block(node.block))]]
                continue
            if node.name not in S.COMMANDS:
                raise _fail(f"unknown command {node.name!r}", node)
            out.append(self.command(node, S.COMMANDS[node.name]))
        if chain is not None:
            out.append(self.finish_if(chain))
        return tuple(out)

    @staticmethod
    def finish_if(chain) -> Cmd:
        node, branches = chain
        return Cmd("if", node.line, node.column, {}, branches=tuple(branches))

    def test(self, node: Node) -> Cmd:
        spec = S.TESTS.get(node.name)
        if spec is None:
            raise _fail(f"unknown test {node.name!r}", node)
        return self.command(node, spec, is_test=True)

    def command(self, node: Node, spec: S.Spec, is_test: bool = False) -> Cmd:
        kind = "test" if is_test else "command"
        self.needs(spec.ext, node, f"{kind} {node.name}")
        if spec.block and node.block is None:
            raise _fail(f"{node.name} needs a block {{ ... }}", node)
        if not spec.block and node.block is not None:
            raise _fail(f"{node.name} takes no block", node)
        tags, positional = self.arguments(node, spec)
        if spec.tests == "one" and (len(node.tests) != 1 or node.has_test_list):
            raise _fail(f"{node.name} needs exactly one test", node)
        if spec.tests == "list" and not node.has_test_list:
            raise _fail(f"{node.name} needs a test list in parentheses", node)
        if not spec.tests and node.tests:
            raise _fail(f"{kind} {node.name} takes no test", node.tests[0])
        tests = tuple(self.test(t) for t in node.tests) if spec.tests == "list" or node.name == "not" else ()
        cmd = Cmd(node.name, node.line, node.column, tags, positional, tests)
        _semantic(self, cmd, node)
        return cmd

    def arguments(self, node: Node, spec: S.Spec) -> tuple[dict, tuple]:
        tags: dict = {}
        positional: list = []
        positional_args: list[Arg] = []
        args = node.args
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg.kind != "tag":
                positional.append(self.value(arg))
                positional_args.append(arg)
                continue
            if positional:
                raise _fail(f"tag {arg.value} after positional arguments", arg)
            tag = spec.tags.get(arg.value)
            if tag is None:
                raise _fail(f"unknown tag {arg.value} for {node.name}", arg)
            self.needs(tag.ext, arg, f"tag {arg.value}")
            if tag.key in tags:
                raise _fail(f"tag {arg.value} conflicts with {tags[tag.key][0]}", arg)
            value = None
            if tag.arg:
                if i >= len(args) or not _fits(args[i], tag.arg):
                    raise _fail(f"tag {arg.value} needs a {tag.arg.rstrip('s')} argument"
                                + (" list" if tag.arg == "strings" else ""), arg)
                value = self.value(args[i])
                value = value[0] if tag.arg == "string" else value
                i += 1
            tags[tag.key] = (arg.value, value)
        low = len(spec.pos) if spec.min_pos is None else spec.min_pos
        if not low <= len(positional) <= len(spec.pos):
            want = str(len(spec.pos)) if low == len(spec.pos) else f"{low} to {len(spec.pos)}"
            raise _fail(f"{node.name} takes {want} positional arguments, found {len(positional)}", node)
        missing = [None] * (len(spec.pos) - len(positional))
        kinds = spec.pos[len(missing):] if spec.optional_first else spec.pos[:len(positional)]
        for kind, arg in zip(kinds, positional_args):
            if not _fits(arg, kind):
                raise _fail(f"{node.name}: expected a {kind.rstrip('s')}{' list' if kind == 'strings' else ''}", arg)
        values = [v[0] if k == "string" else v for v, k in zip(positional, kinds)]
        return tags, tuple(missing + values if spec.optional_first else values + missing)

    def value(self, arg: Arg):
        if arg.kind == "number":
            return arg.value
        return tuple(self.string(s, arg) for s in arg.value)

    def string(self, text: str, where) -> str:
        if "encoded-character" in self.requires and "${" in text:
            text = _decode_encoded(text, where)
        if "variables" in self.requires and "${" in text:
            for m in _NAMESPACED.finditer(text):  # RFC 5229 3: a namespace needs its extension
                namespace, name = m.group(1).lower(), m.group(2)
                if namespace != "global" or "." in name or not VARIABLE_NAME.match(name):
                    raise _fail(f"unknown variable namespace in {m.group()!r} (RFC 5229 3)", where)
                if "include" not in self.requires:
                    raise _fail('the "global" namespace needs require "include" (RFC 6609 3.4.2)', where)
            return Template(text)
        return text


def _fits(arg: Arg, kind: str) -> bool:
    if kind == "number":
        return arg.kind == "number"
    if kind == "string":
        return arg.kind == "strings" and len(arg.value) == 1
    return arg.kind == "strings"


def _decode_encoded(text: str, where) -> str:
    """RFC 5228 2.4.2.4: ``${hex:..}`` octets (UTF-8) and ``${unicode:..}`` code points."""

    def one(m: re.Match) -> str:
        words = m.group(2).split()
        if not words or not all(re.fullmatch(r"[0-9A-Fa-f]+", w) for w in words):
            return m.group()  # malformed: left as it is
        if m.group(1).lower() == "hex":
            if any(len(w) > 2 for w in words):
                return m.group()
            return bytes(int(w, 16) for w in words).decode("utf-8", "replace")
        points = [int(w, 16) for w in words]
        if any(p > 0x10FFFF or 0xD800 <= p <= 0xDFFF for p in points):
            raise _fail(f"invalid unicode character in {m.group()!r}", where)
        return "".join(map(chr, points))

    return _ENCODED.sub(one, text)


def _semantic(checker: Checker, cmd: Cmd, node: Node) -> None:
    """The checks that depend on argument values, not only their shape."""
    comparator = cmd.targ("comparator")
    if comparator is not None:
        if comparator not in S.COMPARATORS:
            raise _fail(f"unknown comparator {comparator!r}", node)
        checker.needs(S.COMPARATORS[comparator], node, f"comparator {comparator}")
    match = cmd.tag("match")
    if match in (":count", ":value") and cmd.targ("match") not in S.RELATIONS:
        raise _fail(f"{match} needs one of {', '.join(sorted(S.RELATIONS))}", node)
    if comparator == "i;ascii-numeric" and match in (":contains", ":matches", ":regex"):
        raise _fail(f"comparator i;ascii-numeric does not support {match}", node)
    if match == ":regex":
        for pattern in cmd.pos[-1] or ():
            if not isinstance(pattern, Template):
                try:
                    compile_regex(pattern, False)
                except RegexError as e:
                    raise _fail(f"invalid regex {pattern!r}: {e}", node) from None
    if cmd.name == "set" and "include" not in checker.requires and str(cmd.pos[0]).lower().startswith("global."):
        raise _fail('the "global" namespace needs require "include" (RFC 6609 3.4.2)', node)
    if cmd.name in _FLAG_COMMANDS and cmd.pos[0] is not None and "variables" not in checker.requires:
        raise _fail(f'{cmd.name} with a variable name needs require "variables" (RFC 5232 3)', node)
    extra = _EXTRA.get(cmd.name)
    if extra:
        extra(cmd, node)


_FLAG_COMMANDS = frozenset({"setflag", "addflag", "removeflag", "hasflag"})


def _names(values, node, what="variable name"):
    for name in values or ():
        if name is not None and not isinstance(name, Template) and not VARIABLE_NAME.match(name):
            raise _fail(f"invalid {what} {name!r}", node)


def _check_set(cmd, node):
    name = cmd.pos[0]
    if isinstance(name, Template):  # RFC 5229 4: "The name MUST be a constant string"
        raise _fail(f"set needs a constant variable name, not {name!r}", node)
    if name.lower().startswith("global."):
        name = name[7:]  # RFC 6609 3.5: the "global" namespace
    _names([name], node)


def _check_flags(cmd, node):
    _names(cmd.pos[:1], node)


def _check_hasflag(cmd, node):
    _names(cmd.pos[0], node)


def _check_size(cmd, node):
    if cmd.tag("size") is None:
        raise _fail("size needs :over or :under", node)


def _check_date(cmd, node):
    part = cmd.pos[-2]
    if not isinstance(part, Template) and part.lower() not in S.DATE_PARTS:
        raise _fail(f"unknown date part {part!r}", node)
    zone = cmd.targ("zone")
    if zone is not None and not isinstance(zone, Template) and not _ZONE.match(zone):
        raise _fail(f"bad time zone {zone!r} (expected +hhmm or -hhmm)", node)


def _check_redirect(cmd, node):
    address = cmd.pos[0]
    if not isinstance(address, Template) and not valid_address(address):
        raise _fail(f"redirect needs a valid address, not {address!r}", node)


def _check_deleteheader(cmd, node):
    if cmd.tag("last") and cmd.tag("index") is None:
        raise _fail(":last needs :index in deleteheader (RFC 5293 5)", node)
    if cmd.targ("index") == 0:
        raise _fail(":index counts from 1", node)
    _field_name(cmd, node)


def _field_name(cmd, node):
    name = cmd.pos[0]
    if not isinstance(name, Template) and not valid_field_name(name):
        raise _fail(f"invalid header field name {name!r}", node)


ENVELOPE_PARTS = frozenset({"from", "to", "auth"})


def _check_envelope(cmd, node):
    for part in cmd.pos[0]:
        if not isinstance(part, Template) and part.lower() not in ENVELOPE_PARTS:
            raise _fail(f"unknown envelope part {part!r} (RFC 5228 5.4: from, to)", node)


_REFERENCE = re.compile(r"\$\{[A-Za-z0-9_.]+\}")
#: RFC 5804 1.6 (which RFC 6609 3.2 applies to include): no C0/C1 controls, DEL, U+2028, U+2029.
_BAD_NAME_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def valid_script_name(name: str) -> bool:
    """RFC 5804 1.6, and no "/" (names are file names in the repository)."""
    return bool(name) and "/" not in name and not _BAD_NAME_CHAR.search(name)


def _check_include(cmd, node):
    name = cmd.pos[0]
    if isinstance(name, Template) and _REFERENCE.search(name):  # RFC 6609 3.2: never expanded
        raise _fail(f"include needs a constant script name, not {name!r} (RFC 6609 3.2)", node)
    if not valid_script_name(name):
        raise _fail(f"invalid script name {name!r} (RFC 6609 3.2)", node)


def valid_mailbox_list(value: str) -> bool:
    """RFC 5230 4.3: :from "must specify a valid [RFC2822] mailbox-list"."""
    found = email.utils.getaddresses([value])
    return bool(found) and all(valid_address(addr) for _, addr in found)


def _check_vacation(cmd, node):
    value = cmd.targ("from")
    if value is not None and not isinstance(value, Template) and not valid_mailbox_list(value):
        raise _fail(f"vacation :from needs a mailbox-list, not {value!r} (RFC 5230 4.3)", node)


def _check_global(cmd, node):
    for name in cmd.pos[0]:
        if isinstance(name, Template):  # RFC 6609 3.4.1: "Each name MUST be a constant string"
            raise _fail(f"global needs constant variable names, not {name!r}", node)
    _names(cmd.pos[0], node)


def _check_index(cmd, node):
    if cmd.tag("last") and cmd.tag("index") is None:
        raise _fail(":last needs :index (RFC 5260 6)", node)
    if cmd.targ("index") == 0:
        raise _fail(":index counts from 1", node)


def _check_header_like(cmd, node):
    _check_index(cmd, node)


def _check_date_test(cmd, node):
    _check_index(cmd, node)
    _check_date(cmd, node)


_EXTRA = {
    "set": _check_set, "setflag": _check_flags, "addflag": _check_flags, "removeflag": _check_flags,
    "hasflag": _check_hasflag, "size": _check_size, "date": _check_date_test, "currentdate": _check_date,
    "redirect": _check_redirect, "deleteheader": _check_deleteheader, "addheader": _field_name,
    "include": _check_include, "global": _check_global, "header": _check_header_like,
    "address": _check_header_like, "envelope": _check_envelope, "vacation": _check_vacation,
}


def valid_address(address: str) -> bool:
    local, at, domain = address.strip().rpartition("@")
    return bool(at and local and domain and not any(c in address for c in " \t\r\n<>,"))


def valid_field_name(name: str) -> bool:
    return bool(name) and all(33 <= ord(c) <= 126 and c != ":" for c in name)
