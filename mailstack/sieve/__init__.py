"""Sieve mail filtering (RFC 5228 and extensions) at local delivery.

Public interface (the rest of mailstack uses only these):

* ``compile_script(text, name="") -> Script``: parse and check a script; raises
  :class:`SieveSyntaxError` (``line``, ``column``, ``message``) for an invalid one.
  ManageSieve's PUTSCRIPT/CHECKSCRIPT and ``mailstack sieve check`` call it.
* ``run(script, message, envelope, *, mailbox_exists, loader, now, deadline) -> Outcome``:
  evaluate against one message (bytes, CRLF or LF); never raises for a run-time error (the
  outcome carries it and an implicit keep).  ``loader(name, location)`` returns the text of an
  ``include``d script (``location`` "personal" or "global"), or None if missing.
* :mod:`mailstack.sieve.actions`: the action and outcome types.
"""
