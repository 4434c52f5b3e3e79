package handlers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"
)

// The dashboard: a read-only page under DashboardPath, its assets
// (embedded, uPlot vendored), and three JSON routes it reads:
//
//	GET  <path>/                 the page (a login form when a key is wanted)
//	POST <path>/login            key=<api key>: sets the session cookie
//	GET  <path>/assets/<file>    the page's scripts and styles
//	GET  <path>/events           text/event-stream of DashboardView, every 2 s
//	GET  <path>/snapshot         one DashboardView
//	GET  <path>/topic?topic=T    a topic's subscribers, presence and last events
//
// Nothing under the path changes the gateway's state, so a leaked session
// lets its holder look, never act.

//go:embed dashboard
var dashboardEmbed embed.FS

var dashboardFiles = func() fs.FS {
	sub, err := fs.Sub(dashboardEmbed, "dashboard")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}()

// DashboardAuth is who may open the dashboard.
type DashboardAuth string

// The dashboard's access policies.
const (
	// DashboardAuthKey asks for the API key: as a bearer header, or once
	// (the login form or ?key=) for a session cookie. Without a key only
	// loopback callers are served, as by the API.
	DashboardAuthKey DashboardAuth = "key"
	// DashboardAuthExternal serves whoever the handlers in front let
	// through, such as basic_auth or forward_auth.
	DashboardAuthExternal DashboardAuth = "external"
)

// ParseDashboardAuth reads a dashboard auth policy: key or external.
func ParseDashboardAuth(s string) (DashboardAuth, error) {
	return parseEnum("dashboard auth", s, DashboardAuthKey, DashboardAuthExternal)
}

// checkDashboard checks the dashboard's options against the other paths.
func (c Config) checkDashboard() error {
	p := NormalizeAPIPath(c.DashboardPath)
	if err := CheckPath("dashboard path", p); err != nil {
		return err
	}
	if err := checkEnum(c.DashboardAuth, ParseDashboardAuth); err != nil {
		return err
	}
	overlap := func(a, b string) bool { return pathUnder(a, b) || pathUnder(b, a) }
	if p == "/" || overlap(c.Path, p) {
		return fmt.Errorf("dashboard path %q overlaps the websocket path %q", c.DashboardPath, c.Path)
	}
	if c.APIPath != "" && overlap(NormalizeAPIPath(c.APIPath), p) {
		return fmt.Errorf("dashboard path %q overlaps the api path %q", c.DashboardPath, c.APIPath)
	}
	if c.AuthPath != "" && c.AuthPath != AuthPathOff && pathUnder(c.AuthPath, p) {
		return fmt.Errorf("auth_path %q lies under the dashboard path %q", c.AuthPath, c.DashboardPath)
	}
	return nil
}

// dashboardCookie is the session cookie's name; its value is
// dashboardToken, never the key itself.
const dashboardCookie = "realtime_dashboard"

// dashboardToken is the session cookie's value for key: an HMAC, so the
// cookie does not carry the key and a new key ends every session.
func dashboardToken(key, path string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte("caddy-realtime dashboard session\x00" + path))
	return hex.EncodeToString(m.Sum(nil))
}

func (g *Gateway) serveDashboard(w http.ResponseWriter, r *http.Request, s *settings) {
	sub := strings.TrimPrefix(r.URL.Path, s.DashboardPath)
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if sub == "/login" {
		g.dashboardLogin(w, r, s)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		writeErr(w, apiErr(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", r.Method+" not allowed; the dashboard is read-only"))
		return
	}
	switch {
	case sub == "":
		// Relative asset and route URLs resolve against the slash.
		u := s.DashboardPath + "/"
		if r.URL.RawQuery != "" {
			u += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, u, http.StatusMovedPermanently)
		return
	case strings.HasPrefix(sub, "/assets/"):
		// Static, and the login page needs them: served to anyone.
		name := strings.TrimPrefix(sub, "/")
		if !fs.ValidPath(name) {
			writeErr(w, apiErr(http.StatusNotFound, "NOT_FOUND", "no such dashboard file"))
			return
		}
		h.Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, dashboardFiles, name)
		return
	}
	page := sub == "/"
	if key := r.URL.Query().Get("key"); page && key != "" && s.DashboardAuth == DashboardAuthKey && s.APIKey != "" {
		// A link with ?key= logs in once; the redirect takes the key out
		// of the address bar and the history.
		if subtle.ConstantTimeCompare([]byte(key), []byte(s.APIKey)) != 1 {
			g.dashboardLoginPage(w, http.StatusForbidden, "wrong key")
			return
		}
		setDashboardCookie(w, r, s)
		http.Redirect(w, r, s.DashboardPath+"/", http.StatusSeeOther)
		return
	}
	if e := s.dashboardAccess(r); e != nil {
		if page && e.Status == http.StatusUnauthorized {
			g.dashboardLoginPage(w, e.Status, "")
			return
		}
		writeErr(w, e)
		return
	}
	switch {
	case page:
		writeDashboardFile(w, "index.html", http.StatusOK)
	case sub == "/events":
		g.dashboardEvents(w, r)
	case sub == "/snapshot":
		ctx, cancel := context.WithTimeout(r.Context(), dashInterval)
		defer cancel()
		writeJSON(w, http.StatusOK, g.dashboardView(ctx, time.Second, true))
	case sub == "/topic":
		g.dashboardTopic(w, r, s)
	default:
		writeErr(w, apiErr(http.StatusNotFound, "NOT_FOUND", "no such dashboard route: "+sub))
	}
}

// dashboardAccess decides a request under the dashboard path: nil to
// serve it, else the error to answer.
func (s *settings) dashboardAccess(r *http.Request) *APIError {
	if s.DashboardAuth == DashboardAuthExternal {
		return nil
	}
	// A Basic header is basic_auth's, in front: the session cookie still
	// decides.
	if auth := r.Header.Get("Authorization"); s.APIKey == "" || (len(auth) >= 7 && strings.EqualFold(auth[:7], "Bearer ")) {
		return s.checkKey(r)
	}
	if c, err := r.Cookie(dashboardCookie); err == nil {
		if subtle.ConstantTimeCompare([]byte(c.Value), []byte(dashboardToken(s.APIKey, s.DashboardPath))) == 1 {
			return nil
		}
	}
	return apiErr(http.StatusUnauthorized, "UNAUTHORIZED", "the dashboard wants the api key: log in at "+s.DashboardPath+"/ or send it as a bearer key")
}

// dashboardLogin takes the key from the login form.
func (g *Gateway) dashboardLogin(w http.ResponseWriter, r *http.Request, s *settings) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeErr(w, apiErr(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "log in with a POST of key=<api key>"))
		return
	}
	if s.DashboardAuth != DashboardAuthKey || s.APIKey == "" {
		http.Redirect(w, r, s.DashboardPath+"/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("key")), []byte(s.APIKey)) != 1 {
		g.dashboardLoginPage(w, http.StatusForbidden, "wrong key")
		return
	}
	setDashboardCookie(w, r, s)
	http.Redirect(w, r, s.DashboardPath+"/", http.StatusSeeOther)
}

func setDashboardCookie(w http.ResponseWriter, r *http.Request, s *settings) {
	http.SetCookie(w, &http.Cookie{
		Name: dashboardCookie, Value: dashboardToken(s.APIKey, s.DashboardPath), Path: s.DashboardPath + "/",
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
}

func (g *Gateway) dashboardLoginPage(w http.ResponseWriter, status int, msg string) {
	b, _ := fs.ReadFile(dashboardFiles, "login.html")
	note := ""
	if msg != "" {
		note = `<p class="error">` + msg + `</p>`
	}
	b = []byte(strings.Replace(string(b), "<!--note-->", note, 1))
	writeDashboardBytes(w, b, status)
}

func writeDashboardFile(w http.ResponseWriter, name string, status int) {
	b, err := fs.ReadFile(dashboardFiles, name)
	if err != nil {
		writeErr(w, apiErr(http.StatusNotFound, "NOT_FOUND", "no such dashboard file"))
		return
	}
	writeDashboardBytes(w, b, status)
}

func writeDashboardBytes(w http.ResponseWriter, b []byte, status int) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Everything is served from here: no CDN, no inline script.
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// dashboardEvents streams a DashboardView at once and then every sample
// (dashInterval), until the viewer leaves or the gateway closes. Views a
// slow viewer has not read are replaced by newer ones, never queued.
func (g *Gateway) dashboardEvents(w http.ResponseWriter, r *http.Request) {
	ch := make(chan []byte, 1)
	if !g.dash.watch(ch) {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "TOO_MANY_VIEWERS", fmt.Sprintf("at most %d dashboard streams per instance", dashMaxViewers)))
		return
	}
	defer g.dash.unwatch(ch)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(b []byte) bool {
		// A viewer that stopped reading is dropped, not waited for.
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), dashInterval)
	first, err := json.Marshal(g.dashboardView(ctx, time.Second, true))
	cancel()
	if err != nil || !send(first) {
		return
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-g.ctx.Done():
			return
		case b := <-ch:
			if !send(b) {
				return
			}
		case <-keep.C:
			// A comment line keeps proxies from closing an idle stream.
			if !send([]byte("")) {
				return
			}
		}
	}
}

// dashboardTopicEvents is how many of a topic's last events the topic
// view shows.
const dashboardTopicEvents = 20

// dashboardMaxMembers bounds the presence list of the topic view.
const dashboardMaxMembers = 200

// dashboardTopic answers a topic's view: its subscribers here, its
// presence (the API's /presence read) and its buffered events (the
// API's /replay read), the newest first.
func (g *Gateway) dashboardTopic(w http.ResponseWriter, r *http.Request, s *settings) {
	t := r.URL.Query().Get("topic")
	if !s.checkQueryTopic(w, t) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	type member struct {
		Key  string   `json:"key"`
		Data rawOrNil `json:"data"`
	}
	type presenceView struct {
		Count   int      `json:"count"`
		Members []member `json:"members"`
		Error   string   `json:"error,omitempty"`
	}
	type event struct {
		Seq   uint64   `json:"seq"`
		Event string   `json:"event"`
		Data  rawOrNil `json:"data"`
	}
	type replayView struct {
		Head      uint64  `json:"head"`
		Buffered  int     `json:"buffered"`
		Size      int     `json:"size"`
		Truncated bool    `json:"truncated"`
		Events    []event `json:"events"`
		Error     string  `json:"error,omitempty"`
	}
	out := struct {
		Topic       string        `json:"topic"`
		Subscribers int           `json:"subscribers"`
		Head        uint64        `json:"head"`
		Presence    *presenceView `json:"presence"`
		Replay      *replayView   `json:"replay"`
	}{Topic: t, Subscribers: g.hub.subscribers(t), Head: g.hub.head(t)}
	if rule := g.presenceFor(t); rule != nil {
		pv := &presenceView{Members: []member{}}
		members, err := rule.tracker.List(ctx, t)
		if err != nil {
			pv.Error = "reading presence failed"
		}
		pv.Count = len(members)
		for i, m := range members {
			if i == dashboardMaxMembers {
				break
			}
			pv.Members = append(pv.Members, member{m.Key, rawOrNil(m.Data)})
		}
		out.Presence = pv
	}
	if rule := g.replayFor(t); rule != nil {
		rv := &replayView{Size: rule.cfg.Size, Events: []event{}}
		rng, err := rule.store.Since(ctx, t, 0)
		if err != nil {
			rv.Error = "reading the replay store failed"
		}
		rv.Head, rv.Buffered, rv.Truncated = rng.Head, len(rng.Entries), rng.Truncated
		out.Head = rng.Head
		for i := len(rng.Entries) - 1; i >= 0 && len(rv.Events) < dashboardTopicEvents; i-- {
			e := rng.Entries[i]
			rv.Events = append(rv.Events, event{e.Seq, e.Event, rawOrNil(e.Data)})
		}
		out.Replay = rv
	}
	writeJSON(w, http.StatusOK, out)
}
