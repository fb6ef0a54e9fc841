package main

import (
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// envName is the environment variable that sets flag name.
func envName(name string) string {
	return "SWITCHBOARD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// parseFlags applies environment variables first and the command line
// second, so the command line wins.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
			}
		}
	})
	if err != nil {
		return err
	}
	return fs.Parse(args)
}

// flagDefault gives a flag that cannot be switched off the rule of the
// README's table: zero takes the default d, and a negative value, which
// would mean "off" for a limit that can be, is an error.
func flagDefault[T int | time.Duration](name string, v *T, d T) error {
	switch {
	case *v < 0:
		return fmt.Errorf("--%s %v is negative: it cannot be switched off (0 takes the default, %v)", name, *v, d)
	case *v == 0:
		*v = d
	}
	return nil
}

// usageWithEnv prints the flags with their defaults and variables.
func usageWithEnv(fs *flag.FlagSet, synopsis string) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\nFlags (each also read from the environment variable shown):\n", synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			def := f.DefValue
			if def == "" {
				def = `""`
			}
			fmt.Fprintf(w, "  --%s\n    \t%s (default %s; env %s)\n", f.Name, f.Usage, def, envName(f.Name))
		})
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parsePrefixes parses CIDRs; a bare address stands for itself alone (/32
// or /128).
func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address: %w", s, err)
		}
		out = append(out, p)
	}
	return out, nil
}
