"""THREAD's algorithms in process: any References, loops and duplicate Message-IDs included,
give each message exactly once in a well-formed thread list (RFC 5256 3, 4)."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from mailstack.imap.thread import ordered_subject, references, thread_list

IDS = [f"<{c}@x>" for c in "abcdef"]
keys = st.fixed_dictionaries({
    "id": st.lists(st.sampled_from(IDS), max_size=1),
    "refs": st.lists(st.sampled_from(IDS), max_size=5),
    "irt": st.lists(st.sampled_from(IDS), max_size=1),
    "subject": st.sampled_from(["", "A", "B"]),
    "date": st.integers(0, 5),
    "reply": st.booleans(),
})


def numbers_in(out: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"\d+", out)]


def balanced(out: bytes) -> bool:
    depth = 0
    for ch in out:
        depth += {0x28: 1, 0x29: -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


@settings(max_examples=500, deadline=None)
@given(st.lists(keys, max_size=12))
def test_every_message_once_whatever_the_references(messages):
    numbered = list(enumerate(messages, 1))
    for build in (references, ordered_subject):
        out = thread_list(build(numbered))
        assert sorted(numbers_in(out)) == list(range(1, len(messages) + 1)), (build.__name__, out)
        assert balanced(out) and b"()" not in out and b" )" not in out, out


def test_a_reference_loop_is_broken():
    loop = [(1, {"id": ["<a@x>"], "refs": ["<b@x>"], "irt": [], "subject": "s", "date": 1, "reply": False}),
            (2, {"id": ["<b@x>"], "refs": ["<a@x>"], "irt": [], "subject": "s", "date": 2, "reply": True})]
    # 1 makes <b> its parent; 2 (<b>) would then be its own ancestor under <a>: it stays the root
    assert thread_list(references(loop)) == b"(2 1)"
