package handlers

import (
	"bytes"
	"compress/flate"
	"sync"
	"sync/atomic"
	"unsafe"
)

// deflater compresses outbound data frames for permessage-deflate
// (RFC 7692) connections, once per frame however many connections write
// it.
//
// Connections negotiate no context takeover in both directions, so a
// message's compressed bytes do not depend on the messages before it on
// that connection: the bytes compressed for one subscriber serve all of
// them. A publish builds its envelope once and hands the same slice to
// every subscriber's queue (hub.go); the cache below is keyed by that
// slice's address and length, and each entry holds the slice, so its
// memory cannot be freed and reused while the key stands for it. Frames
// the write loop builds per connection in pooled buffers (batch frames of
// small envelopes, coalesceEnvelopes) never reach the cache; frames
// shorter than minSize are written as they are.
type deflater struct {
	level   int
	minSize int

	writers sync.Pool // *flate.Writer at level

	mu        sync.Mutex
	cur, prev map[deflateKey]*deflated
	curBytes  int

	// runs counts compressions, for the tests that check a publish is
	// compressed once.
	runs atomic.Int64
}

// deflateCacheBytes bounds the cache: when the frames entered since the
// last rotation add up to more, the older generation is dropped. A burst
// is written out within a generation or two; a frame looked up after its
// entry was dropped is compressed again, which costs CPU, never bytes.
const deflateCacheBytes = 4 << 20

type deflateKey struct {
	p *byte
	n int
}

type deflated struct {
	src  []byte // pins the frame's memory, so no other frame gets its key
	once sync.Once
	z    []byte // nil: compression would not make it shorter
}

func newDeflater(cfg CompressionConfig) *deflater {
	d := &deflater{level: cfg.Level, minSize: cfg.MinSize, cur: map[deflateKey]*deflated{}}
	d.writers.New = func() any {
		w, _ := flate.NewWriter(nil, d.level) // level is checked by Config.Check
		return w
	}
	return d
}

// shared returns the compressed payload of a frame shared between
// connections, compressing it on its first call; nil means write it
// uncompressed (short, or incompressible).
func (d *deflater) shared(b []byte) []byte {
	if len(b) < d.minSize {
		return nil
	}
	k := deflateKey{unsafe.SliceData(b), len(b)}
	d.mu.Lock()
	e := d.cur[k]
	if e == nil {
		if e = d.prev[k]; e == nil {
			e = &deflated{src: b}
		}
		d.cur[k] = e
		d.curBytes += len(b)
		if d.curBytes > deflateCacheBytes {
			d.prev, d.cur, d.curBytes = d.cur, make(map[deflateKey]*deflated, len(d.cur)), 0
		}
	}
	d.mu.Unlock()
	e.once.Do(func() { e.z = d.compress(b) })
	return e.z
}

// compress returns b deflated as one message of RFC 7692 §7.2.1: a sync
// flush with its final empty block's 4 bytes removed. It returns nil when
// that is not shorter than b.
func (d *deflater) compress(b []byte) []byte {
	d.runs.Add(1)
	var out bytes.Buffer
	out.Grow(len(b)/2 + 64)
	w := d.writers.Get().(*flate.Writer)
	w.Reset(&out)
	_, err := w.Write(b)
	if err == nil {
		err = w.Flush()
	}
	d.writers.Put(w)
	z := out.Bytes()
	if err != nil || !bytes.HasSuffix(z, deflateTail) || len(z)-len(deflateTail) >= len(b) {
		return nil
	}
	return z[:len(z)-len(deflateTail)]
}

var deflateTail = []byte{0, 0, 0xff, 0xff}
