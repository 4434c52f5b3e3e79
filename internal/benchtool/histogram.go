package benchtool

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram layout: values below 64 ns get a bucket each; above, every
// power of two is split into 64 linear sub-buckets, so a reported quantile
// is within 1.6 % of the true value. 42 octaves reach 2^47 ns (39 hours).
const (
	histSubBits  = 6
	histSub      = 1 << histSubBits
	histBuckets  = histSub * 42
	histShards   = 16
	histMaxValue = 1<<47 - 1
)

// histogram records latencies from many reader goroutines. Each reader
// writes to the shard of its connection index, so two cores rarely touch
// the same counters; Snapshot merges the shards.
type histogram struct {
	shards [histShards]histShard
}

type histShard struct {
	counts [histBuckets]atomic.Uint64
	max    atomic.Int64
	_      [64]byte // keep the next shard's max off this cache line
}

func bucketOf(v int64) int {
	if v < histSub {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	if v > histMaxValue {
		v = histMaxValue
	}
	e := bits.Len64(uint64(v)) - histSubBits - 1
	return (e+1)*histSub + int(v>>e) - histSub
}

// bucketValue is the midpoint of bucket i.
func bucketValue(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	e := i/histSub - 1
	m := int64(i%histSub + histSub)
	return m<<e + (int64(1)<<e)/2
}

// record adds one latency in nanoseconds from the reader of connection id.
func (h *histogram) record(id int, v int64) {
	s := &h.shards[id%histShards]
	s.counts[bucketOf(v)].Add(1)
	for {
		m := s.max.Load()
		if v <= m || s.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// latencySummary is what reports show of a histogram.
type latencySummary struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func (h *histogram) summary() latencySummary {
	var merged [histBuckets]uint64
	var total uint64
	var maxV int64
	for i := range h.shards {
		s := &h.shards[i]
		for j := range s.counts {
			c := s.counts[j].Load()
			merged[j] += c
			total += c
		}
		maxV = max(maxV, s.max.Load())
	}
	out := latencySummary{Count: total, Max: ms(maxV)}
	if total == 0 {
		return out
	}
	q := func(p float64) float64 {
		rank := uint64(p*float64(total-1)) + 1
		var seen uint64
		for j, c := range merged {
			seen += c
			if seen >= rank {
				return ms(min(bucketValue(j), maxV))
			}
		}
		return ms(maxV)
	}
	out.P50, out.P90, out.P99, out.P999 = q(0.50), q(0.90), q(0.99), q(0.999)
	return out
}

func ms(ns int64) float64 { return float64(ns) / float64(time.Millisecond) }
