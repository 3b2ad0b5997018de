"""The helpers the Sieve interpreter's tests share: run a script on a message, get its actions
or its syntax error."""

from __future__ import annotations

import pytest

from mailstack.sieve import Envelope, SieveSyntaxError, compile_script, run


def sieve_helpers(default_message: bytes, default_envelope: Envelope):
    """(outcome, actions, syntax_error) with this test module's message and envelope as defaults."""
    def outcome(script: str, message: bytes = default_message, envelope: Envelope = default_envelope, **kw):
        return run(compile_script(script), message, envelope, **kw)

    def actions(script: str, message: bytes = default_message, envelope: Envelope = default_envelope, **kw):
        result = outcome(script, message, envelope, **kw)
        assert not result.errors, result.errors
        return result.actions

    def syntax_error(script: str) -> str:
        with pytest.raises(SieveSyntaxError) as info:
            compile_script(script)
        return info.value.message

    return outcome, actions, syntax_error
