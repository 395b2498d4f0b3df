#!/bin/bash
# Health check of the daemon's container: exits 0 when `GET /readyz` on the
# daemon's own port answers 200 (the process is alive, Docker is reachable
# and start-up reconciliation is done), 1 otherwise.
#
# The image has no curl, so this speaks just enough HTTP/1.0 over bash's
# /dev/tcp. It reads the port from BERTH_BIND and talks to loopback when the
# daemon listens on every interface.
set -u

bind=${BERTH_BIND:-127.0.0.1:8080}
port=${bind##*:}
host=${bind%:*}
host=${host#[}
host=${host%]}
case "$host" in
  "" | 0.0.0.0) host=127.0.0.1 ;;
  ::) host=::1 ;;
esac

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3 || exit 1
read -r -t 5 _ status _ <&3 || exit 1
[ "$status" = 200 ]
