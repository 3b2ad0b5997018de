"""THREAD (RFC 5256 3): ORDEREDSUBJECT and REFERENCES over the sort keys of
:mod:`mailstack.imap.sort` (Message-ID, References, In-Reply-To, base subject, sent date),
which the store caches, and the thread-list response of RFC 5256 4.
"""

from __future__ import annotations

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class Node:
    """A thread container: a message (``number`` set) or a dummy for a Message-ID only
    referred to."""

    __slots__ = ("number", "date", "parent", "children", "subject", "reply")

    def __init__(self, number: int | None = None, date: int = 0, subject: str = "", reply: bool = False):
        self.number, self.date, self.subject, self.reply = number, date, subject, reply
        self.parent: Node | None = None
        self.children: list[Node] = []

    def link(self, child: "Node") -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def is_ancestor_of(self, other: "Node") -> bool:
        while other is not None:
            if other is self:
                return True
            other = other.parent
        return False

    def sort_date(self) -> tuple:
        """A dummy sorts by its first child (RFC 5256 3, REFERENCES step 4)."""
        if self.number is None and self.children:
            return self.children[0].sort_date()
        return (self.date, self.number or 0)


def ordered_subject(messages: list[tuple[int, dict]]) -> list[Node]:
    """RFC 5256 3 ORDEREDSUBJECT: one thread per base subject, the first message (by sent
    date) its root and every other a child of it; threads in the order of their roots."""
    threads: dict[str, Node] = {}
    for number, keys in sorted(messages, key=lambda m: (m[1]["subject"], m[1]["date"], m[0])):
        node = Node(number, keys["date"])
        root = threads.get(keys["subject"])
        if root is None:
            threads[keys["subject"]] = node
        else:
            root.link(node)
    return sorted(threads.values(), key=Node.sort_date)


def references(messages: list[tuple[int, dict]]) -> list[Node]:
    """RFC 5256 3 REFERENCES (Zawinski's algorithm), steps 1 to 6."""
    by_id: dict[str, Node] = {}

    def container(msgid: str) -> Node:
        node = by_id.get(msgid)
        if node is None:
            node = by_id[msgid] = Node()
        return node

    for number, keys in sorted(messages, key=lambda m: m[0]):
        refs = keys["refs"] or keys["irt"]
        for parent_id, child_id in zip(refs, refs[1:]):  # step 1A: link the chain, no loops
            parent, child = container(parent_id), container(child_id)
            if child.parent is None and not child.is_ancestor_of(parent):
                parent.link(child)
        msgid = keys["id"][0] if keys["id"] and (keys["id"][0] not in by_id or by_id[keys["id"][0]].number is None) \
            else f"<dup-{number}@mailstack>"  # a duplicate Message-ID counts as none (step 1A)
        node = container(msgid)
        node.number, node.date, node.subject, node.reply = number, keys["date"], keys["subject"], keys["reply"]
        if refs:  # step 1B: the last reference is the parent, replacing any other
            parent = container(refs[-1])
            if parent is not node and not node.is_ancestor_of(parent):
                parent.link(node)
            elif node.parent is not None:
                node.parent.children.remove(node)
                node.parent = None
    roots = [n for n in by_id.values() if n.parent is None]  # step 2
    roots = _prune(roots, top=True)  # step 3
    _sort(roots)  # step 4
    roots = _group_by_subject(roots)  # step 5
    _sort(roots)  # step 6
    return roots


def _prune(nodes: list[Node], top: bool) -> list[Node]:
    out = []
    for node in nodes:
        node.children = _prune(node.children, top=False)
        for child in node.children:
            child.parent = node
        if node.number is not None:
            out.append(node)
        elif not node.children:
            continue  # a dummy without children goes
        elif top and len(node.children) > 1:
            out.append(node)  # a dummy root keeps several children together
        else:
            for child in node.children:  # promote the children
                child.parent = node.parent
            out.extend(node.children)
    return out


def _sort(nodes: list[Node]) -> None:
    for node in nodes:
        _sort(node.children)
    nodes.sort(key=Node.sort_date)


def _subject_of(node: Node) -> tuple[str, bool]:
    if node.number is None and node.children:
        return node.children[0].subject, node.children[0].reply
    return node.subject, node.reply


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """Step 5: roots with the same (non-empty) base subject become one thread."""
    table: dict[str, Node] = {}
    for root in roots:
        subject, reply = _subject_of(root)
        if not subject:
            continue
        old = table.get(subject)
        if old is None or (root.number is None and old.number is not None) or (old.reply and not reply):
            table[subject] = root
    removed, replaced = set(), {}
    for root in roots:
        subject, reply = _subject_of(root)
        keeper = table.get(subject) if subject else None
        if keeper is None or keeper is root:
            continue
        removed.add(id(root))
        if keeper.number is None and root.number is None:  # both dummies: merge the children
            for child in list(root.children):
                keeper.link(child)
        elif keeper.number is None or (reply and not _subject_of(keeper)[1]):
            keeper.link(root)  # into the dummy, or the reply under the original
        else:  # neither: a new dummy holds both, where the first stood
            dummy = Node()
            dummy.link(keeper)
            dummy.link(root)
            replaced[id(keeper)] = table[subject] = dummy
    return [replaced.get(id(r), r) for r in roots if id(r) not in removed]


def thread_list(roots: list[Node]) -> bytes:
    """RFC 5256 4: ``(1 2 (3)(4 5))``; a dummy shows only its children."""
    return b"".join(_thread(root) for root in roots)


def _thread(node: Node) -> bytes:
    chain = []
    while True:
        if node.number is not None:
            chain.append(b"%d" % node.number)
        if len(node.children) == 1:
            node = node.children[0]
            continue
        break
    inner = b" ".join(chain)
    if node.children:
        nested = b"".join(_thread(child) for child in node.children)
        inner = inner + b" " + nested if inner else nested
    return b"(" + inner + b")"
