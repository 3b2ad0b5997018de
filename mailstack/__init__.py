"""mailstack: a whole mail system (SMTP, IMAP, POP3 over one Maildir store) on Twisted."""

from importlib import metadata as _metadata

try:  # the one version number is pyproject.toml's, as installed
    __version__ = _metadata.version("mailstack")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
