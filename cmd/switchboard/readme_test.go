package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// repoRoot is the repository's top directory, seen from this package.
const repoRoot = "../.."

// readmeSection returns the body of the README's "## title" section.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(b), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README.md has no %q section", "## "+title)
	}
	if i := strings.Index(body, "\n## "); i >= 0 {
		body = body[:i]
	}
	return body
}

// layoutDirs are the directories a newcomer needs named: every one holding
// Go files (bench/baseline's own module included), and the Node test
// harnesses (a package.json), outside dependencies (node_modules), test
// inputs (testdata) and hidden directories.
func layoutDirs(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != repoRoot && (name == "node_modules" || name == "testdata" || strings.HasPrefix(name, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") || name == "package.json" {
			rel, err := filepath.Rel(repoRoot, filepath.Dir(path))
			if err != nil {
				return err
			}
			if rel := filepath.ToSlash(rel) + "/"; !slices.Contains(dirs, rel) {
				dirs = append(dirs, rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// The README's Layout section names every package directory, each on a
// line of its own with its job, and nothing that is not there.
func TestReadmeLayoutNamesEveryPackage(t *testing.T) {
	named := map[string]bool{}
	for _, line := range strings.Split(readmeSection(t, "Layout"), "\n") {
		// "pkg/server/        what it does": the names before the gap.
		names, _, ok := strings.Cut(line, "  ")
		if !ok || !strings.HasSuffix(strings.TrimSpace(names), "/") {
			continue
		}
		for _, n := range strings.Split(names, ",") {
			named[strings.TrimSpace(n)] = true
		}
	}
	if len(named) == 0 {
		t.Fatal("found no directories in the README's Layout section")
	}
	for _, dir := range layoutDirs(t) {
		if !named[dir] {
			t.Errorf("README.md's Layout does not name %s", dir)
		}
	}
	for n := range named {
		if st, err := os.Stat(filepath.Join(repoRoot, n)); err != nil || !st.IsDir() {
			t.Errorf("README.md's Layout names %s, which is not a directory", n)
		}
	}
}

// readmeFlagRow matches a row of the Configuration table:
// | `--flag` | default | meaning |.
var readmeFlagRow = regexp.MustCompile("^\\| `--([a-z0-9-]+)` \\|([^|]*)\\|")

// serveHelpDefaults returns each flag of `switchboard serve --help` with
// the default it prints.
func serveHelpDefaults(t *testing.T) map[string]string {
	t.Helper()
	var out bytes.Buffer
	if code := run([]string{"serve", "--help"}, func(string) string { return "" }, &out, &out); code != 0 {
		t.Fatalf("serve --help exit %d", code)
	}
	flags := map[string]string{}
	lines := strings.Split(out.String(), "\n")
	for i, line := range lines {
		name, ok := strings.CutPrefix(line, "  --")
		if !ok || i+1 == len(lines) {
			continue
		}
		usage := lines[i+1]
		j := strings.LastIndex(usage, " (default ")
		k := strings.LastIndex(usage, "; env ")
		if j < 0 || k < j {
			t.Fatalf("--%s: no default in %q", name, usage)
		}
		flags[name] = usage[j+len(" (default ") : k]
	}
	return flags
}

// The README's flag table lists exactly serve's flags, with the defaults
// --help prints. A default written in prose ("(any)", "off",
// "2 × GOMAXPROCS") is allowed only where the flag's own default is its
// zero value, which takes the default the prose describes.
func TestReadmeFlagTableMatchesServeHelp(t *testing.T) {
	help := serveHelpDefaults(t)
	table := map[string]string{}
	for _, line := range strings.Split(readmeSection(t, "Configuration"), "\n") {
		if m := readmeFlagRow.FindStringSubmatch(line); m != nil {
			table[m[1]] = strings.TrimSpace(m[2])
		}
	}
	for name, def := range help {
		readme, ok := table[name]
		if !ok {
			t.Errorf("--%s is not in README.md's flag table", name)
			continue
		}
		if lit, ok := strings.CutPrefix(readme, "`"); ok && strings.HasSuffix(lit, "`") {
			if lit = strings.TrimSuffix(lit, "`"); !sameDefault(lit, def) {
				t.Errorf("--%s: README.md says default %s, serve --help %s", name, lit, def)
			}
			continue
		}
		switch def {
		case `""`, "0", "0s", "false":
		default:
			t.Errorf("--%s: README.md says default %q, serve --help %s", name, readme, def)
		}
	}
	for name := range table {
		if _, ok := help[name]; !ok {
			t.Errorf("README.md's flag table lists --%s, which serve does not have", name)
		}
	}
}

// sameDefault compares a default as the README writes it with the one
// --help prints, durations by value (2m is 2m0s).
func sameDefault(readme, help string) bool {
	if readme == help {
		return true
	}
	a, errA := time.ParseDuration(readme)
	b, errB := time.ParseDuration(help)
	if readme == "0" {
		a, errA = 0, nil
	}
	return errA == nil && errB == nil && a == b
}
