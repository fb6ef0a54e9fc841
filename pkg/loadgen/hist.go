package loadgen

import (
	"math/bits"
	"time"
)

// subBits sets the histogram's precision: 2^subBits buckets per power of
// two, so a bucket is at most 1/32 (about 3%) wide relative to its values.
const subBits = 5

// histBuckets covers microsecond values up to 2^40 (about 12 days).
const histBuckets = (40 - subBits + 1) << subBits

// Histogram counts durations in log-linear microsecond buckets, so a run
// with millions of deliveries costs a fixed 9 KiB instead of a sample each.
// The zero value is ready to use; it is not safe for concurrent use.
type Histogram struct {
	// Counts are the samples per bucket.
	Counts [histBuckets]uint64
	// N is the number of samples.
	N uint64
	// Max is the largest sample, exactly.
	Max time.Duration
}

func bucketOf(us uint64) int {
	if us < 1<<subBits {
		return int(us)
	}
	k := bits.Len64(us) - 1
	b := (k-subBits+1)<<subBits + int(us>>(k-subBits)) - 1<<subBits
	return min(b, histBuckets-1)
}

// bucketMid is the middle of bucket b in microseconds.
func bucketMid(b int) float64 {
	if b < 1<<subBits {
		return float64(b)
	}
	k := b>>subBits + subBits - 1
	sub := b & (1<<subBits - 1)
	lo := uint64(sub+1<<subBits) << (k - subBits)
	width := uint64(1) << (k - subBits)
	return float64(lo) + float64(width)/2
}

// Record adds one duration; negative ones (clock steps) count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.Counts[bucketOf(uint64(d/time.Microsecond))]++
	h.N++
	if d > h.Max {
		h.Max = d
	}
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.N += o.N
	h.Max = max(h.Max, o.Max)
}

// Quantile returns the value below which fraction q of the samples lie,
// to the histogram's precision (never above Max).
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.N == 0 {
		return 0
	}
	rank := uint64(q*float64(h.N) + 0.5)
	rank = min(max(rank, 1), h.N)
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			d := time.Duration(bucketMid(i) * float64(time.Microsecond))
			return min(d, h.Max)
		}
	}
	return h.Max
}

// sparse is a histogram as JSON: only the non-empty buckets, so a worker's
// result line stays small.
type sparse struct {
	Buckets [][2]uint64 `json:"b"`
	N       uint64      `json:"n"`
	Max     int64       `json:"max"`
}

func (h *Histogram) sparse() sparse {
	s := sparse{N: h.N, Max: int64(h.Max)}
	for i, c := range h.Counts {
		if c != 0 {
			s.Buckets = append(s.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return s
}

func (s *sparse) histogram() *Histogram {
	h := &Histogram{N: s.N, Max: time.Duration(s.Max)}
	for _, b := range s.Buckets {
		if b[0] < histBuckets {
			h.Counts[b[0]] += b[1]
		}
	}
	return h
}

// Percentiles is the summary of a histogram in milliseconds: the sample
// count, the 50th, 90th and 99th percentiles and the maximum.
type Percentiles struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Percentiles summarises h.
func (h *Histogram) Percentiles() Percentiles {
	return Percentiles{Count: h.N, P50: ms(h.Quantile(.5)), P90: ms(h.Quantile(.9)), P99: ms(h.Quantile(.99)), Max: ms(h.Max)}
}
