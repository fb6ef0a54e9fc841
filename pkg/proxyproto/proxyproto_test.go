package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// v2 builds a version 2 header: verCmd, fam, then body (addresses and
// TLVs) with its length.
func v2(verCmd, fam byte, body ...byte) []byte {
	b := append([]byte(nil), sigV2...)
	b = append(b, verCmd, fam, 0, 0)
	binary.BigEndian.PutUint16(b[14:], uint16(len(body)))
	return append(b, body...)
}

// v2Inet is a PROXY TCP/IPv4 header from src to dst, followed by tlvs.
func v2Inet(src, dst netip.AddrPort, tlvs ...byte) []byte {
	s, d := src.Addr().As4(), dst.Addr().As4()
	body := append(append(s[:], d[:]...), 0, 0, 0, 0)
	binary.BigEndian.PutUint16(body[8:], src.Port())
	binary.BigEndian.PutUint16(body[10:], dst.Port())
	return v2(0x21, 0x11, append(body, tlvs...)...)
}

// v2Inet6 is a PROXY TCP/IPv6 header from src to dst.
func v2Inet6(src, dst netip.AddrPort) []byte {
	s, d := src.Addr().As16(), dst.Addr().As16()
	body := append(append(s[:], d[:]...), 0, 0, 0, 0)
	binary.BigEndian.PutUint16(body[32:], src.Port())
	binary.BigEndian.PutUint16(body[34:], dst.Port())
	return v2(0x21, 0x21, body...)
}

var (
	src4 = netip.MustParseAddrPort("192.0.2.7:56324")
	dst4 = netip.MustParseAddrPort("10.0.0.11:9505")
	src6 = netip.MustParseAddrPort("[2001:db8::7]:56324")
	dst6 = netip.MustParseAddrPort("[2001:db8::b]:9505")
)

const request = "GET /v1/realtime HTTP/1.1\r\n\r\n"

func TestParseValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Header
	}{
		{"v1 TCP4", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 56324 9505\r\n"), Header{Version: 1, Source: src4, Destination: dst4}},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 2001:db8::b 56324 9505\r\n"), Header{Version: 1, Source: src6, Destination: dst6}},
		{"v1 TCP6 upper case", []byte("PROXY TCP6 2001:DB8::7 2001:DB8::B 56324 9505\r\n"), Header{Version: 1, Source: src6, Destination: dst6}},
		{"v1 ports 0 and 65535", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 0 65535\r\n"),
			Header{Version: 1, Source: netip.AddrPortFrom(src4.Addr(), 0), Destination: netip.AddrPortFrom(dst4.Addr(), 65535)}},
		{"v1 UNKNOWN short", []byte("PROXY UNKNOWN\r\n"), Header{Version: 1}},
		{"v1 UNKNOWN with anything", []byte("PROXY UNKNOWN what ever\r\n"), Header{Version: 1}},
		{"v1 longest line", []byte("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), Header{Version: 1}},
		{"v2 TCP4", v2Inet(src4, dst4), Header{Version: 2, Source: src4, Destination: dst4}},
		{"v2 TCP6", v2Inet6(src6, dst6), Header{Version: 2, Source: src6, Destination: dst6}},
		{"v2 TCP4 with TLVs", v2Inet(src4, dst4, 0x04, 0, 2, 'x', 'y', 0x05, 0, 0), Header{Version: 2, Source: src4, Destination: dst4}},
		{"v2 LOCAL", v2(0x20, 0x00), Header{Version: 2, Local: true}},
		{"v2 LOCAL with an address block", v2(0x20, 0x11, make([]byte, 12)...), Header{Version: 2, Local: true}},
		{"v2 PROXY AF_UNSPEC", v2(0x21, 0x00), Header{Version: 2}},
		{"v2 PROXY AF_UNIX", v2(0x21, 0x31, make([]byte, 216)...), Header{Version: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append(append([]byte(nil), tc.in...), request...)
			h, n, err := Parse(in)
			if err != nil || h != tc.want || n != len(tc.in) {
				t.Fatalf("Parse = %+v, %d, %v; want %+v, %d", h, n, err, tc.want, len(tc.in))
			}
			// Every strict prefix is incomplete, never an error: TCP may
			// deliver a header in pieces.
			for k := 0; k < len(tc.in); k++ {
				if _, n, err := Parse(tc.in[:k]); err != ErrIncomplete || (n != 0 && n != len(tc.in)) {
					t.Fatalf("prefix of %d bytes: n %d, %v; want ErrIncomplete", k, n, err)
				}
			}
		})
	}
}

func TestParseV2ReportsLengthWhileIncomplete(t *testing.T) {
	full := v2Inet(src4, dst4, 0x04, 0, 200)
	full = append(full, make([]byte, 200)...)
	binary.BigEndian.PutUint16(full[14:], uint16(len(full)-16))
	_, n, err := Parse(full[:20])
	if err != ErrIncomplete || n != len(full) {
		t.Fatalf("Parse(20 of %d bytes) = %d, %v; want the whole length and ErrIncomplete", len(full), n, err)
	}
}

// TestParseMalformed: each rule of the specification that a header can
// break, and the error that names it.
func TestParseMalformed(t *testing.T) {
	long := "PROXY UNKNOWN " + strings.Repeat("f", MaxV1Len) + "\r\n"
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"plain HTTP", []byte(request), ErrNoHeader},
		{"TLS hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00}, ErrNoHeader},
		{"lower case", []byte("proxy TCP4 192.0.2.7 10.0.0.11 1 2\r\n"), ErrNoHeader},
		{"no space after PROXY", []byte("PROXYTCP4 192.0.2.7 10.0.0.11 1 2\r\n"), ErrNoHeader},
		{"v2 signature broken", append([]byte("\r\n\r\n\x00\r\nQUIT\r"), 0x21, 0x11, 0, 0), ErrNoHeader},
		// 2.1: the line must end within 107 bytes, with CRLF.
		{"v1 no CRLF in 107 bytes", []byte(long), ErrLineTooLong},
		{"v1 107 bytes without LF", []byte(long[:MaxV1Len]), ErrLineTooLong},
		{"v1 bare LF", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 2\n"), ErrSyntax},
		{"v1 bare LF after text", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 2\rx\n"), ErrSyntax},
		{"v1 CR inside a field", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 2\r\r\n"), ErrAddress},
		{"v1 unknown protocol", []byte("PROXY UDP4 192.0.2.7 10.0.0.11 1 2\r\n"), ErrSyntax},
		{"v1 empty protocol", []byte("PROXY \r\n"), ErrSyntax},
		{"v1 two spaces", []byte("PROXY TCP4  192.0.2.7 10.0.0.11 1 2\r\n"), ErrSyntax},
		{"v1 missing port", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1\r\n"), ErrSyntax},
		{"v1 extra field", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 2 3\r\n"), ErrSyntax},
		{"v1 trailing space", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 2 \r\n"), ErrSyntax},
		{"v1 TCP4 with IPv6", []byte("PROXY TCP4 2001:db8::7 10.0.0.11 1 2\r\n"), ErrAddress},
		{"v1 TCP6 with IPv4", []byte("PROXY TCP6 192.0.2.7 2001:db8::b 1 2\r\n"), ErrAddress},
		{"v1 IPv4 leading zero", []byte("PROXY TCP4 192.0.2.07 10.0.0.11 1 2\r\n"), ErrAddress},
		{"v1 IPv6 zone", []byte("PROXY TCP6 fe80::1%eth0 2001:db8::b 1 2\r\n"), ErrAddress},
		{"v1 host name", []byte("PROXY TCP4 example.com 10.0.0.11 1 2\r\n"), ErrAddress},
		{"v1 port leading zero", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 01 2\r\n"), ErrAddress},
		{"v1 port too big", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 65536\r\n"), ErrAddress},
		{"v1 port sign", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 +1 2\r\n"), ErrAddress},
		{"v1 port six digits", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 100000\r\n"), ErrAddress},
		// 2.2: version 2, LOCAL or PROXY, assigned families, lengths that fit.
		{"v2 version 1", v2(0x11, 0x11, make([]byte, 12)...), ErrVersion},
		{"v2 version 3", v2(0x31, 0x11, make([]byte, 12)...), ErrVersion},
		{"v2 command 2", v2(0x22, 0x11, make([]byte, 12)...), ErrCommand},
		{"v2 command 15", v2(0x2f, 0x11, make([]byte, 12)...), ErrCommand},
		{"v2 family 4", v2(0x21, 0x41, make([]byte, 12)...), ErrFamily},
		{"v2 transport 3", v2(0x21, 0x13, make([]byte, 12)...), ErrFamily},
		{"v2 IPv4 block short", v2(0x21, 0x11, make([]byte, 11)...), ErrLength},
		{"v2 IPv6 block short", v2(0x21, 0x21, make([]byte, 35)...), ErrLength},
		{"v2 UNIX block short", v2(0x21, 0x31, make([]byte, 215)...), ErrLength},
		{"v2 TLV overruns", v2Inet(src4, dst4, 0x04, 0, 3, 'x'), ErrTLV},
		{"v2 TLV truncated head", v2Inet(src4, dst4, 0x04, 0), ErrTLV},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := Parse(tc.in)
			if !errors.Is(err, tc.want) || n != 0 {
				t.Fatalf("Parse = %+v, %d, %v; want %v", h, n, err, tc.want)
			}
		})
	}
}

// TestParseFailsEarly: a stream that cannot become a valid header is
// refused before the rest of it is waited for.
func TestParseFailsEarly(t *testing.T) {
	for _, in := range [][]byte{
		[]byte("G"),
		[]byte("PROXZ"),
		[]byte("\r\n\r\n\x01"),
		v2(0x31, 0x11, make([]byte, 12)...)[:16], // version known bad at 16 bytes
	} {
		if _, _, err := Parse(in); err == nil || err == ErrIncomplete {
			t.Errorf("Parse(%q) = %v, want an error at once", in, err)
		}
	}
}

// FuzzParse checks, on arbitrary bytes in either format, that Parse never
// panics and that what it accepts is consistent: it took a whole header
// and no more, the same bytes alone parse the same, every strict prefix of
// them is merely incomplete, and a v1 line ends in CRLF within 107 bytes.
func FuzzParse(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.7 10.0.0.11 56324 9505\r\n" + request))
	f.Add([]byte("PROXY TCP6 2001:db8::7 2001:db8::b 56324 9505\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("PROXY TCP4 192.0.2.7 10.0.0.11 1 2\n"))
	f.Add(append(v2Inet(src4, dst4, 0x04, 0, 1, 'x'), request...))
	f.Add(v2Inet6(src6, dst6))
	f.Add(v2(0x20, 0x00))
	f.Add(v2(0x21, 0x31, make([]byte, 216)...))
	f.Add([]byte(request))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			if err == ErrIncomplete && n != 0 && (n <= len(b) || n > MaxV2Len) {
				t.Fatalf("incomplete with n %d of %d bytes", n, len(b))
			}
			if err != ErrIncomplete && n != 0 {
				t.Fatalf("error %v with n %d", err, n)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("n %d of %d bytes", n, len(b))
		}
		switch h.Version {
		case 1:
			if n > MaxV1Len || !bytes.HasSuffix(b[:n], []byte("\r\n")) {
				t.Fatalf("v1 header of %d bytes %q", n, b[:n])
			}
		case 2:
			if n < v2HeaderLen || int(binary.BigEndian.Uint16(b[14:16]))+v2HeaderLen != n {
				t.Fatalf("v2 header of %d bytes, length field %d", n, binary.BigEndian.Uint16(b[14:16]))
			}
		default:
			t.Fatalf("version %d", h.Version)
		}
		if h.Source.IsValid() != h.Destination.IsValid() || (h.Local && h.Source.IsValid()) {
			t.Fatalf("header %+v", h)
		}
		if h2, n2, err := Parse(b[:n]); err != nil || h2 != h || n2 != n {
			t.Fatalf("the header alone parses as %+v, %d, %v; with what follows %+v, %d", h2, n2, err, h, n)
		}
		for _, k := range []int{0, 1, n / 2, n - 1} {
			if _, _, err := Parse(b[:k]); err != ErrIncomplete {
				t.Fatalf("prefix of %d bytes of a %d-byte header: %v", k, n, err)
			}
		}
	})
}

// BenchmarkParse is the cost of a header in front of each connection.
func BenchmarkParse(b *testing.B) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"v1", []byte("PROXY TCP4 192.0.2.7 10.0.0.11 56324 9505\r\n" + request)},
		{"v2", append(v2Inet(src4, dst4), request...)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, _, err := Parse(tc.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
