"""What the tests share, imported as ``support.<module>`` (``tests/`` is on ``sys.path``).

- :mod:`support.servers`: ``MailServer``, a real ``twistd`` process on loopback, and the test
  users (``PASSWORDS``), ``ROOT``, ``env_with_tree``, ``free_port``.
- :mod:`support.inprocess`: ``InProcessServer``, the same API with the service running inside
  the test process on one reactor thread: milliseconds per test instead of a process start.
- :mod:`support.clients`: raw line-based socket clients (SMTP, IMAP, POP3) for what the client
  libraries will not send.
- :mod:`support.messages`: one builder of small RFC 5322 test messages.
- :mod:`support.dns`: a twisted.names DNS server on loopback serving test zones.
- :mod:`support.waiting`: polling helpers (``wait_for``, ``wait_files``).
- :mod:`support.proc`: a process's CPU time and RSS; :mod:`support.ci`: ``on_ci()``.

The fixtures (``server``, ``server_factory``, ``inproc_server``, ``inproc_server_factory``)
are registered in ``tests/conftest.py``.
"""

import sys
from pathlib import Path

#: the worktree: first on ``sys.path`` so that the tests import this tree's ``mailstack``
ROOT = Path(__file__).resolve().parent.parent.parent
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))
