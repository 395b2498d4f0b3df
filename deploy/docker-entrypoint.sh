#!/bin/sh
# Entrypoint of the daemon's container (see adr/0002).
#
# Started as root (compose sets `user: "0:0"`), it does only what needs root
# and then runs the command as the unprivileged user `berth` (uid and gid
# 65532) with no capabilities left:
#
#   1. finds the group that owns the Docker socket (the daemon's only way to
#      reach the engine) and makes it berth's one supplementary group;
#   2. hands the state directory to berth if it is not berth's yet (a fresh
#      named volume or a bind-mounted host directory);
#   3. execs the command through setpriv: real, effective and saved uid and
#      gid become 65532, the inheritable and ambient sets are emptied, and
#      the change of uid clears the permitted and effective sets.
#
# That needs only CHOWN (step 2) and SETUID and SETGID (step 3): the profile
# of compose.yml, CapDrop ALL with CHOWN, FOWNER, SETUID and SETGID added
# back, plus no-new-privileges. The bounding set is not dropped, because that
# needs CAP_SETPCAP; it holds only those four, and with no-new-privileges no
# exec (setuid binary or file capabilities) can bring them back.
#
# Started as any other user (the image's default, or `docker run --user`),
# it runs the command as it is: the caller has chosen the user and its
# groups (`--group-add <socket gid>`).
#
# Worker containers never run this: the daemon gives them the entrypoint
# /usr/local/bin/berth-worker and a non-root user of its own.
set -eu

berth_uid=65532
berth_gid=65532

if [ "$#" -eq 0 ]; then
  set -- /usr/local/bin/berth serve
fi

if [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

say() { printf 'docker-entrypoint: %s\n' "$*" >&2; }

# The engine's socket: DOCKER_HOST when it names one, else the default.
# A TCP DOCKER_HOST needs no group.
case "${DOCKER_HOST:-}" in
  unix://*) socket=${DOCKER_HOST#unix://} ;;
  "") socket=/var/run/docker.sock ;;
  *) socket= ;;
esac

groups=
if [ -n "$socket" ]; then
  if [ -S "$socket" ]; then
    socket_gid=$(stat -c %g "$socket")
    groups=$socket_gid
    if [ "$socket_gid" = 0 ]; then
      say "$socket belongs to group 0 (root); berth joins group 0 to reach it (it gets no capability from that)"
    fi
  else
    say "warning: no Docker socket at $socket; is it mounted? (berth doctor tells more)"
  fi
fi

state_dir=${BERTH_STATE_DIR:-/var/lib/berth}
if [ -d "$state_dir" ] && [ "$state_dir" != / ] && [ "$(stat -c %u "$state_dir")" != "$berth_uid" ]; then
  chown "$berth_uid:$berth_gid" "$state_dir"
fi

if [ -n "$groups" ]; then
  group_option=--groups=$groups
else
  group_option=--clear-groups
fi

exec setpriv \
  --reuid="$berth_uid" \
  --regid="$berth_gid" \
  "$group_option" \
  --inh-caps=-all \
  --ambient-caps=-all \
  --no-new-privs \
  -- "$@"
