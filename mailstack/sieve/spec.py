"""What each command and test accepts (RFC 5228 sections 3-5 and the extensions' "Usage:" lines).

A tag belongs to a group (its ``key``): two tags of one group in one command are an error
(RFC 5228 2.7.1 "at most one" match type, comparator, address part).  ``ext`` is the
capability a script must ``require`` before using the command, test or tag (RFC 5228 3.2).
Positional kinds: "string" (a one-element string list), "strings" (a string list), "number".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tag:
    key: str
    arg: str | None = None  # None, "string", "strings" or "number"
    ext: str | None = None


@dataclass(frozen=True)
class Spec:
    pos: tuple[str, ...] = ()
    min_pos: int | None = None  # fewer positionals allowed
    optional_first: bool = True  # the omitted ones are the leading ones (setflag), else trailing
    tags: dict = field(default_factory=dict)
    ext: str | tuple | None = None  # one capability, or a tuple of which all are needed
    tests: str = ""  # "", "one" or "list"
    block: bool = False


CAPABILITIES = frozenset({
    "fileinto", "reject", "ereject", "envelope", "encoded-character", "imap4flags", "copy",
    "body", "variables", "vacation", "vacation-seconds", "relational", "subaddress", "date",
    "index", "include", "mailbox", "regex", "editheader",
    "comparator-i;octet", "comparator-i;ascii-casemap", "comparator-i;ascii-numeric",
})

COMPARATORS = {"i;octet": None, "i;ascii-casemap": None, "i;ascii-numeric": "comparator-i;ascii-numeric"}
RELATIONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
DATE_PARTS = frozenset({"year", "month", "day", "date", "julian", "hour", "minute", "second",
                        "time", "iso8601", "std11", "zone", "weekday"})

MATCH = {
    ":is": Tag("match"), ":contains": Tag("match"), ":matches": Tag("match"),
    ":regex": Tag("match", ext="regex"),
    ":count": Tag("match", "string", "relational"), ":value": Tag("match", "string", "relational"),
}
COMPARATOR = {":comparator": Tag("comparator", "string")}
PARTS = {
    ":all": Tag("part"), ":localpart": Tag("part"), ":domain": Tag("part"),
    ":user": Tag("part", ext="subaddress"), ":detail": Tag("part", ext="subaddress"),
}
INDEX = {":index": Tag("index", "number", "index"), ":last": Tag("last", ext="index")}
COMPARE = {**MATCH, **COMPARATOR}
FLAGS = {":flags": Tag("flags", "strings", "imap4flags")}
COPY = {":copy": Tag("copy", ext="copy")}

COMMANDS = {
    "require": Spec(pos=("strings",)),
    "if": Spec(tests="one", block=True),
    "elsif": Spec(tests="one", block=True),
    "else": Spec(block=True),
    "stop": Spec(),
    "keep": Spec(tags=FLAGS),
    "discard": Spec(),
    "fileinto": Spec(pos=("string",), ext="fileinto",
                     tags={**FLAGS, **COPY, ":create": Tag("create", ext="mailbox")}),
    "redirect": Spec(pos=("string",), tags=COPY),
    "reject": Spec(pos=("string",), ext="reject"),
    "ereject": Spec(pos=("string",), ext="ereject"),
    "vacation": Spec(pos=("string",), ext="vacation", tags={
        ":days": Tag("period", "number"), ":seconds": Tag("period", "number", "vacation-seconds"),
        ":subject": Tag("subject", "string"), ":from": Tag("from", "string"),
        ":addresses": Tag("addresses", "strings"), ":mime": Tag("mime"), ":handle": Tag("handle", "string"),
    }),
    "setflag": Spec(pos=("string", "strings"), min_pos=1, ext="imap4flags"),
    "addflag": Spec(pos=("string", "strings"), min_pos=1, ext="imap4flags"),
    "removeflag": Spec(pos=("string", "strings"), min_pos=1, ext="imap4flags"),
    "set": Spec(pos=("string", "string"), ext="variables", tags={
        ":lower": Tag("mod40"), ":upper": Tag("mod40"), ":lowerfirst": Tag("mod30"),
        ":upperfirst": Tag("mod30"), ":quotewildcard": Tag("mod20"),
        ":quoteregex": Tag("mod20", ext="regex"), ":length": Tag("mod10"),
    }),
    "include": Spec(pos=("string",), ext="include", tags={
        ":personal": Tag("location"), ":global": Tag("location"), ":once": Tag("once"),
        ":optional": Tag("optional"),
    }),
    "return": Spec(ext="include"),
    "global": Spec(pos=("strings",), ext=("include", "variables")),
    "addheader": Spec(pos=("string", "string"), ext="editheader", tags={":last": Tag("last")}),
    "deleteheader": Spec(pos=("string", "strings"), min_pos=1, optional_first=False, ext="editheader", tags={
        **COMPARE, ":index": Tag("index", "number"), ":last": Tag("last")}),
}

TESTS = {
    "address": Spec(pos=("strings", "strings"), tags={**COMPARE, **PARTS, **INDEX}),
    "header": Spec(pos=("strings", "strings"), tags={**COMPARE, **INDEX}),
    "envelope": Spec(pos=("strings", "strings"), ext="envelope", tags={**COMPARE, **PARTS}),
    "exists": Spec(pos=("strings",)),
    "size": Spec(pos=("number",), tags={":over": Tag("size"), ":under": Tag("size")}),
    "allof": Spec(tests="list"),
    "anyof": Spec(tests="list"),
    "not": Spec(tests="one"),
    "true": Spec(),
    "false": Spec(),
    "body": Spec(pos=("strings",), ext="body", tags={
        **COMPARE, ":raw": Tag("transform"), ":content": Tag("transform", "strings"), ":text": Tag("transform")}),
    "string": Spec(pos=("strings", "strings"), ext="variables", tags=COMPARE),
    "hasflag": Spec(pos=("strings", "strings"), min_pos=1, ext="imap4flags", tags=COMPARE),
    "date": Spec(pos=("string", "string", "strings"), ext="date", tags={
        **COMPARE, **INDEX, ":zone": Tag("zone", "string"), ":originalzone": Tag("zone")}),
    "currentdate": Spec(pos=("string", "strings"), ext="date", tags={**COMPARE, ":zone": Tag("zone", "string")}),
    "mailboxexists": Spec(pos=("strings",), ext="mailbox"),
}
