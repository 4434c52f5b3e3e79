package handlers

import (
	"bytes"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/klauspost/compress/flate"
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
//
// The compressor is github.com/klauspost/compress/flate (already in
// Caddy's module graph): BenchmarkDeflate2KiB at level 1 takes 13 µs per
// 2 KiB event with it against 23 µs with compress/flate, for 0.17 of the
// size against 0.19.
type deflater struct {
	level   int
	minSize int

	writers sync.Pool // *flate.Writer at level

	// gen is the cache's current generation. Every subscriber's write loop
	// looks a frame up at about the same moment, so lookups take no lock
	// (sync.Map) and the waiters for a frame being compressed wake at once
	// (a closed channel), where a mutex would hand itself from goroutine
	// to goroutine.
	gen atomic.Pointer[deflateGen]
	mu  sync.Mutex // serialises rotations

	// runs counts compressions, for the tests that check a publish is
	// compressed once.
	runs atomic.Int64
}

// deflateGen is one generation of the cache: the frames entered since the
// last rotation, and the generation before it, still looked up.
type deflateGen struct {
	m     sync.Map // deflateKey -> *deflated
	bytes atomic.Int64
	prev  atomic.Pointer[deflateGen]
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
	src   []byte        // pins the frame's memory, so no other frame gets its key
	ready chan struct{} // closed once z is set
	done  atomic.Bool   // z is set: no need to look at ready
	z     []byte        // nil: compression would not make it shorter
}

func newDeflater(cfg CompressionConfig) *deflater {
	d := &deflater{level: cfg.Level, minSize: cfg.MinSize}
	d.gen.Store(new(deflateGen))
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
	g := d.gen.Load()
	v, ok := g.m.Load(k)
	if !ok {
		if p := g.prev.Load(); p != nil {
			v, ok = p.m.Load(k)
		}
	}
	if !ok {
		e := &deflated{src: b, ready: make(chan struct{})}
		if v, ok = g.m.LoadOrStore(k, e); !ok {
			if g.bytes.Add(int64(len(b))) > deflateCacheBytes {
				d.rotate(g)
			}
			e.z = d.compress(b)
			e.done.Store(true)
			close(e.ready)
			return e.z
		}
	}
	e := v.(*deflated)
	if !e.done.Load() {
		<-e.ready
	}
	return e.z
}

// rotate starts a new generation after g, which becomes the previous one;
// the generation before g is dropped.
func (d *deflater) rotate(g *deflateGen) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen.Load() != g {
		return // rotated already
	}
	g.prev.Store(nil)
	next := new(deflateGen)
	next.prev.Store(g)
	d.gen.Store(next)
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
