# syntax=docker/dockerfile:1
#
# The image users deploy: the daemon `berth` (the default command) and the
# worker `berth-worker` (the entrypoint the daemon gives worker containers:
# same image, another entrypoint), with git and CA certificates, running as
# the unprivileged user `berth` (uid and gid 65532).
#
#   docker build -t berth:latest .
#   docker run ... berth:latest                  # berth serve
#   docker run ... berth:latest berth ps         # another command
#   docker run --entrypoint berth-worker ...     # what the daemon does per task
#
# The entrypoint (deploy/docker-entrypoint.sh) runs the command as it is for
# a non-root user; started as root (deploy/compose.yml does), it joins the
# Docker socket's group, hands the state directory to berth and drops to
# uid 65532 with no capability left (adr/0002).
#
# An agent CLI is not included: derive an image from this one that installs
# it, and point BERTH_WORKER_IMAGE and BERTH_AGENT_COMMAND at it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p api -p worker --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 65532 berth \
    && useradd --uid 65532 --gid 65532 --home-dir /home/berth --create-home --shell /usr/sbin/nologin berth \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/berth \
    && install -d -o 65532 -g 65532 -m 0755 /srv/clone-cache
COPY --from=build /src/target/release/berth /src/target/release/berth-worker /usr/local/bin/
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY deploy/healthcheck.sh /usr/local/bin/berth-healthcheck
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh /usr/local/bin/berth-healthcheck
USER 65532:65532
WORKDIR /home/berth
ENV HOME=/home/berth
ENV BERTH_STATE_DIR=/var/lib/berth
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["/usr/local/bin/berth", "serve"]
