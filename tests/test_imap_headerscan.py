"""The header corpus SEARCH rules messages out with (mailstack/imap/headerscan.py): it may keep
too many candidates, never too few."""

from __future__ import annotations

import pytest

from mailstack.imap import headerscan
from mailstack.imap import search as searchmod


class Folder:
    """What the corpus needs of a folder: its path and ``headers(uids)``."""

    def __init__(self, heads: dict[int, bytes], path: str = "/f"):
        self.heads, self.path, self.calls = heads, path, 0

    def headers(self, uids):
        self.calls += 1
        return {u: self.heads[u] for u in uids if u in self.heads}


HEADS = {
    1: b"Subject: Quarterly report\r\nFrom: a@example.test\r\n\r\n",
    2: b"Subject: lunch\r\nFrom: b@example.test\r\n\r\n",
    3: b"Subject: =?utf-8?q?quarterly?=\r\n\r\n",  # encoded word: the bytes do not show the text
    4: "Subject: caf\u00e9 plans\r\n\r\n".encode(),  # 8-bit: may decode to anything
    5: b"Subject: report\r\nX-Note: quarter\r\n\r\nly",  # "quarter" + "ly" only across the end
    7: b"Subject: QUARTERLYQUARTERLY\r\n\r\n",
}


@pytest.fixture(autouse=True)
def fresh():
    headerscan._corpora.clear()
    headerscan._held[0] = 0


def test_only_headers_that_may_hold_the_needle_are_candidates():
    uids = [1, 2, 3, 4, 5, 6, 7]  # 6: no header at hand (gone, or unreadable): the match decides
    found = headerscan.corpus(Folder(HEADS), 9, uids)
    assert found.may_match([b"quarterly"]) == {1, 3, 4, 6, 7}
    assert found.may_match([b"quarterly", b"a@example"]) == {1, 3, 4, 6}
    assert found.may_match([b"nowhere"]) == {3, 4, 6}
    with pytest.raises(ValueError):
        found.may_match([b""])


def test_a_corpus_is_kept_while_the_uids_and_uidvalidity_are_the_same():
    folder = Folder(HEADS)
    first = headerscan.corpus(folder, 9, [1, 2])
    assert headerscan.corpus(folder, 9, [1, 2]) is first and folder.calls == 1
    assert headerscan.corpus(folder, 9, [1, 2, 3]) is not first  # a message came
    assert headerscan.corpus(folder, 10, [1, 2, 3]).uidvalidity == 10  # the folder was made anew
    assert folder.calls == 3


def test_the_corpora_held_stay_under_the_bound(monkeypatch):
    monkeypatch.setattr(headerscan, "MAX_BYTES", 400)
    for n in range(5):
        headerscan.corpus(Folder(HEADS, path=f"/f{n}"), 1, [1, 2, 5])
    assert headerscan._held[0] <= 400 and len(headerscan._corpora) < 5


def test_search_through_the_corpus_matches_what_the_full_match_gives():
    folder = Folder(HEADS)
    uids = sorted(HEADS)
    for keys, expected in (([b"SUBJECT", b"quarterly"], [1, 3, 7]), ([b"HEADER", b"X-Note", b"quarter"], [5]),
                           ([b"SUBJECT", b""], uids), ([b"NOT", b"SUBJECT", b"quarterly"], [2, 4, 5])):
        tree = searchmod.compile_query(keys, "utf-8")
        heads, allowed = searchmod.prefiltered(folder, 1, uids, tree)
        candidates = [searchmod.Candidate(folder, seq, u, None, frozenset(), False, heads.get(u))
                      for seq, u in enumerate(uids, 1) if allowed is None or u in allowed]
        assert [c.uid for c in searchmod.run(tree, candidates, len(uids), uids[-1])] == expected, keys
