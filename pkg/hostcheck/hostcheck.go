// Package hostcheck compares a Linux host's limits and memory with what a
// Switchboard node needs to hold a given number of connections, and says,
// for every shortfall, the command that fixes it.
//
// Everything is read from a proc tree handed in as an fs.FS (os.DirFS("/proc")
// in production, a fstest.MapFS in tests), so the checks are pure functions
// of that tree and the Budget.
package hostcheck

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
)

// Status is the outcome of one check.
type Status int

const (
	// OK means the host meets the need.
	OK Status = iota
	// Short means the host cannot hold the target until this is fixed.
	Short
	// Low means the host can hold the target but is below the recommended
	// value (e.g. a small accept backlog slows a reconnect storm).
	Low
	// Info means the check does not limit a server, or could not be
	// decided; the detail says which.
	Info
)

// String returns the label printed in front of a check.
func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Short:
		return "SHORT"
	case Low:
		return "low"
	default:
		return "info"
	}
}

// Budget is what one connection costs and how much headroom to keep. The
// defaults (DefaultBudget) are the project's measured density figures.
type Budget struct {
	// Conns is the number of connections the node must hold.
	Conns int
	// ServerBytes is the node's own memory per idle connection.
	ServerBytes int
	// KernelBytes is the kernel's memory per established socket (tcp_sock,
	// socket inode, file, dentry, epoll item).
	KernelBytes int
	// QueuedBytes is the socket memory charged against tcp_mem when one
	// small frame sits queued in every socket, as during a broadcast.
	QueuedBytes int
	// ExtraFDs is descriptor headroom beyond one per connection: listeners,
	// epoll and netpoll's wakeup descriptors, Redis, log files.
	ExtraFDs int
	// PageSize is the kernel page size in bytes (tcp_mem counts pages).
	PageSize int
	// Port is the WebSocket port, used in the conntrack fix commands.
	Port int
}

// DefaultBudget returns the project's per-connection figures for conns
// connections on a host with 4 KiB pages.
func DefaultBudget(conns int) Budget {
	return Budget{
		Conns:       conns,
		ServerBytes: 2500,
		KernelBytes: 4350,
		QueuedBytes: 4100,
		ExtraFDs:    1024,
		PageSize:    4096,
		Port:        9505,
	}
}

// Check is one compared limit.
type Check struct {
	// Name is what was checked, e.g. "fs.nr_open".
	Name string
	// Status is the outcome.
	Status Status
	// Have is the host's value as printed.
	Have string
	// Need is the required or recommended value as printed ("" when none).
	Need string
	// Detail explains the check or why it does not apply.
	Detail string
	// Fix lists the commands that remove a shortfall (empty when OK).
	Fix []string
}

// Report is the result of all checks, in a stable order.
type Report struct {
	// Conns is the target the checks were made for.
	Conns int
	// Checks holds one entry per limit.
	Checks []Check
}

// CanHold reports whether no check is Short.
func (r Report) CanHold() bool {
	for _, c := range r.Checks {
		if c.Status == Short {
			return false
		}
	}
	return true
}

// Run reads the proc tree and compares it with b. A file that cannot be read
// becomes an Info check saying so rather than an error, because doctor is
// most useful exactly on odd hosts (containers, restricted /proc); Run fails
// only on an invalid budget.
func Run(proc fs.FS, b Budget) (Report, error) {
	if b.Conns <= 0 {
		return Report{}, fmt.Errorf("hostcheck: connections must be positive, got %d", b.Conns)
	}
	if b.PageSize <= 0 {
		return Report{}, fmt.Errorf("hostcheck: page size must be positive, got %d", b.PageSize)
	}
	r := Report{Conns: b.Conns}
	fds := uint64(b.Conns + b.ExtraFDs)
	r.Checks = append(r.Checks, checkNoFile(proc, fds)...)
	r.Checks = append(r.Checks,
		checkNrOpen(proc, fds),
		checkFileMax(proc, fds),
		checkBacklog(proc, "net.core.somaxconn", b.Conns),
		checkBacklog(proc, "net.ipv4.tcp_max_syn_backlog", b.Conns),
		checkPortRange(proc, b.Conns),
		checkConntrack(proc, b),
		checkTCPMem(proc, b),
		checkBufferDefault(proc, "net.ipv4.tcp_rmem"),
		checkBufferDefault(proc, "net.ipv4.tcp_wmem"),
		checkMemory(proc, b),
	)
	return r, nil
}

// profile* are the values of sysctl/99-switchboard.conf, offered as the fix
// whenever they cover the need, so doctor and the profile never disagree.
const (
	profileNrOpen   = 2097152
	profileFileMax  = 4194304
	profileBacklog  = 65535
	profileCTMax    = 2097152
	profileNoFile   = 1048576
	applyHint       = "or apply the whole profile: sudo sysctl/apply.sh"
	fdsDetail       = "one descriptor per connection plus headroom"
	notServerDetail = "limits outbound connections only (load generator, Redis, auth backend); a server's accepted sockets share its listening port"
)

func checkNoFile(proc fs.FS, need uint64) []Check {
	soft, hard, err := readNoFile(proc)
	if err != nil {
		return []Check{{Name: "RLIMIT_NOFILE", Status: Info, Detail: fmt.Sprintf("cannot read: %v", err)}}
	}
	target := max(need, profileNoFile)
	raise := []string{
		fmt.Sprintf("systemd service: LimitNOFILE=%d in a unit drop-in (sysctl/systemd/switchboard.service.d/limits.conf)", target),
		fmt.Sprintf("login user: nofile %d in /etc/security/limits.d/ (sysctl/99-switchboard-limits.conf), then log in again", target),
		fmt.Sprintf("this shell, as root: ulimit -Hn %d && ulimit -n %d", target, target),
	}
	softC := Check{Name: "RLIMIT_NOFILE soft", Have: fmtLimit(soft), Need: fmtNum(need), Status: OK,
		Detail: "Go raises a process's soft limit to its hard limit at start (this one's too), so only the hard limit binds a node"}
	if soft < need && hard < need {
		// The fix is the hard limit's; printing it twice helps nobody.
		softC.Status = Short
		softC.Detail = "below the need, and so is the hard limit it could be raised to (fix below)"
	}
	hardC := Check{Name: "RLIMIT_NOFILE hard", Have: fmtLimit(hard), Need: fmtNum(need), Status: OK, Detail: fdsDetail + " (as seen by this process; start the node the same way)"}
	if hard < need {
		hardC.Status = Short
		hardC.Fix = raise
	}
	return []Check{softC, hardC}
}

func checkNrOpen(proc fs.FS, need uint64) Check {
	c := Check{Name: "fs.nr_open", Need: fmtNum(need), Detail: "ceiling for any process's RLIMIT_NOFILE"}
	v, err := readUint(proc, "fs.nr_open")
	if err != nil {
		return unreadable(c, err)
	}
	c.Have = fmtNum(v)
	if v >= need {
		c.Status = OK
		return c
	}
	c.Status = Short
	c.Fix = []string{sysctlW("fs.nr_open", max(need, profileNrOpen)), applyHint}
	return c
}

func checkFileMax(proc fs.FS, need uint64) Check {
	c := Check{Name: "fs.file-max", Detail: "descriptors for the whole system"}
	v, err := readUint(proc, "fs.file-max")
	if err != nil {
		return unreadable(c, err)
	}
	c.Have = fmtNum(v)
	// Descriptors other processes hold now count against the same total.
	var inUse uint64
	if f, err := readFields(proc, "sys/fs/file-nr"); err == nil && len(f) > 0 {
		inUse, _ = strconv.ParseUint(f[0], 10, 64)
	}
	want := need + inUse
	c.Need = fmtNum(want)
	if inUse > 0 {
		c.Detail = fmt.Sprintf("descriptors for the whole system; %s already in use", fmtNum(inUse))
	}
	if v >= want {
		c.Status = OK
		return c
	}
	c.Status = Short
	c.Fix = []string{sysctlW("fs.file-max", max(want, profileFileMax)), applyHint}
	return c
}

// checkBacklog recommends the profile's accept and SYN backlogs for nodes
// meant for 100,000 connections or more: a small backlog does not cap the
// connections held, it drops SYNs when every client reconnects at once
// (after a deploy or a load-balancer failover), which the clients retry
// only after 1 s, 3 s, 7 s.
func checkBacklog(proc fs.FS, key string, conns int) Check {
	c := Check{Name: key, Detail: "queue for a reconnect storm; does not cap connections held"}
	v, err := readUint(proc, key)
	if err != nil {
		return unreadable(c, err)
	}
	c.Have = fmtNum(v)
	want := uint64(4096)
	if conns >= 100_000 {
		want = profileBacklog
	}
	c.Need = fmtNum(want) + " recommended"
	if v >= want {
		c.Status = OK
		return c
	}
	c.Status = Low
	c.Fix = []string{sysctlW(key, profileBacklog), applyHint}
	return c
}

func checkPortRange(proc fs.FS, conns int) Check {
	c := Check{Name: "net.ipv4.ip_local_port_range", Status: Info}
	f, err := readFields(proc, sysPath("net.ipv4.ip_local_port_range"))
	if err != nil {
		return unreadable(c, err)
	}
	if len(f) != 2 {
		return unreadable(c, fmt.Errorf("expected 2 fields, got %q", f))
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return unreadable(c, fmt.Errorf("parsing %q: %w", f, err))
	}
	if hi < lo {
		return unreadable(c, fmt.Errorf("range %d-%d is empty", lo, hi))
	}
	ports := hi - lo + 1
	c.Have = fmt.Sprintf("%d-%d (%s ports)", lo, hi, fmtNum(uint64(ports)))
	c.Detail = fmt.Sprintf("%s; a load generator needs ~%d source IPs for %s connections to one server address",
		notServerDetail, (conns+ports-1)/ports, fmtNum(uint64(conns)))
	if ports < 60000 {
		c.Fix = []string{`on a load-generator host: sudo sysctl -w net.ipv4.ip_local_port_range="1024 65535"`}
	}
	return c
}

// checkConntrack decides whether nf_conntrack_max can cap the node. The
// limit binds only while a netfilter rule makes the kernel track
// connections. What can be seen from /proc: whether the module is loaded,
// how many entries exist now, and which legacy iptables tables are loaded
// (a "nat" table means NAT, which tracks). nftables rules are not visible
// in /proc, so "nothing tracked now" is reported as such, not as safe.
func checkConntrack(proc fs.FS, b Budget) Check {
	c := Check{Name: "net.netfilter.nf_conntrack_max"}
	maxV, err := readUint(proc, "net.netfilter.nf_conntrack_max")
	if errors.Is(err, fs.ErrNotExist) {
		c.Status = OK
		c.Have = "module not loaded"
		c.Detail = "no connection is tracked, so there is no table to fill"
		return c
	}
	if err != nil {
		return unreadable(c, err)
	}
	c.Have = fmtNum(maxV)
	count, countErr := readUint(proc, "net.netfilter.nf_conntrack_count")
	tables, _ := readFields(proc, "net/ip_tables_names")
	need := uint64(b.Conns) + count
	c.Need = fmtNum(need)
	fix := []string{
		fmt.Sprintf("sudo sysctl/conntrack.sh raise --max %d", max(need, profileCTMax)),
		fmt.Sprintf("or stop tracking the WebSocket port: sudo sysctl/conntrack.sh notrack --port %d", b.Port),
	}
	var evidence []string
	if countErr == nil && count > 0 {
		evidence = append(evidence, fmt.Sprintf("%s connections tracked now", fmtNum(count)))
	}
	if len(tables) > 0 {
		evidence = append(evidence, "iptables tables loaded: "+strings.Join(tables, ","))
	}
	if maxV >= need {
		c.Status = OK
		c.Detail = "large enough even if every connection is tracked"
		return c
	}
	if len(evidence) > 0 {
		c.Status = Short
		c.Detail = "conntrack is active (" + strings.Join(evidence, "; ") + "): new connections stall at nf_conntrack_max"
		c.Fix = fix
		return c
	}
	c.Status = Low
	c.Detail = "module loaded but nothing tracked now (nf_conntrack_count 0, no iptables tables), so it does not bind today; " +
		"nftables rules cannot be seen from /proc: a NAT or 'ct state' rule would stall new connections at this value"
	c.Fix = fix
	return c
}

// checkTCPMem checks that one queued page per socket (a broadcast to every
// connection) fits under tcp_mem's hard limit; above it the kernel drops.
func checkTCPMem(proc fs.FS, b Budget) Check {
	c := Check{Name: "net.ipv4.tcp_mem high"}
	f, err := readFields(proc, sysPath("net.ipv4.tcp_mem"))
	if err != nil {
		return unreadable(c, err)
	}
	if len(f) != 3 {
		return unreadable(c, fmt.Errorf("expected 3 fields, got %q", f))
	}
	high, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return unreadable(c, fmt.Errorf("parsing %q: %w", f[2], err))
	}
	pages := ceilDiv(uint64(b.Conns)*uint64(b.QueuedBytes), uint64(b.PageSize))
	c.Have = fmt.Sprintf("%s pages (%s)", fmtNum(high), fmtBytes(high*uint64(b.PageSize)))
	c.Need = fmt.Sprintf("%s pages (%s)", fmtNum(pages), fmtBytes(pages*uint64(b.PageSize)))
	c.Detail = fmt.Sprintf("all TCP socket memory; a broadcast queues ~%s in every socket at once", fmtBytes(uint64(b.QueuedBytes)))
	if high >= pages {
		c.Status = OK
		return c
	}
	c.Status = Short
	// Profile values, or twice the need when the profile is too small.
	lo, pr, hi := uint64(1048576), uint64(1572864), uint64(2097152)
	if hi < 2*pages {
		lo, pr, hi = pages, pages*3/2, 2*pages
	}
	c.Fix = []string{fmt.Sprintf(`sudo sysctl -w net.ipv4.tcp_mem="%d %d %d"`, lo, pr, hi), applyHint}
	return c
}

// checkBufferDefault flags a large default socket buffer: it does not stop
// a node from holding connections, but it is what every socket may queue
// before autotuning has an opinion, and that multiplies by a million.
func checkBufferDefault(proc fs.FS, key string) Check {
	c := Check{Name: key + " default", Need: "4,096 recommended", Detail: "initial buffer of every socket, which autotuning grows from; small favours density over per-socket throughput"}
	f, err := readFields(proc, sysPath(key))
	if err != nil {
		return unreadable(c, err)
	}
	if len(f) != 3 {
		return unreadable(c, fmt.Errorf("expected 3 fields, got %q", f))
	}
	def, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return unreadable(c, fmt.Errorf("parsing %q: %w", f[1], err))
	}
	c.Have = fmtNum(def)
	if def <= 4096 {
		c.Status = OK
		return c
	}
	c.Status = Low
	c.Fix = []string{fmt.Sprintf(`sudo sysctl -w %s="%s 4096 %s"`, key, f[0], f[2]), applyHint}
	return c
}

func checkMemory(proc fs.FS, b Budget) Check {
	per := uint64(b.ServerBytes + b.KernelBytes)
	need := uint64(b.Conns) * per
	c := Check{Name: "MemAvailable", Need: fmtBytes(need),
		Detail: fmt.Sprintf("%s connections x (%s server + %s kernel); queued bytes are under tcp_mem",
			fmtNum(uint64(b.Conns)), fmtBytes(uint64(b.ServerBytes)), fmtBytes(uint64(b.KernelBytes)))}
	avail, err := readMemAvailable(proc)
	if err != nil {
		return unreadable(c, err)
	}
	c.Have = fmtBytes(avail)
	if avail >= need {
		c.Status = OK
		return c
	}
	c.Status = Short
	c.Fix = []string{fmt.Sprintf("hold fewer connections per node: switchboard serve --max-conns %d (and run more nodes), or add memory", avail/per)}
	return c
}

func unreadable(c Check, err error) Check {
	c.Status = Info
	c.Detail = fmt.Sprintf("cannot read: %v", err)
	c.Fix = nil
	return c
}

func sysctlW(key string, v uint64) string {
	return fmt.Sprintf("sudo sysctl -w %s=%d", key, v)
}

// sysPath maps a sysctl key to its file under /proc.
func sysPath(key string) string {
	return "sys/" + strings.ReplaceAll(key, ".", "/")
}

func readFields(proc fs.FS, name string) ([]string, error) {
	b, err := fs.ReadFile(proc, name)
	if err != nil {
		return nil, fmt.Errorf("reading /proc/%s: %w", name, err)
	}
	return strings.Fields(string(b)), nil
}

func readUint(proc fs.FS, key string) (uint64, error) {
	f, err := readFields(proc, sysPath(key))
	if err != nil {
		return 0, err
	}
	if len(f) != 1 {
		return 0, fmt.Errorf("/proc/%s: expected one number, got %q", sysPath(key), f)
	}
	v, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/%s: %w", sysPath(key), err)
	}
	return v, nil
}

// unlimited stands for RLIM_INFINITY.
const unlimited = ^uint64(0)

// readNoFile parses the "Max open files" row of /proc/self/limits: reading
// the file rather than calling getrlimit keeps the check testable.
func readNoFile(proc fs.FS) (soft, hard uint64, err error) {
	f, err := proc.Open("self/limits")
	if err != nil {
		return 0, 0, fmt.Errorf("reading /proc/self/limits: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Max open files")
		if !ok {
			continue
		}
		fl := strings.Fields(rest)
		if len(fl) < 2 {
			return 0, 0, fmt.Errorf("/proc/self/limits: short row %q", sc.Text())
		}
		if soft, err = parseLimit(fl[0]); err == nil {
			hard, err = parseLimit(fl[1])
		}
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/self/limits: %w", err)
		}
		return soft, hard, nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("reading /proc/self/limits: %w", err)
	}
	return 0, 0, errors.New("/proc/self/limits: no \"Max open files\" row")
}

func parseLimit(s string) (uint64, error) {
	if s == "unlimited" {
		return unlimited, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

func readMemAvailable(proc fs.FS) (uint64, error) {
	b, err := fs.ReadFile(proc, "meminfo")
	if err != nil {
		return 0, fmt.Errorf("reading /proc/meminfo: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "MemAvailable:")
		if !ok {
			continue
		}
		fl := strings.Fields(rest)
		if len(fl) != 2 || fl[1] != "kB" {
			return 0, fmt.Errorf("/proc/meminfo: unexpected row %q", line)
		}
		kb, err := strconv.ParseUint(fl[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/meminfo: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("/proc/meminfo: no MemAvailable row (kernel older than 3.14?)")
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

func fmtLimit(v uint64) string {
	if v == unlimited {
		return "unlimited"
	}
	return fmtNum(v)
}

// fmtNum prints v with thousands separators: limits are compared by eye.
func fmtNum(v uint64) string {
	s := strconv.FormatUint(v, 10)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// fmtBytes prints decimal units (kB, MB, GB), the units the density budget
// is written in ("2.5 KB per connection").
func fmtBytes(v uint64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(v)/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(v)/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.2f kB", float64(v)/1e3)
	default:
		return fmt.Sprintf("%d B", v)
	}
}

// Write prints the report: one line per check (status, name, have, need),
// the detail, and each fix command indented beneath it, then a verdict.
func (r Report) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "switchboard doctor: can this host hold %s connections?\n\n", fmtNum(uint64(r.Conns)))
	for _, c := range r.Checks {
		need := ""
		if c.Need != "" {
			need = "need " + c.Need
		}
		line := fmt.Sprintf("%-6s %-32s %-28s %s", c.Status, c.Name, c.Have, need)
		fmt.Fprintln(bw, strings.TrimRight(line, " "))
		if c.Detail != "" {
			fmt.Fprintf(bw, "       %s\n", c.Detail)
		}
		for _, f := range c.Fix {
			fmt.Fprintf(bw, "       fix: %s\n", f)
		}
	}
	if r.CanHold() {
		fmt.Fprintf(bw, "\nThis host can hold %s connections", fmtNum(uint64(r.Conns)))
		fmt.Fprintln(bw, " (items marked low or info are advice, not limits).")
	} else {
		fmt.Fprintf(bw, "\nThis host cannot hold %s connections: fix the SHORT items above.\n", fmtNum(uint64(r.Conns)))
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return nil
}
