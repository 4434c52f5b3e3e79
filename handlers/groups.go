package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/groups"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// group is one declared broadcast group on this gateway: its registry
// (membership and capacity) and its local members, who receive its frames
// on __group:<name> (docs/protocol.md §6.3).
type group struct {
	cfg    GroupConfig
	frame  string
	joinOn wire.Patterns
	reg    groups.Registry

	mu      sync.Mutex // serializes joins, leaves and frames of the group
	members map[*conn]groups.Role
}

func newGroups(cfgs []GroupConfig, b Backends, now func() time.Time, logger *zap.Logger) (map[string]*group, error) {
	out := make(map[string]*group, len(cfgs))
	for _, c := range cfgs {
		reg, err := b.groups(groups.Config{TTL: c.MemberTTL, Now: now})
		if err != nil {
			return out, fmt.Errorf("group %q: %w", c.Name, err)
		}
		gr := &group{cfg: c, frame: wire.GroupPrefix + c.Name, members: make(map[*conn]groups.Role), reg: reg}
		for _, p := range c.JoinOn {
			gr.joinOn = append(gr.joinOn, wire.Pattern(p))
		}
		if len(c.Meta) > 0 {
			// A backend that cannot take the meta now does not stop the
			// gateway (Redis may come back); the API's PUT /groups/meta
			// sets it again.
			ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
			err := gr.reg.SetMeta(ctx, c.Name, c.Meta)
			cancel()
			if err != nil {
				logger.Warn("setting a group's initial meta failed; the group starts without it", zap.String("group", c.Name), zap.Error(err))
			}
		}
		out[c.Name] = gr
	}
	return out, nil
}

// reservedGroupEvents are the gateway's own group frames (§4.2).
var reservedGroupEvents = map[string]bool{"members": true, "join": true, "leave": true, "close": true}

// roleOf reads the role from the identity field role_from; an absent or
// unknown value is member (documented: roles never escalate by typo).
func (gr *group) roleOf(c *conn) groups.Role {
	if gr.cfg.RoleFrom == "" {
		return groups.RoleMember
	}
	if r := groups.Role(identityField(c.identity, gr.cfg.RoleFrom)); r.Valid() {
		return r
	}
	return groups.RoleMember
}

func roleFrame(role groups.Role, count int) []byte {
	b := append([]byte(`{"role":"`), role...)
	b = append(b, `","count":`...)
	b = strconv.AppendInt(b, int64(count), 10)
	return append(b, '}')
}

func membersFrame(c groups.Counts) []byte {
	b := []byte{'['}
	add := func(role groups.Role, n int) {
		for i := 0; i < n; i++ {
			if len(b) > 1 {
				b = append(b, ',')
			}
			b = append(append(append(b, `{"role":"`...), role...), `"}`...)
		}
	}
	add(groups.RoleAdmin, c.Admin)
	add(groups.RoleMember, c.Member)
	add(groups.RoleViewer, c.Viewer)
	return append(b, ']')
}

// join adds c with role: existing members get join, the joiner gets
// members (§6.3). Joining again is a no-op. A full or closed group
// returns groups.ErrFull or groups.ErrClosed.
func (g *Gateway) groupJoin(gr *group, c *conn, role groups.Role) error {
	gr.mu.Lock()
	defer gr.mu.Unlock()
	if _, ok := gr.members[c]; ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	counts, err := gr.reg.Join(ctx, gr.cfg.Name, c.id, role, gr.cfg.MaxMembers)
	if err != nil {
		if errors.Is(err, groups.ErrFull) {
			g.events.post("group.full", map[string]any{"group": gr.cfg.Name, "connection": c.id})
		}
		return err
	}
	frame := wire.AppendEnvelope(nil, gr.frame, "join", roleFrame(role, counts.Total()), 0)
	for m := range gr.members {
		m.send(frame)
	}
	g.relaySystem(gr.frame, "join", frame)
	gr.members[c] = role
	c.send(wire.AppendEnvelope(nil, gr.frame, "members", membersFrame(counts), 0))
	g.events.post("group.join", map[string]any{"group": gr.cfg.Name, "connection": c.id, "role": role, "count": counts.Total()})
	return nil
}

// groupLeave removes c; the remaining members get leave.
func (g *Gateway) groupLeave(gr *group, c *conn) {
	gr.mu.Lock()
	defer gr.mu.Unlock()
	role, ok := gr.members[c]
	if !ok {
		return
	}
	delete(gr.members, c)
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	counts, err := gr.reg.Leave(ctx, gr.cfg.Name, c.id)
	if err != nil {
		g.logger.Warn("group leave failed; the member stops counting after member_ttl", zap.String("group", gr.cfg.Name), zap.Error(err))
		return
	}
	frame := wire.AppendEnvelope(nil, gr.frame, "leave", roleFrame(role, counts.Total()), 0)
	for m := range gr.members {
		m.send(frame)
	}
	g.relaySystem(gr.frame, "leave", frame)
	g.events.post("group.leave", map[string]any{"group": gr.cfg.Name, "connection": c.id, "role": role, "count": counts.Total()})
}

// groupClose closes the group for good: close goes to every member and
// membership is cleared; later joins are refused.
func (g *Gateway) groupClose(ctx context.Context, gr *group) error {
	gr.mu.Lock()
	defer gr.mu.Unlock()
	if err := gr.reg.CloseGroup(ctx, gr.cfg.Name); err != nil {
		return err
	}
	frame := wire.AppendEnvelope(nil, gr.frame, "close", nil, 0)
	for m := range gr.members {
		m.send(frame)
	}
	clear(gr.members)
	g.relaySystem(gr.frame, "close", frame)
	g.events.post("group.close", map[string]any{"group": gr.cfg.Name})
	return nil
}

// groupPublish sends an application event to every member, or to those
// with role; it returns how many local connections it reached. relay
// sends it to the other instances on the bus as well (the caller does
// otherwise, through the tally).
func (g *Gateway) groupPublish(gr *group, event string, data []byte, role groups.Role, relay bool) int {
	gr.mu.Lock()
	defer gr.mu.Unlock()
	frame := wire.AppendEnvelope(nil, gr.frame, event, data, 0)
	n := 0
	for m, r := range gr.members {
		if role == "" || r == role {
			if m.send(frame) {
				n++
			}
		}
	}
	if relay {
		g.relaySystemTo(gr.frame, event, frame, string(role))
	}
	return n
}

// groupsLeaveAll removes c from every group (close, or cleanup).
func (g *Gateway) groupsLeaveAll(c *conn) {
	for _, gr := range g.ext.groups {
		g.groupLeave(gr, c)
	}
}

// groupJoinOn joins c to the groups whose join_on matches t. A refused
// join denies the subscribe FORBIDDEN (reason returned).
// Joins are all or nothing: a refusal undoes the joins this subscribe made.
func (g *Gateway) groupJoinOn(c *conn, t string) string {
	var match []*group
	for _, gr := range g.ext.groups {
		if gr.joinOn.Match(t) >= 0 {
			match = append(match, gr)
		}
	}
	if len(match) == 0 {
		return ""
	}
	// Groups that can refuse go first, closed ones are refused before any
	// join, so a refusal almost never has joins to undo (and frames sent).
	sort.Slice(match, func(i, j int) bool {
		if (match[i].cfg.MaxMembers > 0) != (match[j].cfg.MaxMembers > 0) {
			return match[i].cfg.MaxMembers > 0
		}
		return match[i].cfg.Name < match[j].cfg.Name
	})
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	for _, gr := range match {
		if st, err := gr.reg.State(ctx, gr.cfg.Name); err == nil && st.Closed {
			return ReasonForbidden
		}
	}
	var joined []*group
	for _, gr := range match {
		gr.mu.Lock()
		_, already := gr.members[c]
		gr.mu.Unlock()
		if err := g.groupJoin(gr, c, gr.roleOf(c)); err != nil {
			for _, j := range joined {
				g.groupLeave(j, c)
			}
			return ReasonForbidden
		}
		if !already {
			joined = append(joined, gr)
		}
	}
	return ""
}

// groupLeaveOn leaves the groups joined through t's join_on.
func (g *Gateway) groupLeaveOn(c *conn, t string) {
	for _, gr := range g.ext.groups {
		if gr.joinOn.Match(t) >= 0 {
			g.groupLeave(gr, c)
		}
	}
}

// apiGroups serves the group routes of the HTTP API.
func (g *Gateway) apiGroups(w http.ResponseWriter, r *http.Request, s *settings) {
	sub := r.URL.Path[len(s.APIPath):]
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	if sub == "/groups" {
		gr := g.ext.groups[r.URL.Query().Get("name")]
		if gr == nil {
			writeErr(w, apiErr(http.StatusNotFound, "UNKNOWN_GROUP", "no group named "+strconv.Quote(r.URL.Query().Get("name"))))
			return
		}
		st, err := gr.reg.State(ctx, gr.cfg.Name)
		if err != nil {
			writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "reading the group failed"))
			return
		}
		meta := st.Meta
		if len(meta) == 0 {
			meta = json.RawMessage("{}")
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"name": gr.cfg.Name, "count": st.Counts.Total(), "closed": st.Closed, "meta": meta,
			"max_members": gr.cfg.MaxMembers,
			"roles":       map[string]int{"member": st.Counts.Member, "admin": st.Counts.Admin, "viewer": st.Counts.Viewer},
		})
		return
	}
	body, e := readBody(r)
	if e != nil {
		writeErr(w, e)
		return
	}
	var req struct {
		Name       string          `json:"name"`
		Meta       json.RawMessage `json:"meta"`
		Event      string          `json:"event"`
		Data       json.RawMessage `json:"data"`
		Role       string          `json:"role"`
		Connection string          `json:"connection"`
		User       string          `json:"user"`
	}
	if e := decodeStrict(body, &req); e != nil {
		writeErr(w, e)
		return
	}
	gr := g.ext.groups[req.Name]
	if gr == nil {
		writeErr(w, apiErr(http.StatusNotFound, "UNKNOWN_GROUP", "no group named "+strconv.Quote(req.Name)))
		return
	}
	role := groups.Role(req.Role)
	if req.Role != "" && !role.Valid() {
		writeErr(w, apiErr(http.StatusBadRequest, "INVALID_ROLE", "role must be member, admin or viewer"))
		return
	}
	switch sub {
	case "/groups/meta":
		meta, ok := compactObject(req.Meta)
		if !ok {
			writeErr(w, apiErr(http.StatusBadRequest, "BAD_JSON", "meta must be a JSON object"))
			return
		}
		if err := gr.reg.SetMeta(ctx, gr.cfg.Name, meta); err != nil {
			writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "writing the group failed"))
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	case "/groups/publish":
		if !wire.ValidEvent(req.Event) || reservedGroupEvents[req.Event] {
			writeErr(w, apiErr(http.StatusBadRequest, "INVALID_EVENT", "event must be a valid event name other than members, join, leave and close"))
			return
		}
		var data []byte
		if len(req.Data) > 0 {
			var ok bool
			if data, ok = compactJSON(req.Data); !ok {
				writeErr(w, apiErr(http.StatusBadRequest, "BAD_JSON", "data is not valid json"))
				return
			}
		}
		n := g.groupPublish(gr, req.Event, data, role, g.tally == nil)
		m := bus.Message{Topic: gr.frame, Event: req.Event, Data: data}
		if role != "" {
			m.User = "role:" + string(role) // as relaySystemTo
		}
		writeJSON(w, http.StatusOK, g.deliverElsewhere(r, m, n, nil))
	case "/groups/close":
		if err := g.groupClose(ctx, gr); err != nil {
			writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "closing the group failed"))
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	case "/groups/join", "/groups/leave":
		t := target{User: req.User, Connection: req.Connection}
		if e := t.validate(); e != nil {
			writeErr(w, e)
			return
		}
		joined, refused := 0, ""
		for _, c := range g.targets(t) {
			if sub == "/groups/leave" {
				g.groupLeave(gr, c)
				joined++
				continue
			}
			rl := role
			if rl == "" {
				rl = gr.roleOf(c)
			}
			switch err := g.groupJoin(gr, c, rl); {
			case errors.Is(err, groups.ErrFull):
				refused = "GROUP_FULL"
			case errors.Is(err, groups.ErrClosed):
				refused = "GROUP_CLOSED"
			case err != nil:
				refused = "BACKEND_UNAVAILABLE"
			default:
				joined++
			}
		}
		if refused != "" && joined == 0 {
			writeErr(w, apiErr(http.StatusConflict, refused, "the group refused the join"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"connections": joined})
	default:
		writeErr(w, apiErr(http.StatusNotFound, "NOT_FOUND", "no such api route: "+sub))
	}
}

// compactJSON validates and compacts raw JSON.
func compactJSON(raw []byte) ([]byte, bool) {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return nil, false
	}
	return buf.Bytes(), true
}
