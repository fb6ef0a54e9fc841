#!/usr/bin/env bash
# local-rsh.sh -- Tsung's "remote connector" for client VMs on this machine.
#
# Tsung starts each client Erlang VM with "<connector> <host> <command...>"
# (tsung -r <connector>, default ssh). For the loopback scenario every
# client is this machine, so run the command here instead of needing an
# ssh server and keys for localhost. Refuses any other host.
set -euo pipefail
host=${1:?local-rsh.sh: no host}
shift
case "$host" in
localhost | 127.* | "$(hostname)" | "$(hostname -s)") ;;
*) echo "local-rsh.sh: $host is not this machine; use ssh for remote Tsung clients" >&2; exit 1 ;;
esac
# Erlang hands the command over as words of one string; rebuild and run it.
exec sh -c "$*"
