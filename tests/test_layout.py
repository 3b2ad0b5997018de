"""The package layout rules of issue 13, checked on the source (AST, no imports run):

* outside ``mailstack/store`` code reaches the store only through what ``mailstack.store``
  exports (``__all__``), never ``mailstack.store.<module>``;
* no private Twisted name (``from twisted... import _x``, ``twisted.x._y``, ``imap4._Fetch``)
  and no name-mangled reach into another class (``_IMAP4Server__doCommand``);
* the protocol packages (smtp, outbound, imap, pop3, managesieve) never import one another;
* no session subclasses Twisted's protocol implementations (``ESMTP``, ``POP3``, ``IMAP4Server``);
* no module over 600 lines, no function over 80;
* the store's classes offer what its Protocol classes promise.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mailstack.store as store

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mailstack"
PROTOCOL_PACKAGES = ("smtp", "outbound", "imap", "pop3", "managesieve")
MANGLED = re.compile(r"^_[A-Za-z][A-Za-z0-9]*__[A-Za-z]")

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
#: Twisted's protocol implementations a session must not half-inherit (issue 13): a subclass
#: that replaces most of their methods breaks silently when Twisted changes their internals.
TWISTED_SESSIONS = {"ESMTP", "SMTP", "POP3", "IMAP4Server", "IMAP4Client"}


def _sources(*tops: Path) -> list[Path]:
    return sorted(p for top in tops if top.exists() for p in top.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _params(paths: list[Path]) -> list:
    return [pytest.param(p, id=_rel(p)) for p in paths]


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names imported from it) for every import in the file,
    function-level ones included; relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_of(path) if path.name == "__init__.py" else _module_of(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


OUTSIDE_STORE = [p for p in _sources(PACKAGE, ROOT / "twisted") if "mailstack/store/" not in _rel(p) + "/"]


def test_the_store_exports_what_it_lists():
    for name in store.__all__:
        assert getattr(store, name) is not None, name


@pytest.mark.parametrize("path", _params(OUTSIDE_STORE))
def test_no_store_module_imported_from_outside(path):
    exported = set(store.__all__)
    bad = []
    for line, module, names in _imports(path):
        if module.startswith("mailstack.store."):
            bad.append(f"{line}: {module}")
        elif module == "mailstack.store":
            bad += [f"{line}: mailstack.store.{n}" for n in names if n not in exported]
    assert not bad, f"{_rel(path)} reaches past mailstack.store's exports: {bad}"


def _private_twisted(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    twisted_names: set[str] = set()
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                if not full.startswith("twisted"):
                    continue
                if any(part.startswith("_") for part in full.split(".")):
                    bad.append(f"{node.lineno}: imports {full}")
                twisted_names.add(alias.asname or (alias.name if module else alias.name.split(".")[0]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if MANGLED.match(node.attr):
                bad.append(f"{node.lineno}: name-mangled {node.attr}")
            elif node.attr.startswith("_") and not node.attr.startswith("__"):
                chain = node.value
                while isinstance(chain, ast.Attribute):
                    chain = chain.value
                if isinstance(chain, ast.Name) and chain.id in twisted_names:
                    bad.append(f"{node.lineno}: {chain.id}...{node.attr}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and MANGLED.match(node.name):
            bad.append(f"{node.lineno}: defines name-mangled {node.name}")
    return bad


@pytest.mark.parametrize("path", _params(_sources(PACKAGE, ROOT / "twisted")))
def test_no_private_twisted_names(path):
    bad = _private_twisted(path)
    assert not bad, f"{_rel(path)} uses private Twisted names: {bad}"


def test_the_private_name_check_catches_each_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from twisted.mail import imap4\n"
                      "from twisted.internet._sslverify import x\n"
                      "from twisted.mail.imap4 import _FetchParser\n"
                      "y = imap4._FetchParser.UID()\n"
                      "class S:\n"
                      "    def _IMAP4Server__ebDispatch(self): self._IMAP4Server__doCommand()\n"
                      "    def _fine(self): return self._own\n")
    assert len(_private_twisted(sample)) == 5


PROTOCOL_FILES = [p for p in _sources(*(PACKAGE / name for name in PROTOCOL_PACKAGES))]


@pytest.mark.parametrize("path", [pytest.param(p, id=_rel(p)) for p in PROTOCOL_FILES])
def test_protocol_packages_do_not_import_one_another(path):
    own = path.relative_to(PACKAGE).parts[0]
    others = {f"mailstack.{name}" for name in PROTOCOL_PACKAGES if name != own}
    bad = []
    for line, module, names in _imports(path):
        targets = [module] + ([f"{module}.{n}" for n in names] if module == "mailstack" else [])
        bad += [f"{line}: {t}" for t in targets if any(t == o or t.startswith(o + ".") for o in others)]
    assert not bad, f"{_rel(path)} imports another protocol package: {bad}"


def test_store_classes_satisfy_their_protocols(tmp_path):
    maildirs = store.MaildirStore(str(tmp_path), fsync=False)
    mailbox = maildirs.mailbox("alice@example.test")
    assert isinstance(maildirs, store.StoreAPI)
    assert isinstance(mailbox, store.MailboxAPI)
    assert isinstance(mailbox.folder("INBOX"), store.FolderAPI)


@pytest.mark.parametrize("path", _params(_sources(PACKAGE)))
def test_no_session_inherits_twisteds_protocol_implementations(path):
    bad = _session_subclasses(path.read_text(encoding="utf-8"))
    assert not bad, f"{_rel(path)} subclasses a Twisted protocol implementation: {bad}"


def _session_subclasses(source: str) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name in TWISTED_SESSIONS:
                    bad.append(f"{node.lineno}: {node.name}({name})")
    return bad


def test_the_subclass_check_catches_both_spellings():
    sample = "from twisted.mail import imap4, smtp\nclass A(imap4.IMAP4Server): pass\nclass B(ESMTP): pass\n"
    assert _session_subclasses(sample) == ["2: A(IMAP4Server)", "3: B(ESMTP)"]


@pytest.mark.parametrize("path", _params(_sources(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text(encoding="utf-8")
    bad = [f"{source.count(chr(10))} lines"] if source.count("\n") > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                bad.append(f"{node.lineno}: {node.name} has {length} lines")
    assert not bad, f"{_rel(path)} is over the size limits ({MAX_MODULE_LINES}/{MAX_FUNCTION_LINES}): {bad}"
