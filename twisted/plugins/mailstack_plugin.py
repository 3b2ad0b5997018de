"""twistd plugin: ``twistd -n mailstack --config FILE`` runs the whole mail server."""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "configuration file (default: $MAILSTACK_CONFIG, var/mailstack.toml, /etc/mailstack/mailstack.toml)"],
    ]


@implementer(IServiceMaker, IPlugin)
class MailstackServiceMaker:
    tapname = "mailstack"
    description = "mailstack mail server: SMTP, submission, IMAP and POP3 over one Maildir store"
    options = Options

    def makeService(self, options):
        # Imported here so that 'twistd --help' stays fast and never fails on our account.
        from mailstack.config import default_path
        from mailstack.errors import ConfigError
        from mailstack.service import make_service

        path = options["config"] or default_path()
        try:
            return make_service(path, twistd_options=getattr(options, "parent", None))
        except ConfigError as e:
            sys.stderr.write(f"mailstack: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2)


serviceMaker = MailstackServiceMaker()
