package hostcheck

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"testing/fstest"
)

const limitsHeader = "Limit                     Soft Limit           Hard Limit           Units     \n"

// healthyProc is a host tuned by sysctl/99-switchboard.conf with 1M
// descriptors and plenty of memory; cases change one thing each.
func healthyProc() fstest.MapFS {
	f := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	return fstest.MapFS{
		"self/limits": f(limitsHeader +
			"Max cpu time              unlimited            unlimited            seconds   \n" +
			"Max open files            1048576              1048576              files     \n"),
		"sys/fs/nr_open":                       f("2097152\n"),
		"sys/fs/file-max":                      f("4194304\n"),
		"sys/fs/file-nr":                       f("1000\t0\t4194304\n"),
		"sys/net/core/somaxconn":               f("65535\n"),
		"sys/net/ipv4/tcp_max_syn_backlog":     f("65535\n"),
		"sys/net/ipv4/ip_local_port_range":     f("1024\t65535\n"),
		"sys/net/netfilter/nf_conntrack_max":   f("2097152\n"),
		"sys/net/netfilter/nf_conntrack_count": f("0\n"),
		"net/ip_tables_names":                  f(""),
		"sys/net/ipv4/tcp_mem":                 f("1048576\t1572864\t2097152\n"),
		"sys/net/ipv4/tcp_rmem":                f("4096\t4096\t1048576\n"),
		"sys/net/ipv4/tcp_wmem":                f("4096\t4096\t1048576\n"),
		"meminfo":                              f("MemTotal:       24684084 kB\nMemFree:         1000 kB\nMemAvailable:   23973076 kB\n"),
	}
}

func set(key, value string) func(fstest.MapFS) {
	return func(m fstest.MapFS) { m[key] = &fstest.MapFile{Data: []byte(value + "\n")} }
}

func remove(key string) func(fstest.MapFS) {
	return func(m fstest.MapFS) { delete(m, key) }
}

func noFile(soft, hard string) func(fstest.MapFS) {
	return set("self/limits", limitsHeader+"Max open files            "+soft+"  "+hard+"  files     ")
}

func TestRun(t *testing.T) {
	tests := []struct {
		name    string
		conns   int
		change  []func(fstest.MapFS)
		canHold bool
		want    map[string]Status // check name -> status; unnamed checks are not asserted
		fix     string            // a fix command that must be offered
	}{
		{
			name: "tuned host holds 1M", conns: 1_000_000, canHold: true,
			want: map[string]Status{"RLIMIT_NOFILE hard": OK, "fs.nr_open": OK, "fs.file-max": OK,
				"net.netfilter.nf_conntrack_max": OK, "net.ipv4.tcp_mem high": OK, "MemAvailable": OK,
				"net.ipv4.ip_local_port_range": Info, "net.ipv4.tcp_rmem default": OK},
		},
		{
			name: "hard nofile below need", conns: 1_000_000, change: []func(fstest.MapFS){noFile("20000", "20000")},
			want: map[string]Status{"RLIMIT_NOFILE soft": Short, "RLIMIT_NOFILE hard": Short},
			fix:  "LimitNOFILE=1048576",
		},
		{
			name: "soft below but hard enough: Go raises soft itself", conns: 1_000_000, canHold: true,
			change: []func(fstest.MapFS){noFile("1024", "1048576")},
			want:   map[string]Status{"RLIMIT_NOFILE soft": OK, "RLIMIT_NOFILE hard": OK},
		},
		{
			name: "unlimited nofile", conns: 1_000_000, canHold: true,
			change: []func(fstest.MapFS){noFile("unlimited", "unlimited")},
			want:   map[string]Status{"RLIMIT_NOFILE hard": OK},
		},
		{
			name: "nr_open short", conns: 1_500_000, change: []func(fstest.MapFS){set("sys/fs/nr_open", "1048576"), noFile("unlimited", "unlimited")},
			want: map[string]Status{"fs.nr_open": Short}, fix: "sudo sysctl -w fs.nr_open=2097152",
		},
		{
			name: "file-max counts descriptors already in use", conns: 1_000_000,
			change: []func(fstest.MapFS){set("sys/fs/file-max", "1100000"), set("sys/fs/file-nr", "200000\t0\t1100000")},
			want:   map[string]Status{"fs.file-max": Short}, fix: "sudo sysctl -w fs.file-max=4194304",
		},
		{
			name: "small backlogs are advice, not a shortfall", conns: 1_000_000, canHold: true,
			change: []func(fstest.MapFS){set("sys/net/core/somaxconn", "4096"), set("sys/net/ipv4/tcp_max_syn_backlog", "2048")},
			want:   map[string]Status{"net.core.somaxconn": Low, "net.ipv4.tcp_max_syn_backlog": Low},
			fix:    "sudo sysctl -w net.core.somaxconn=65535",
		},
		{
			name: "conntrack not loaded", conns: 1_000_000, canHold: true,
			change: []func(fstest.MapFS){remove("sys/net/netfilter/nf_conntrack_max"), remove("sys/net/netfilter/nf_conntrack_count")},
			want:   map[string]Status{"net.netfilter.nf_conntrack_max": OK},
		},
		{
			name: "conntrack loaded, small, nothing tracked: advice", conns: 1_000_000, canHold: true,
			change: []func(fstest.MapFS){set("sys/net/netfilter/nf_conntrack_max", "262144")},
			want:   map[string]Status{"net.netfilter.nf_conntrack_max": Low},
			fix:    "conntrack.sh notrack --port 9505",
		},
		{
			name: "conntrack tracking with entries: the seed's 262,144 stall", conns: 1_000_000,
			change: []func(fstest.MapFS){set("sys/net/netfilter/nf_conntrack_max", "262144"), set("sys/net/netfilter/nf_conntrack_count", "1200")},
			want:   map[string]Status{"net.netfilter.nf_conntrack_max": Short},
			fix:    "sudo sysctl/conntrack.sh raise --max 2097152",
		},
		{
			name: "conntrack with a nat table loaded but no entries yet", conns: 1_000_000,
			change: []func(fstest.MapFS){set("sys/net/netfilter/nf_conntrack_max", "262144"), set("net/ip_tables_names", "nat\nfilter")},
			want:   map[string]Status{"net.netfilter.nf_conntrack_max": Short},
		},
		{
			name: "stock tcp_mem on a 24 GB host is short for 1M", conns: 1_000_000,
			change: []func(fstest.MapFS){set("sys/net/ipv4/tcp_mem", "287898\t383867\t575796")},
			want:   map[string]Status{"net.ipv4.tcp_mem high": Short},
			fix:    `sudo sysctl -w net.ipv4.tcp_mem="1048576 1572864 2097152"`,
		},
		{
			name: "stock tcp_mem holds 100k", conns: 100_000, canHold: true,
			change: []func(fstest.MapFS){set("sys/net/ipv4/tcp_mem", "287898\t383867\t575796")},
			want:   map[string]Status{"net.ipv4.tcp_mem high": OK},
		},
		{
			name: "tcp_mem beyond the profile scales the fix", conns: 3_000_000,
			change: []func(fstest.MapFS){noFile("unlimited", "unlimited"), set("sys/fs/nr_open", "4000000"),
				set("meminfo", "MemAvailable:   99973076 kB"), set("sys/net/netfilter/nf_conntrack_max", "4000000")},
			want: map[string]Status{"net.ipv4.tcp_mem high": Short, "MemAvailable": OK},
			fix:  `sudo sysctl -w net.ipv4.tcp_mem="3002930 4504395 6005860"`,
		},
		{
			name: "large default buffers are advice", conns: 1_000_000, canHold: true,
			change: []func(fstest.MapFS){set("sys/net/ipv4/tcp_rmem", "4096\t131072\t33554432")},
			want:   map[string]Status{"net.ipv4.tcp_rmem default": Low},
			fix:    `sudo sysctl -w net.ipv4.tcp_rmem="4096 4096 33554432"`,
		},
		{
			name: "memory short for 1M on a 4 GB host", conns: 1_000_000,
			change: []func(fstest.MapFS){set("meminfo", "MemTotal: 4000000 kB\nMemAvailable:    3500000 kB")},
			want:   map[string]Status{"MemAvailable": Short},
			fix:    "switchboard serve --max-conns 523211",
		},
		{
			name: "unreadable files are info, not failures", conns: 1000, canHold: true,
			change: []func(fstest.MapFS){remove("meminfo"), remove("self/limits"), set("sys/net/ipv4/tcp_mem", "garbage")},
			want:   map[string]Status{"MemAvailable": Info, "RLIMIT_NOFILE": Info, "net.ipv4.tcp_mem high": Info},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := healthyProc()
			for _, ch := range tt.change {
				ch(proc)
			}
			r, err := Run(proc, DefaultBudget(tt.conns))
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Check{}
			for _, c := range r.Checks {
				got[c.Name] = c
			}
			for name, want := range tt.want {
				c, ok := got[name]
				if !ok {
					t.Errorf("no check %q", name)
					continue
				}
				if c.Status != want {
					t.Errorf("%s: status %v, want %v (have %q, need %q, %s)", name, c.Status, want, c.Have, c.Need, c.Detail)
				}
			}
			if r.CanHold() != tt.canHold {
				t.Errorf("CanHold = %v, want %v", r.CanHold(), tt.canHold)
			}
			var out bytes.Buffer
			if err := r.Write(&out); err != nil {
				t.Fatal(err)
			}
			if tt.fix != "" && !strings.Contains(out.String(), "fix: "+tt.fix) && !strings.Contains(out.String(), tt.fix) {
				t.Errorf("report lacks fix %q:\n%s", tt.fix, out.String())
			}
			if !tt.canHold && !strings.Contains(out.String(), "cannot hold") {
				t.Errorf("report lacks the verdict:\n%s", out.String())
			}
			for _, c := range r.Checks {
				if c.Status == Short && len(c.Fix) == 0 && c.Name != "RLIMIT_NOFILE soft" {
					t.Errorf("%s is short but offers no fix", c.Name)
				}
			}
		})
	}
}

func TestRunRejectsBadBudget(t *testing.T) {
	if _, err := Run(healthyProc(), DefaultBudget(0)); err == nil {
		t.Fatal("zero connections accepted")
	}
}

func TestFmtNum(t *testing.T) {
	for in, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 262144: "262,144", 1000000: "1,000,000"} {
		if got := fmtNum(in); got != want {
			t.Errorf("fmtNum(%d) = %q, want %q", in, got, want)
		}
	}
}

// TestRealHost only checks that the real /proc parses: the verdict depends
// on the machine.
func TestRealHost(t *testing.T) {
	if _, err := os.Stat("/proc/self/limits"); err != nil {
		t.Skip("no Linux /proc here")
	}
	r, err := Run(os.DirFS("/proc"), DefaultBudget(1000))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.Checks {
		if c.Status == Info && strings.HasPrefix(c.Detail, "cannot read") && c.Name != "net.netfilter.nf_conntrack_max" {
			t.Errorf("%s: %s", c.Name, c.Detail)
		}
	}
	var out bytes.Buffer
	if err := r.Write(&out); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
}
