"""The Sieve grammar (RFC 5228 section 8.2) over the lexer's tokens: a tree of commands.

The tree is only shape; what each command and test accepts is checked in
:mod:`mailstack.sieve.checker`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SieveSyntaxError
from .lexer import Token, tokenize

#: Hostile-input bounds (RFC 5228 2.10.6 lets an implementation refuse oversized scripts).
MAX_NESTING = 32
MAX_LIST = 1024


@dataclass(slots=True)
class Arg:
    kind: str  # "tag", "number" or "strings"
    value: object  # ":is", 42, or a list of str
    line: int
    column: int


@dataclass(slots=True)
class Node:
    """A command (``block`` is a list for ``if {...}`` etc.) or a test (``block`` None)."""

    name: str
    args: list[Arg]
    tests: list["Node"]
    line: int
    column: int
    block: list["Node"] | None = None
    has_test_list: bool = False


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, what: str) -> Token:
        tok = self.peek()
        if tok is None:
            last = self.tokens[-1] if self.tokens else None
            raise SieveSyntaxError(f"unexpected end of script, expected {what}",
                                   last.line if last else 1, last.column if last else 1)
        self.i += 1
        return tok

    def expect(self, kind: str, what: str) -> Token:
        tok = self.next(what)
        if tok.kind != kind:
            raise SieveSyntaxError(f"expected {what}, found {_show(tok)}", tok.line, tok.column)
        return tok

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise SieveSyntaxError(f"nesting deeper than {MAX_NESTING} levels", tok.line, tok.column)

    def commands(self, closing: str | None) -> list[Node]:
        out = []
        while True:
            tok = self.peek()
            if tok is None:
                if closing:
                    self.next("'}'")
                return out
            if closing and tok.kind == closing:
                self.i += 1
                return out
            out.append(self.command())

    def command(self) -> Node:
        tok = self.expect("ident", "a command")
        node = self.arguments(tok)
        end = self.next("';' or '{'")
        if end.kind == ";":
            return node
        if end.kind == "{":
            self.enter(end)
            node.block = self.commands("}")
            self.depth -= 1
            return node
        raise SieveSyntaxError(f"expected ';' or '{{', found {_show(end)}", end.line, end.column)

    def arguments(self, head: Token) -> Node:
        node = Node(head.value, [], [], head.line, head.column)
        while (tok := self.peek()) is not None:
            if tok.kind == "tag":
                self.i += 1
                node.args.append(Arg("tag", tok.value, tok.line, tok.column))
            elif tok.kind == "number":
                self.i += 1
                node.args.append(Arg("number", tok.value, tok.line, tok.column))
            elif tok.kind in ("string", "["):
                node.args.append(self.string_list())
            else:
                break
        tok = self.peek()
        if tok is not None and tok.kind == "ident":
            node.tests.append(self.test())
        elif tok is not None and tok.kind == "(":
            node.tests = self.test_list()
            node.has_test_list = True
        return node

    def test(self) -> Node:
        tok = self.expect("ident", "a test")
        self.enter(tok)
        node = self.arguments(tok)
        self.depth -= 1
        return node

    def test_list(self) -> list[Node]:
        self.expect("(", "'('")
        tests = [self.test()]
        while True:
            tok = self.next("',' or ')'")
            if tok.kind == ")":
                return tests
            if tok.kind != ",":
                raise SieveSyntaxError(f"expected ',' or ')', found {_show(tok)}", tok.line, tok.column)
            tests.append(self.test())

    def string_list(self) -> Arg:
        tok = self.next("a string")
        if tok.kind == "string":
            return Arg("strings", [tok.value], tok.line, tok.column)
        values = [self.expect("string", "a string").value]
        while True:
            sep = self.next("',' or ']'")
            if sep.kind == "]":
                return Arg("strings", values, tok.line, tok.column)
            if sep.kind != ",":
                raise SieveSyntaxError(f"expected ',' or ']', found {_show(sep)}", sep.line, sep.column)
            values.append(self.expect("string", "a string").value)
            if len(values) > MAX_LIST:
                raise SieveSyntaxError(f"string list longer than {MAX_LIST}", tok.line, tok.column)


def _show(tok: Token) -> str:
    if tok.kind == "string":
        return "a string"
    if tok.kind == "number":
        return f"number {tok.value}"
    return repr(tok.value)


def parse(text: str) -> list[Node]:
    """The command tree of ``text``, or :class:`SieveSyntaxError` with its line and column."""
    return _Parser(tokenize(text)).commands(None)
