# syntax=docker/dockerfile:1
#
# The image users deploy: the daemon `berth` (the default entrypoint) and the
# worker `berth-worker` (the entrypoint the daemon gives worker containers:
# same image, another entrypoint), with git and CA certificates, running as
# the unprivileged user `berth` (uid and gid 65532).
#
#   docker build -t berth .
#   docker run ... berth                      # berth serve
#   docker run --entrypoint berth-worker ...  # what the daemon does per task
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
    && useradd --uid 65532 --gid 65532 --home-dir /home/berth --create-home --shell /usr/sbin/nologin berth
COPY --from=build /src/target/release/berth /src/target/release/berth-worker /usr/local/bin/
USER 65532:65532
WORKDIR /home/berth
ENV HOME=/home/berth
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
