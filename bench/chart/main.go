// Command chart turns one `make bench` run (bench/run.sh) into the table it
// prints and a self-contained HTML page of SVG charts: connections and
// server RSS over time, RSS per connection, and fan-out latency.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// summary is the part of `switchboard bench`'s JSON summary used here.
type summary struct {
	OpenAtFull  int     `json:"open_at_full"`
	ConnectRate float64 `json:"connect_rate"`
	Servers     []struct {
		RSSBefore  float64 `json:"rss_before"`
		RSSAfter   float64 `json:"rss_after"`
		RSSPerConn float64 `json:"rss_per_conn"`
		CPUSeconds float64 `json:"cpu_seconds"`
	} `json:"servers"`
	Events *struct {
		Published        int         `json:"published"`
		PublishRate      float64     `json:"publish_rate"`
		Completeness     float64     `json:"completeness"`
		Latency          percentiles `json:"latency"`
		TimeToLast       percentiles `json:"time_to_last_delivery"`
		DeliveriesPerSec float64     `json:"deliveries_per_sec"`
	} `json:"events"`
}

type percentiles struct {
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// sample is one line of samples.txt: run, unix time, server RSS, TCP
// sockets in use on the host.
type sample struct {
	t, rss, sockets float64
}

func main() {
	dir := flag.String("dir", "", "the run's results directory")
	low := flag.Int("low", 5000, "the lower connection count")
	high := flag.Int("high", 19000, "the higher connection count")
	flag.Parse()
	if err := run(*dir, *low, *high, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chart:", err)
		os.Exit(1)
	}
}

func run(dir string, low, high int, out io.Writer) error {
	runs := map[string]*summary{}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var s summary
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if len(s.Servers) == 0 {
			return fmt.Errorf("%s: no server figures (was --server-pid given?)", f)
		}
		runs[strings.TrimSuffix(filepath.Base(f), ".json")] = &s
	}
	samples, err := readSamples(filepath.Join(dir, "samples.txt"))
	if err != nil {
		return err
	}
	kinds := []string{"switchboard", "baseline"}
	get := func(kind, name string) (*summary, error) {
		s, ok := runs[kind+"-"+name]
		if !ok {
			return nil, fmt.Errorf("run %s-%s missing in %s", kind, name, dir)
		}
		return s, nil
	}
	// higher marks the rows where more is better (rates), so that every
	// ratio reads as how many times better Switchboard did.
	type row struct {
		label  string
		v      [2]float64
		unit   string
		higher bool
	}
	var rows []row
	var lat [2]percentiles
	var perConn [2][2]float64
	for i, k := range kinds {
		lo, err := get(k, fmt.Sprintf("idle-%d", low))
		if err != nil {
			return err
		}
		hi, err := get(k, fmt.Sprintf("idle-%d", high))
		if err != nil {
			return err
		}
		cr, err := get(k, "connect")
		if err != nil {
			return err
		}
		fo, err := get(k, "fanout")
		if err != nil {
			return err
		}
		su, err := get(k, "sustained")
		if err != nil {
			return err
		}
		if fo.Events == nil || su.Events == nil {
			return fmt.Errorf("%s-fanout or %s-sustained has no event figures", k, k)
		}
		perConn[i] = [2]float64{lo.Servers[0].RSSPerConn, hi.Servers[0].RSSPerConn}
		slope := (hi.Servers[0].RSSAfter - lo.Servers[0].RSSAfter) / float64(high-low)
		lat[i] = fo.Events.Latency
		vals := []row{
			{fmt.Sprintf("server RSS per idle connection at %d", low), [2]float64{lo.Servers[0].RSSPerConn}, "B", false},
			{fmt.Sprintf("server RSS per idle connection at %d", high), [2]float64{hi.Servers[0].RSSPerConn}, "B", false},
			{fmt.Sprintf("slope %d -> %d connections", low, high), [2]float64{slope}, "B/conn", false},
			{"connect rate (one node, generator on the same cores)", [2]float64{cr.ConnectRate}, "/s", true},
			{fmt.Sprintf("fan-out: %d broadcasts at %.0f/s to %d, time to last p50", fo.Events.Published, fo.Events.PublishRate, high),
				[2]float64{fo.Events.TimeToLast.P50}, "ms", false},
			{"  time to last delivery p99", [2]float64{fo.Events.TimeToLast.P99}, "ms", false},
			{"  delivery latency p50", [2]float64{fo.Events.Latency.P50}, "ms", false},
			{"  delivery latency p99", [2]float64{fo.Events.Latency.P99}, "ms", false},
			{"  completeness", [2]float64{fo.Events.Completeness * 100}, "%", true},
			{"  server CPU", [2]float64{fo.Servers[0].CPUSeconds}, "s", false},
			{fmt.Sprintf("sustained: %.0f broadcasts/s to %d, deliveries/s", su.Events.PublishRate, high),
				[2]float64{su.Events.DeliveriesPerSec}, "/s", true},
			{"  completeness", [2]float64{su.Events.Completeness * 100}, "%", true},
			{"  delivery latency p50", [2]float64{su.Events.Latency.P50}, "ms", false},
			{"  delivery latency p99", [2]float64{su.Events.Latency.P99}, "ms", false},
		}
		if i == 0 {
			rows = vals
			continue
		}
		for j := range rows {
			rows[j].v[1] = vals[j].v[0]
		}
	}
	fmt.Fprintf(out, "%-56s %14s %14s %9s\n", "", "switchboard", "baseline", "ratio")
	for _, r := range rows {
		ratio := ""
		switch {
		case r.higher && r.v[1] != 0:
			ratio = fmt.Sprintf("%.2fx", r.v[0]/r.v[1])
		case !r.higher && r.v[0] != 0:
			ratio = fmt.Sprintf("%.2fx", r.v[1]/r.v[0])
		}
		fmt.Fprintf(out, "%-56s %14s %14s %9s\n", r.label, num(r.v[0])+" "+r.unit, num(r.v[1])+" "+r.unit, ratio)
	}
	fmt.Fprintln(out, "ratio = how many times better switchboard did: baseline/switchboard for sizes and times, switchboard/baseline for rates and completeness")

	page := chartPage(samples, perConn, lat, low, high)
	return os.WriteFile(filepath.Join(dir, "chart.html"), []byte(page), 0o644)
}

func num(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func readSamples(path string) (map[string][]sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]sample{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var name string
		var s sample
		if _, err := fmt.Sscan(sc.Text(), &name, &s.t, &s.rss, &s.sockets); err != nil {
			continue // a line cut short when a run ended
		}
		out[name] = append(out[name], s)
	}
	return out, sc.Err()
}

// chartPage draws three SVG charts into one HTML page.
func chartPage(samples map[string][]sample, perConn [2][2]float64, lat [2]percentiles, low, high int) string {
	var b strings.Builder
	b.WriteString(`<!doctype html><meta charset="utf-8"><title>switchboard bench</title>
<style>body{font:14px sans-serif;margin:2em}svg{background:#fafafa;border:1px solid #ddd;margin:1em 0}</style>
<h1>make bench</h1>`)
	colors := map[string]string{"switchboard": "#1f77b4", "baseline": "#d62728"}
	// 1. Connections and RSS over time, one line per run.
	var names []string
	for n := range samples {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, metric := range []struct {
		title string
		val   func(sample) float64
	}{
		{"Connections over time (TCP sockets in use on the host / 2)", func(s sample) float64 { return s.sockets / 2 }},
		{"Server RSS over time (MB)", func(s sample) float64 { return s.rss / 1e6 }},
	} {
		var lines []line
		maxX, maxY := 1.0, 1.0
		for _, n := range names {
			ss := samples[n]
			if len(ss) == 0 {
				continue
			}
			l := line{name: n, color: colors[strings.SplitN(n, "-", 2)[0]]}
			for _, s := range ss {
				x, y := s.t-ss[0].t, metric.val(s)
				l.pts = append(l.pts, [2]float64{x, y})
				maxX, maxY = max(maxX, x), max(maxY, y)
			}
			lines = append(lines, l)
		}
		b.WriteString("<h2>" + metric.title + "</h2>")
		b.WriteString(lineChart(lines, maxX, maxY, "seconds"))
	}
	// 2. RSS per connection.
	b.WriteString("<h2>Server RSS per idle connection (bytes)</h2>")
	b.WriteString(barChart([]string{fmt.Sprint(low), fmt.Sprint(high)},
		map[string][]float64{"switchboard": perConn[0][:], "baseline": perConn[1][:]}, colors))
	// 3. Latency distribution.
	b.WriteString("<h2>Fan-out delivery latency (ms)</h2>")
	b.WriteString(barChart([]string{"p50", "p90", "p99", "max"}, map[string][]float64{
		"switchboard": {lat[0].P50, lat[0].P90, lat[0].P99, lat[0].Max},
		"baseline":    {lat[1].P50, lat[1].P90, lat[1].P99, lat[1].Max},
	}, colors))
	return b.String()
}

type line struct {
	name, color string
	pts         [][2]float64
}

const w, h, pad = 760.0, 300.0, 50.0

func lineChart(lines []line, maxX, maxY float64, xlabel string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%v" height="%v">`, w+200, h+pad)
	axes(&b, maxY, xlabel+fmt.Sprintf(" (0-%.0f)", maxX))
	for i, l := range lines {
		var pts []string
		for _, p := range l.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", pad+p[0]/maxX*(w-pad), h-p[1]/maxY*(h-pad)))
		}
		dash := ""
		if strings.Contains(l.name, "idle") {
			dash = ` stroke-dasharray="4 3"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5"%s points="%s"/>`, l.color, dash, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%v" y="%v" fill="%s">%s</text>`, w+10, 20+i*16, l.color, html.EscapeString(l.name))
	}
	b.WriteString("</svg>")
	return b.String()
}

func barChart(groups []string, series map[string][]float64, colors map[string]string) string {
	keys := []string{"switchboard", "baseline"}
	maxY := 1.0
	for _, k := range keys {
		for _, v := range series[k] {
			maxY = max(maxY, v)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%v" height="%v">`, w+200, h+pad)
	axes(&b, maxY, "")
	gw := (w - pad) / float64(len(groups))
	bw := gw / float64(len(keys)+1)
	for gi, g := range groups {
		x0 := pad + float64(gi)*gw
		for ki, k := range keys {
			v := series[k][gi]
			bh := v / maxY * (h - pad)
			x := x0 + float64(ki)*bw + bw/2
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, x, h-bh, bw*0.9, bh, colors[k])
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11">%s</text>`, x, h-bh-3, num(v))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%v">%s</text>`, x0+gw/2-10, h+18, html.EscapeString(g))
	}
	for i, k := range keys {
		fmt.Fprintf(&b, `<text x="%v" y="%v" fill="%s">%s</text>`, w+10, 20+i*16, colors[k], k)
	}
	b.WriteString("</svg>")
	return b.String()
}

func axes(b *strings.Builder, maxY float64, xlabel string) {
	fmt.Fprintf(b, `<line x1="%v" y1="%v" x2="%v" y2="%v" stroke="#333"/>`, pad, h, w, h)
	fmt.Fprintf(b, `<line x1="%v" y1="%v" x2="%v" y2="%v" stroke="#333"/>`, pad, pad, pad, h)
	fmt.Fprintf(b, `<text x="2" y="%v" font-size="11">%s</text>`, pad-5, num(maxY))
	fmt.Fprintf(b, `<text x="2" y="%v" font-size="11">0</text>`, h)
	if xlabel != "" {
		fmt.Fprintf(b, `<text x="%v" y="%v" font-size="11">%s</text>`, w/2, h+30, html.EscapeString(xlabel))
	}
}
