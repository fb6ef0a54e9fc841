#!/usr/bin/env bash
# conntrack.sh -- keep netfilter connection tracking from capping a node.
#
# Connection tracking costs nothing until a netfilter rule needs it (NAT,
# a stateful firewall rule, Docker's port publishing). From then on every
# TCP connection is one entry, and when the table holds nf_conntrack_max
# entries the kernel drops new SYNs ("nf_conntrack: table full, dropping
# packet"): the seed system stalled at 262,144 connections this way. Two
# fixes, pick one:
#
#   raise    make the table big enough: nf_conntrack_max (default 2,097,152)
#            and the hash size (default max/4 buckets, so chains stay ~4 long;
#            set through /sys/module/nf_conntrack/parameters/hashsize, which
#            also works on kernels whose nf_conntrack_buckets is read-only).
#            Costs ~300 bytes of kernel memory per tracked connection.
#   notrack  do not track the WebSocket port at all: raw-table NOTRACK rules
#            for inbound dport PORT and outbound sport PORT (iptables, or nft
#            when iptables is absent). Cheaper, but it cannot be used when the
#            port is NATed (DNAT/port publishing needs tracking), and a
#            stateful filter must accept state UNTRACKED on that port.
#   status   print what is tracked and the limits; change nothing.
#
# An operator tool: what it changes is meant to stay (until reboot; it
# prints how to persist it). To undo: `raise` prints the previous values
# and the commands that put them back; `notrack --remove` (same --port)
# deletes the rules `notrack` added. No bench script runs it (they set the
# profile's nf_conntrack_max and buckets through apply.sh, and put them back
# on exit: bench/lib.sh).
#
# Usage: sysctl/conntrack.sh [--dry-run] raise [--max N] [--buckets N]
#        sysctl/conntrack.sh [--dry-run] notrack [--port 9505] [--remove]
#        sysctl/conntrack.sh [--dry-run] --notrack PORT     (the same as notrack --port PORT)
#        sysctl/conntrack.sh status
# Environment: SYSCTL_ROOT (default /proc/sys), SYS_MODULE_ROOT (default
# /sys/module) -- the trees read and written, for tests.
set -euo pipefail

sysctl_root=${SYSCTL_ROOT:-/proc/sys}
module_root=${SYS_MODULE_ROOT:-/sys/module}
max_path="$sysctl_root/net/netfilter/nf_conntrack_max"
count_path="$sysctl_root/net/netfilter/nf_conntrack_count"
buckets_path="$sysctl_root/net/netfilter/nf_conntrack_buckets"
hash_path="$module_root/nf_conntrack/parameters/hashsize"

dry_run=0
max=2097152
buckets=""
port=9505
remove=0
cmd=""

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run) dry_run=1 ;;
	--max) max=${2:?--max needs a number}; shift ;;
	--buckets) buckets=${2:?--buckets needs a number}; shift ;;
	--port) port=${2:?--port needs a number}; shift ;;
	--notrack) cmd=notrack; port=${2:?--notrack needs a port}; shift ;;
	--remove) remove=1 ;;
	raise | notrack | status) cmd=$1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "conntrack.sh: unknown argument $1" >&2; usage; exit 2 ;;
	esac
	shift
done
[ -n "$cmd" ] || { usage; exit 2; }
for n in "$max" "$port" ${buckets:+"$buckets"}; do
	[[ $n =~ ^[0-9]+$ ]] || { echo "conntrack.sh: not a number: $n" >&2; exit 2; }
done
buckets=${buckets:-$((max / 4))}

# run prints a command and runs it unless --dry-run.
run() {
	echo "+ $*"
	[ "$dry_run" -eq 1 ] || "$@"
}

# write_value raises the number in file $1 to $2 (never lowers it); the
# command that puts back the previous value is added to $undo.
undo=()
write_value() {
	local path=$1 want=$2 have
	have=$(cat "$path")
	if [ "$have" -ge "$want" ]; then
		echo "keep   $path = $have (already >= $want)"
		return
	fi
	echo "+ echo $want > $path   (was $have)"
	[ "$dry_run" -eq 1 ] && return
	printf '%s\n' "$want" >"$path" || { echo "conntrack.sh: cannot write $path (root needed)" >&2; exit 1; }
	undo+=("echo $have | sudo tee $path")
}

status() {
	if [ ! -e "$max_path" ]; then
		echo "nf_conntrack is not loaded: no connection is tracked, nothing can stall on it."
		return
	fi
	echo "nf_conntrack_count   $(cat "$count_path") (connections tracked now)"
	echo "nf_conntrack_max     $(cat "$max_path")"
	[ -e "$buckets_path" ] && echo "nf_conntrack_buckets $(cat "$buckets_path")"
	if [ "$(cat "$count_path")" -eq 0 ]; then
		echo "Nothing is tracked now: the module is loaded but no netfilter rule uses it,"
		echo "so nf_conntrack_max does not limit connections (until such a rule appears)."
	fi
}

raise() {
	if [ ! -e "$max_path" ]; then
		echo "nf_conntrack is not loaded: nothing to raise (a rule that needs it will load it; run this again then)."
		return
	fi
	write_value "$max_path" "$max"
	if [ -e "$hash_path" ]; then
		write_value "$hash_path" "$buckets"
	elif [ -e "$buckets_path" ]; then
		write_value "$buckets_path" "$buckets"
	else
		echo "skip   hash size: neither $hash_path nor $buckets_path exists"
	fi
	echo "To survive a reboot: 'options nf_conntrack hashsize=$buckets' in /etc/modprobe.d/, and"
	echo "net.netfilter.nf_conntrack_max = $max in /etc/sysctl.d/ (sysctl/99-switchboard.conf has it)."
	if [ ${#undo[@]} -gt 0 ]; then
		echo "To undo now (the previous values):"
		printf '  %s\n' "${undo[@]}"
	fi
}

notrack() {
	local op=-A check
	[ "$remove" -eq 1 ] && op=-D
	if command -v iptables >/dev/null; then
		# -C tests for the rule, so running twice adds it once; --remove deletes it.
		for rule in "PREROUTING -p tcp --dport $port -j CT --notrack" "OUTPUT -p tcp --sport $port -j CT --notrack"; do
			# shellcheck disable=SC2086 # the rule is split into iptables arguments on purpose
			if iptables -t raw -C $rule 2>/dev/null; then check=present; else check=absent; fi
			if { [ "$remove" -eq 0 ] && [ "$check" = absent ]; } || { [ "$remove" -eq 1 ] && [ "$check" = present ]; }; then
				# shellcheck disable=SC2086
				run iptables -t raw "$op" $rule
			else
				echo "ok     iptables -t raw $rule: already $check"
			fi
		done
		echo "Persist with your distribution's iptables-save mechanism (e.g. netfilter-persistent save)."
		[ "$remove" -eq 1 ] || echo "Undo: sysctl/conntrack.sh notrack --port $port --remove"
	elif command -v nft >/dev/null; then
		if [ "$remove" -eq 1 ]; then
			run nft delete table inet switchboard_notrack
			return
		fi
		# A table of our own: replacing it is idempotent and touches no other rule.
		if nft list table inet switchboard_notrack >/dev/null 2>&1; then
			run nft delete table inet switchboard_notrack
		fi
		run nft add table inet switchboard_notrack
		run nft add chain inet switchboard_notrack pre '{ type filter hook prerouting priority raw; }'
		run nft add chain inet switchboard_notrack out '{ type filter hook output priority raw; }'
		run nft add rule inet switchboard_notrack pre tcp dport "$port" notrack
		run nft add rule inet switchboard_notrack out tcp sport "$port" notrack
		echo "Persist by adding the table to /etc/nftables.conf (nft list table inet switchboard_notrack)."
		echo "Undo: sysctl/conntrack.sh notrack --remove (deletes the table inet switchboard_notrack)"
	else
		echo "conntrack.sh: neither iptables nor nft is installed; these are the rules to install:" >&2
		echo "  iptables -t raw -A PREROUTING -p tcp --dport $port -j CT --notrack" >&2
		echo "  iptables -t raw -A OUTPUT -p tcp --sport $port -j CT --notrack" >&2
		[ "$dry_run" -eq 1 ] || exit 1
	fi
}

"$cmd"
