package server

import (
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/index"
)

// configField is one numeric field of Config, read and written as an
// int64 so that the int and time.Duration fields share one table.
type configField struct {
	name string
	set  func(*Config, int64)
	get  func(*Config) int64
	def  int64 // what zero becomes
	// unit is 1 for a count and a second for a duration: -unit is how a
	// person writes "negative" (-1, -1s), while Off as a duration is -1ns.
	unit int64
	// offable: the field's comment says Off turns it off. Every other
	// field refuses a negative value.
	offable bool
}

func intField(name string, p func(*Config) *int, def int, offable bool) configField {
	return configField{name: name, def: int64(def), unit: 1, offable: offable,
		set: func(c *Config, v int64) { *p(c) = int(v) },
		get: func(c *Config) int64 { return int64(*p(c)) }}
}

func durationField(name string, p func(*Config) *time.Duration, def time.Duration, offable bool) configField {
	return configField{name: name, def: int64(def), unit: int64(time.Second), offable: offable,
		set: func(c *Config, v int64) { *p(c) = time.Duration(v) },
		get: func(c *Config) int64 { return int64(*p(c)) }}
}

// configFields lists every numeric field of Config. MaxConns and
// IdleTimeout default to 0, which is "no limit" and "off".
func configFields() []configField {
	return []configField{
		intField("MaxMessageSize", func(c *Config) *int { return &c.MaxMessageSize }, DefaultMaxMessageSize, false),
		intField("MaxHeaderBytes", func(c *Config) *int { return &c.MaxHeaderBytes }, DefaultMaxHeaderBytes, false),
		intField("MaxQueueBytes", func(c *Config) *int { return &c.MaxQueueBytes }, DefaultMaxQueueBytes, false),
		intField("MaxSubscriptions", func(c *Config) *int { return &c.MaxSubscriptions }, DefaultMaxSubscriptions, false),
		intField("Compression", func(c *Config) *int { return &c.Compression }, 0, true),
		intField("CompressionMinBytes", func(c *Config) *int { return &c.CompressionMinBytes }, DefaultCompressionMinBytes, true),
		intField("ConnectsPerIP", func(c *Config) *int { return &c.ConnectsPerIP }, DefaultConnectsPerIP, true),
		intField("MessagesPerMinute", func(c *Config) *int { return &c.MessagesPerMinute }, DefaultMessagesPerMinute, true),
		intField("ConnectsIPv6Prefix", func(c *Config) *int { return &c.ConnectsIPv6Prefix }, DefaultConnectsIPv6Prefix, false),
		intField("MaxConns", func(c *Config) *int { return &c.MaxConns }, 0, true),
		durationField("HandshakeTimeout", func(c *Config) *time.Duration { return &c.HandshakeTimeout }, DefaultHandshakeTimeout, false),
		durationField("DrainTime", func(c *Config) *time.Duration { return &c.DrainTime }, DefaultDrainTime, true),
		intField("WriteWorkers", func(c *Config) *int { return &c.WriteWorkers }, 2*runtime.GOMAXPROCS(0), false),
		intField("IndexShards", func(c *Config) *int { return &c.IndexShards }, DefaultIndexShards, false),
		durationField("IdleTimeout", func(c *Config) *time.Duration { return &c.IdleTimeout }, 0, true),
		durationField("TCPKeepAlive", func(c *Config) *time.Duration { return &c.TCPKeepAlive }, DefaultTCPKeepAlive, true),
		durationField("AuthTimeout", func(c *Config) *time.Duration { return &c.AuthTimeout }, DefaultAuthTimeout, false),
		durationField("PresenceGrace", func(c *Config) *time.Duration { return &c.PresenceGrace }, DefaultPresenceGrace, false),
		intField("MaxPresenceBytes", func(c *Config) *int { return &c.MaxPresenceBytes }, DefaultMaxPresenceBytes, false),
	}
}

// The convention of Config and of the flags table in the README: zero
// always takes the default; a field that can be switched off takes Off,
// or any negative value, and keeps it; every other field refuses a
// negative value.
func TestConfigZeroIsTheDefaultAndOffTurnsOff(t *testing.T) {
	newNode := func(f configField, v int64) (*Server, error) {
		cfg := Config{Broker: broker.NewMemory(1), Registry: prometheus.NewRegistry()}
		f.set(&cfg, v)
		return New(cfg)
	}
	for _, f := range configFields() {
		t.Run(f.name, func(t *testing.T) {
			s, err := newNode(f, 0)
			if err != nil {
				t.Fatalf("zero: %v", err)
			}
			if got := f.get(&s.cfg); got != f.def {
				t.Errorf("zero became %d, want the default %d", got, f.def)
			}
			for _, v := range []int64{Off, -f.unit, -3 * f.unit} {
				s, err := newNode(f, v)
				switch {
				case f.offable && err != nil:
					t.Errorf("%d (off): %v", v, err)
				case f.offable && f.get(&s.cfg) != v:
					t.Errorf("%d (off) became %d", v, f.get(&s.cfg))
				case !f.offable && err == nil:
					t.Errorf("%d accepted, but %s cannot be switched off", v, f.name)
				}
			}
		})
	}
}

// Every numeric field of Config is in configFields, so a new field gets
// its convention checked or the test fails.
func TestConfigFieldsListsEveryNumericField(t *testing.T) {
	listed := map[string]bool{}
	for _, f := range configFields() {
		listed[f.name] = true
	}
	var cfg Config
	for name, kind := range numericFields(&cfg) {
		if !listed[name] {
			t.Errorf("Config.%s (%s) is not in configFields", name, kind)
		}
	}
}

func TestMaxConnsDefaultAndOffLetEveryUpgradeThrough(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxConns int
	}{{"default", 0}, {"Off", Off}, {"negative", -5}} {
		t.Run(tc.name, func(t *testing.T) {
			s := testNode(t, func(c *Config) { c.MaxConns = tc.maxConns })
			for range 8 {
				dial(t, s, "project=p1", nil).expect("connected")
			}
		})
	}
}

func TestIdleTimeoutDefaultAndOffNeverClose(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
	}{{"default", 0}, {"Off", Off}, {"negative", -time.Minute}} {
		t.Run(tc.name, func(t *testing.T) {
			if every := idleSweepEvery(tc.timeout); every != 0 {
				t.Fatalf("idle sweep every %d ticks with the timeout off", every)
			}
			s := testNode(t, func(c *Config) { c.IdleTimeout = tc.timeout })
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			// Pretend the connection has been silent for a day: with the
			// timeout off the sweep must leave it alone.
			s.idx.Range(func(_ index.ID, sc *conn) { sc.lastSeen.Store(s.clock.Load() - 86400) })
			s.sweepIdle(s.clock.Load())
			c.send(`{"type":"ping"}`)
			c.expect("pong")
		})
	}
}

// Compression is off for any negative value, as every other field that Off
// turns off, not for Off alone.
func TestCompressionAnyNegativeDeclinesEveryOffer(t *testing.T) {
	for _, v := range []int{Off, -2} {
		s := testNode(t, func(c *Config) { c.Compression = v })
		resp, c := rawUpgrade(t, s, "project=p1", "permessage-deflate; client_max_window_bits")
		if got := resp.Header.Values("Sec-WebSocket-Extensions"); len(got) != 0 {
			t.Fatalf("Compression %d: extensions %q, want none", v, got)
		}
		c.expect("connected")
	}
}

// numericFields returns Config's int and time.Duration fields by name.
func numericFields(c *Config) map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(c).Elem()
	for i := range v.NumField() {
		f := v.Type().Field(i)
		switch {
		case f.Type == reflect.TypeFor[time.Duration]():
			out[f.Name] = "time.Duration"
		case f.Type.Kind() == reflect.Int && f.IsExported():
			out[f.Name] = "int"
		}
	}
	return out
}
