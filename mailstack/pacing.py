"""Command pacing, shared by the SMTP, IMAP and POP3 sessions.

A session may run ``rate`` commands a second on average and ``burst`` at once (a token
bucket); past that its next command waits until the bucket allows it.  Nothing is refused
and no session is cut: a client that pipelines fast (a POP3 download of 10,000 messages, an
upload of a folder by APPEND, a session open for a week) only slows to the rate, while a
flood of cheap commands cannot take more of the reactor than the rate gives it.  This
replaces a fixed number of commands per session, which cut legitimate work (issue 14).
"""

from __future__ import annotations


class CommandPacer:
    """The bucket may go ``slack`` commands (10 ms worth) into debt before a command waits,
    and then waits for the whole debt: one timer per ``slack`` commands, not one each."""

    def __init__(self, rate: float, burst: int, clock):
        self.rate, self.burst, self.clock = float(rate), burst, clock
        self.slack = max(1.0, self.rate / 100)
        self.tokens = float(burst)
        self.stamp = clock.seconds()
        self.paced = 0  # commands that had to wait

    def take(self) -> float:
        """Count one command; the seconds it must wait before it runs (0.0: at once)."""
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - 1
        self.stamp = now
        if self.tokens >= -self.slack:
            return 0.0
        self.paced += 1
        return -self.tokens / self.rate
