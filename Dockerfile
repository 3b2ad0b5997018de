# mailstack in a container: Debian bookworm (slim) with Python 3.11, the wheel of this tree in
# a virtual environment, run by twistd as the unprivileged user "mailstack".
#
#   docker build -t mailstack .
#   docker run --rm --user root -v mailstack-etc:/etc/mailstack -v mailstack-data:/var/lib/mailstack \
#       --entrypoint mailstack mailstack init --hostname mail.example.org --domain example.org
#   docker run -d --name mailstack -v mailstack-etc:/etc/mailstack -v mailstack-data:/var/lib/mailstack \
#       -p 25:25 -p 587:587 -p 465:465 -p 143:143 -p 993:993 -p 110:110 -p 995:995 -p 80:80 mailstack
#
# README.md, "Install on a server", has the whole procedure (users, certificate, DNS).

# Stage 1: the wheel, built as 'python -m build' would (pip builds it in an isolated environment).
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: only the installed wheel; no compiler, no source tree.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/mailstack/bin:$PATH \
    MAILSTACK_CONFIG=/etc/mailstack/mailstack.toml
COPY --from=wheel /wheels /tmp/wheels
RUN python -m venv /opt/mailstack \
 && /opt/mailstack/bin/pip install --no-cache-dir /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && /opt/mailstack/bin/python -c "from mailstack.shipped import refresh_plugin_cache; refresh_plugin_cache()" \
 && useradd --system --user-group --home-dir /var/lib/mailstack --no-create-home --shell /usr/sbin/nologin mailstack \
 && install -d -o root -g mailstack -m 750 /etc/mailstack \
 && install -d -o mailstack -g mailstack -m 700 /var/lib/mailstack
# Named volumes start as copies of these directories, with their owners: the configuration is
# root's (the service reads it through its group and cannot change its own accounts), the data
# the service's.  So 'init' and the other admin commands run as root: docker run/exec --user root.
VOLUME ["/etc/mailstack", "/var/lib/mailstack"]
# SMTP (MX), submission (STARTTLS), submissions (TLS), IMAP, IMAPS, POP3, POP3S, autoconfig.
EXPOSE 25 587 465 143 993 110 995 4190 80 443
USER mailstack
WORKDIR /var/lib/mailstack
# Ports below 1024 are bound without root: Docker (20.10 and later) sets
# net.ipv4.ip_unprivileged_port_start=0 in a container's network namespace; elsewhere pass
# --sysctl net.ipv4.ip_unprivileged_port_start=0.  twistd logs to standard output.
ENTRYPOINT ["/opt/mailstack/bin/twistd", "--nodaemon", "--pidfile=", "mailstack"]
CMD ["--config", "/etc/mailstack/mailstack.toml"]
