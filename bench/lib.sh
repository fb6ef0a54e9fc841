# bench/lib.sh -- sourced by the bench scripts that apply the kernel profile
# (sysctl/99-switchboard.conf) for a run: it puts the previous values back
# when the script exits, however it exits, and says so.
#
#   . bench/lib.sh
#   sb_on_exit cleanup         # instead of `trap cleanup EXIT`: installs the
#                              # EXIT, INT, TERM and HUP traps at once
#   sb_apply_profile FILE      # save the values it changes to FILE, apply
#   sb_start_server ADMIN CMD… # start the server under test, wait for it
#
# On exit (normal end, a failure under set -e, Ctrl-C, SIGTERM, SIGHUP) the
# traps ignore further INT/TERM/HUP, restore the saved values with
# `sysctl/apply.sh --restore FILE` (which verifies each key reads back as
# saved) and print "restored N kernel settings from FILE", then run the
# script's cleanup (with errexit off, so a failing step cannot cut it short).
# A restore that fails prints what to run and makes the script exit non-zero.
# Restoring comes first: it takes milliseconds, while stopping the load may
# not, and nothing needs the profile once the script is ending.
#
# Only one run at a time may hold the profile: if a second one saved the
# first one's applied profile as its "previous values", the later of the
# two restores would leave the profile applied. A lock directory
# (SB_SYSCTL_LOCK, default /run/switchboard-sysctl.lock) names the holder
# and its save file; a run waits while the holder lives, and when the holder
# died without restoring (SIGKILL, power loss of the shell), the next run
# restores that holder's file first.
#
# Not root: apply.sh changes nothing, so there is nothing to save, lock or
# restore. KEEP_SYSCTL=1 leaves the profile applied and prints the undo
# command instead of restoring.
#
# shellcheck shell=bash

_sb_name=$(basename "$0")
_sb_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_sb_lock=${SB_SYSCTL_LOCK:-/run/switchboard-sysctl.lock}
_sb_saved=""    # the save file, from the moment apply.sh may have changed a key
_sb_lock_tmp="" # the lock being built, before it is renamed into place
_sb_cleanup=""  # the script's own cleanup function

# sb_on_exit FUNC: run FUNC (may be empty) after the restore, on any exit.
sb_on_exit() {
	_sb_cleanup=${1:-}
	trap _sb_exit EXIT
	trap '_sb_signal INT 130' INT
	trap '_sb_signal TERM 143' TERM
	trap '_sb_signal HUP 129' HUP
}

_sb_signal() { # NAME STATUS
	trap '' INT TERM HUP
	echo "$_sb_name: SIG$1: stopping${_sb_saved:+, restoring kernel settings first} (further signals ignored until done)" >&2
	exit "$2"
}

_sb_exit() {
	local rc=$?
	trap '' INT TERM HUP
	set +e
	sb_restore || { [ "$rc" -ne 0 ] || rc=1; }
	[ -z "$_sb_cleanup" ] || "$_sb_cleanup"
	exit "$rc"
}

# _sb_id PID: "PID STARTTIME", which a recycled pid does not match; fails
# for a process that is gone or a zombie (SIGKILLed, not yet reaped).
_sb_id() {
	local pid=$1 stat
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	stat=${stat##*) } # the fields after "(comm) ": state, ...; starttime is the 20th
	# shellcheck disable=SC2086 # split into fields on purpose
	set -- $stat
	case $1 in Z | X) return 1 ;; esac
	echo "$pid ${20}"
}

_sb_lock_take() { # SAVEFILE
	local holder saved said=0
	_sb_lock_tmp=$(mktemp -d "$_sb_lock.XXXXXX") || return 1
	_sb_id $$ >"$_sb_lock_tmp/holder"
	printf '%s\n' "$1" >"$_sb_lock_tmp/saved"
	# rename(2) onto a non-empty directory fails: the rename is the lock.
	until mv -T "$_sb_lock_tmp" "$_sb_lock" 2>/dev/null; do
		# The holder file is written before the rename: a lock without one
		# was not made by this code, and counts as stale.
		holder=$(cat "$_sb_lock/holder" 2>/dev/null) || holder=""
		if [ "$(_sb_id "${holder%% *}" 2>/dev/null)" = "$holder" ]; then
			[ "$said" -eq 1 ] || echo "$_sb_name: pid ${holder%% *} holds the kernel profile ($_sb_lock); waiting for it to end" >&2
			said=1
			sleep 1
			continue
		fi
		saved=$(cat "$_sb_lock/saved" 2>/dev/null) || saved=""
		if [ -s "$saved" ]; then
			echo "$_sb_name: pid ${holder%% *} ended without restoring the kernel settings it changed; restoring them from $saved first" >&2
			"$_sb_repo/sysctl/apply.sh" --restore "$saved" >/dev/null ||
				{ echo "$_sb_name: could not restore $saved; fix the host (sysctl/apply.sh --restore $saved) and remove $_sb_lock" >&2; return 1; }
		fi
		rm -rf "$_sb_lock"
	done
	_sb_lock_tmp=""
}

# _sb_lock_release removes the lock if this shell holds it (also when a
# signal came between taking it and recording that).
_sb_lock_release() {
	[ "$(cat "$_sb_lock/holder" 2>/dev/null)" = "$(_sb_id $$)" ] && rm -rf "$_sb_lock"
}

# sb_apply_profile FILE: apply sysctl/99-switchboard.conf, the previous
# value of each key it changes saved in FILE; prints apply.sh's summary.
sb_apply_profile() {
	local file=$1 out
	if [ "$(id -u)" -ne 0 ]; then
		echo "$_sb_name: not root: the kernel profile is not applied, nothing to restore" >&2
		"$_sb_repo/sysctl/apply.sh" --dry-run | tail -n 1 >&2
		return 0
	fi
	mkdir -p "$(dirname "$file")"
	file=$(cd "$(dirname "$file")" && pwd)/$(basename "$file")
	_sb_lock_take "$file" || exit 1
	_sb_saved=$file
	out=$("$_sb_repo/sysctl/apply.sh" --save "$file") || { printf '%s\n' "$out" >&2; exit 1; }
	grep -E '^(skip|apply\.sh: changed)' <<<"$out" >&2 || true
	echo "$_sb_name: kernel profile applied, previous values in $file; they are put back on exit" \
		"(if this shell is killed with SIGKILL: sysctl/apply.sh --restore $file)" >&2
}

# sb_restore: put back what sb_apply_profile changed, once; 1 if it could not.
sb_restore() {
	local file=$_sb_saved n out
	[ -z "$_sb_lock_tmp" ] || rm -rf "$_sb_lock_tmp"
	_sb_lock_tmp=""
	if [ -z "$file" ]; then
		_sb_lock_release
		return 0
	fi
	_sb_saved=""
	n=$(grep -c '^[^#]' "$file" 2>/dev/null) || n=0
	if [ "$n" -eq 0 ]; then
		echo "$_sb_name: the kernel profile changed no setting (host already tuned), nothing to restore" >&2
	elif [ "${KEEP_SYSCTL:-0}" = 1 ]; then
		echo "$_sb_name: KEEP_SYSCTL=1: $n kernel settings left as the profile set them; undo: sysctl/apply.sh --restore $file" >&2
	elif out=$("$_sb_repo/sysctl/apply.sh" --restore "$file" 2>&1); then
		echo "$_sb_name: restored $n kernel settings from $file" >&2
	else
		printf '%s\n' "$out" >&2
		echo "$_sb_name: FAILED to restore the kernel settings in $file; run: sudo sysctl/apply.sh --restore $file" >&2
		return 1 # the lock stays: the next run retries this restore
	fi
	_sb_lock_release
	return 0
}

# sb_start_server ADMIN CMD...: run CMD in the background and wait until
# http://127.0.0.1:ADMIN/ answers; sets sb_server to its pid. A port can
# still be held for a moment by the previous run's sockets (and, with the
# profile's wide ephemeral range, by any outgoing connection), so a server
# that exits at once is started again, 20 times at most; then the script
# stops.
sb_start_server() {
	local admin=$1
	shift
	for _ in $(seq 20); do
		"$@" &
		sb_server=$!
		for _ in $(seq 100); do
			curl -s -o /dev/null "http://127.0.0.1:$admin/" && return 0
			kill -0 "$sb_server" 2>/dev/null || break
			sleep 0.05
		done
		kill -9 "$sb_server" 2>/dev/null || true
		wait "$sb_server" 2>/dev/null || true
		echo "== $1 did not start (admin port $admin); again in 2 s" >&2
		sleep 2
	done
	echo "== $1 could not start" >&2
	exit 1
}
