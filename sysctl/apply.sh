#!/usr/bin/env bash
# apply.sh -- apply sysctl/99-switchboard.conf to the running kernel.
#
# Idempotent: a key already at its value is left alone. Limits (file-max,
# nr_open, backlogs, conntrack sizes) are only ever raised: a host tuned
# higher than this profile keeps its values. Prints one line per key (set,
# ok, keep, skip) and a summary; never fails because it is not root or a
# key is missing (module not loaded, read-only /proc in a container) --
# it says so and goes on, so `make bench` can call it anywhere.
#
# What it sets stays set until the next reboot (or until something sets it
# again). To be able to undo it, give --save FILE; it then prints the undo
# command, `sysctl/apply.sh --restore FILE`. Without --save, the "set" lines
# (key: old -> new) are the only record of the previous values. The bench
# scripts (bench/lib.sh) save and restore by themselves.
#
# Usage: sysctl/apply.sh [--dry-run] [--file CONF] [--save FILE] [--restore FILE]
#   --dry-run        print what would change, change nothing
#   --file CONF      profile to apply (default: 99-switchboard.conf beside this script)
#   --save FILE      write the previous value of every key it changes to FILE
#                    (a sysctl.d-format file), so a shared host can be put back
#   --restore FILE   apply FILE exactly (no raise-only rule): undo a --save.
#                    Unlike applying, a restore fails (exit 1) when a key that
#                    exists could not be written back or does not read back as
#                    saved (a key gone with its module is reported, not failed).
# Environment: SYSCTL_ROOT (default /proc/sys) -- the tree written, for tests.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
conf="$here/99-switchboard.conf"
root=${SYSCTL_ROOT:-/proc/sys}
dry_run=0
save=""
restore=0

# Keys that are capacities: lowering one could break another workload on
# the host, so they are raised when below the profile and otherwise kept.
raise_only=" fs.file-max fs.nr_open net.core.somaxconn net.ipv4.tcp_max_syn_backlog
 net.core.netdev_max_backlog net.netfilter.nf_conntrack_max
 net.netfilter.nf_conntrack_buckets net.ipv4.tcp_max_tw_buckets "

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run) dry_run=1 ;;
	--file) conf=${2:?--file needs a path}; shift ;;
	--save) save=${2:?--save needs a path}; shift ;;
	--restore) conf=${2:?--restore needs a path}; restore=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "apply.sh: unknown argument $1" >&2; usage; exit 2 ;;
	esac
	shift
done

[ -r "$conf" ] || { echo "apply.sh: cannot read $conf" >&2; exit 2; }
if [ -n "$save" ] && [ "$dry_run" -eq 0 ]; then
	mkdir -p "$(dirname "$save")"
	printf '# previous values, written by sysctl/apply.sh on %s\n' "$(date -u +%FT%TZ)" >"$save"
fi

# norm squeezes the tabs and runs of spaces the kernel prints between the
# fields of a multi-value key (tcp_mem, ip_local_port_range) to one space.
norm() { tr -s ' \t\n' '   ' <<<"$1" | sed 's/^ //; s/ $//'; }

changed=0 unchanged=0 skipped=0 failed=0
while IFS= read -r line || [ -n "$line" ]; do
	line=${line%%#*}
	[[ $line =~ ^[[:space:]]*$ ]] && continue
	if ! [[ $line =~ ^[[:space:]]*-?([A-Za-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
		echo "skip   malformed line: $line"; skipped=$((skipped + 1)); continue
	fi
	key=${BASH_REMATCH[1]}
	want=$(norm "${BASH_REMATCH[2]}")
	path="$root/${key//.//}"
	if [ ! -e "$path" ]; then
		echo "skip   $key: $path does not exist (module not loaded, or not this kernel)"
		skipped=$((skipped + 1)); continue
	fi
	if ! have=$(cat "$path" 2>/dev/null); then
		echo "skip   $key: $path cannot be read"
		skipped=$((skipped + 1)) failed=$((failed + 1)); continue
	fi
	have=$(norm "$have")
	if [ "$have" = "$want" ]; then
		echo "ok     $key = $have"; unchanged=$((unchanged + 1)); continue
	fi
	if [ "$restore" -eq 0 ] && [[ $raise_only == *" $key "* ]] &&
		[[ $have =~ ^[0-9]+$ ]] && [[ $want =~ ^[0-9]+$ ]] && [ "$have" -ge "$want" ]; then
		echo "keep   $key = $have (already >= $want)"; unchanged=$((unchanged + 1)); continue
	fi
	if [ "$dry_run" -eq 1 ]; then
		echo "would  $key: $have -> $want"; changed=$((changed + 1)); continue
	fi
	if [ ! -w "$path" ]; then
		echo "skip   $key: $have, wanted $want: $path not writable (not root, or read-only /proc)"
		skipped=$((skipped + 1)) failed=$((failed + 1)); continue
	fi
	# The previous value is recorded before the write, so a run interrupted
	# between the two still has it; the line goes again if the kernel refuses.
	[ -n "$save" ] && printf '%s = %s\n' "$key" "$have" >>"$save"
	if ! printf '%s\n' "$want" 2>/dev/null >"$path"; then
		[ -n "$save" ] && sed -i '$d' "$save"
		echo "skip   $key: $have, wanted $want: the kernel refused the write"
		skipped=$((skipped + 1)) failed=$((failed + 1)); continue
	fi
	if [ "$restore" -eq 1 ] && [ "$(norm "$(cat "$path")")" != "$want" ]; then
		echo "skip   $key: wrote $want, reads back $(norm "$(cat "$path")")"
		skipped=$((skipped + 1)) failed=$((failed + 1)); continue
	fi
	echo "set    $key: $have -> $want"; changed=$((changed + 1))
done <"$conf"

verb=changed
[ "$dry_run" -eq 1 ] && verb="would change"
echo "apply.sh: $verb $changed, unchanged $unchanged, skipped $skipped ($conf)"
[ -n "$save" ] && [ "$dry_run" -eq 0 ] && echo "apply.sh: previous values in $save (undo: sysctl/apply.sh --restore $save)"
if [ "$restore" -eq 1 ] && [ "$dry_run" -eq 0 ] && [ "$failed" -gt 0 ]; then
	echo "apply.sh: restore incomplete: $failed key(s) of $conf not put back (see the skip lines)" >&2
	exit 1
fi
exit 0
