package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync"
)

// eventsQueue bounds the events waiting for the events hook; beyond it
// events are dropped and counted (the hook is best effort, never a brake).
const eventsQueue = 1024

// eventPoster posts group and presence events to the events hook, in
// order, from one worker that runs only while events wait.
type eventPoster struct {
	g       *Gateway
	mu      sync.Mutex
	queue   [][]byte
	running bool
}

// post queues an event; without an events hook it does nothing.
func (p *eventPoster) post(typ string, fields map[string]any) {
	s := p.g.settings()
	if s.EventsHook == nil {
		return
	}
	fields["type"] = typ
	fields["at"] = p.g.now().UnixMilli()
	b, err := json.Marshal(fields)
	if err != nil {
		return
	}
	p.mu.Lock()
	if len(p.queue) >= eventsQueue {
		p.mu.Unlock()
		metricHookErrors.WithLabelValues(p.g.m.name, "events", "busy").Inc()
		return
	}
	p.queue = append(p.queue, b)
	start := !p.running
	p.running = true
	p.mu.Unlock()
	if start {
		p.g.wg.Add(1)
		go p.run()
	}
}

func (p *eventPoster) run() {
	defer p.g.wg.Done()
	defer func() {
		if r := recover(); r != nil {
			p.g.logPanic("events poster", r)
			p.mu.Lock()
			p.queue, p.running = nil, false
			p.mu.Unlock()
		}
	}()
	for {
		p.mu.Lock()
		if len(p.queue) == 0 || p.g.posting.Err() != nil {
			p.queue, p.running = nil, false
			p.mu.Unlock()
			return
		}
		b := p.queue[0]
		p.queue = p.queue[1:]
		p.mu.Unlock()
		s := p.g.settings()
		h := s.EventsHook
		if h == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(p.g.posting, h.Timeout)
		req, err := http.NewRequest(http.MethodPost, h.URL, bytes.NewReader(b))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
			_, _, _, _ = hookCall{p.g, "events", h}.do(ctx, req)
		}
		cancel()
	}
}
