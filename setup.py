"""Build hook only: the project is described in pyproject.toml.

The wheel carries the reference configuration (etc/mailstack.toml) and the systemd unit
(systemd/mailstack.service) as package data in ``mailstack/data/``, so that an install from a
wheel has them too (``mailstack install-files``).  They stay where they are in the source tree,
the one copy that is edited; this copies them into the build at ``build_py`` time.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

#: source file -> name in mailstack/data/ (mailstack.files.SHIPPED reads them from there)
SHIPPED = {"etc/mailstack.toml": "mailstack.toml", "systemd/mailstack.service": "mailstack.service"}


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "mailstack", "data")
        self.mkpath(target)
        for source, name in SHIPPED.items():
            self.copy_file(source, os.path.join(target, name))


setup(cmdclass={"build_py": BuildWithShippedFiles})
