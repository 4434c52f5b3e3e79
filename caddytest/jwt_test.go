package caddytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// Signed tokens at the upgrade: the jwt block of the directive, against a
// real Caddy (docs/hooks.md, "Tokens").

const jwtSecret = "caddytest-secret-0123456789abcdef"

func signJWT(t testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// claimsFor are the claims of a valid token of user, valid for ttl.
func claimsFor(user string, ttl time.Duration, extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": user, "exp": time.Now().Add(ttl).Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

func hs256(t testing.TB, user string, extra map[string]any) string {
	return signJWT(t, jwt.SigningMethodHS256, []byte(jwtSecret), claimsFor(user, time.Hour, extra), "")
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// writePEM writes pub as a PKIX PEM file in dir and returns its path.
func writePEM(t testing.TB, dir string, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// userOfSubscribe returns the identity the subscribe hook was last told.
func lastSubscribeUser(t testing.TB, app *appHooks) string {
	t.Helper()
	calls := app.callsTo("/subscribe")
	if len(calls) == 0 {
		t.Fatal("the subscribe hook was not called")
	}
	return string(decodeSub(t, calls[len(calls)-1]).User)
}

// HS256 from the env placeholder and ES256 from a PEM file, each from a
// header, a cookie and the query, make the identity: user_key from sub,
// the identity claims after it.
func TestJWTSourcesMakeTheIdentity(t *testing.T) {
	t.Setenv("RT_TEST_JWT_SECRET", jwtSecret)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyFile := writePEM(t, t.TempDir(), &ec.PublicKey)
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { writeJSONAnswer(w, http.StatusOK, `{}`) })
	in := startCaddy(t, `
	realtime {
		jwt {
			secret {env.RT_TEST_JWT_SECRET}
			public_key `+keyFile+`
			issuer https://idp.test/
			audience app
			from header Authorization
			from cookie rt
			from query token
			identity_claims name avatar
		}
		subscribe_hook `+app.url("/subscribe")+`
		shutdown_spread 0
	}`)
	extra := map[string]any{"iss": "https://idp.test/", "aud": "app", "name": "Ann", "secret_stuff": "x"}
	tokens := map[string]string{
		"HS256": hs256(t, "ann", extra),
		"ES256": signJWT(t, jwt.SigningMethodES256, ec, claimsFor("ann", time.Hour, extra), ""),
	}
	for alg, tok := range tokens {
		for _, src := range []string{"header", "cookie", "query"} {
			o := dialOpts{origin: in.origin()}
			switch src {
			case "header":
				o.header = bearer(tok)
			case "cookie":
				o.header = http.Header{"Cookie": {"rt=" + tok}}
			case "query":
				o.path = "/ws?token=" + tok
			}
			c := dialWith(t, in, o)
			c.welcome()
			c.send(`{"type":"subscribe","topic":"t","ref":1}`)
			c.expect(`{"type":"subscribed","topic":"t","ref":1}`)
			if got := lastSubscribeUser(t, app); got != `{"id":"ann","name":"Ann"}` {
				t.Errorf("%s from %s: identity %s", alg, src, got)
			}
			c.c.CloseNow()
		}
	}
	// No token and no auth hook: 401.
	if st, _ := dialStatus(t, in, "/ws", nil); st != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", st)
	}
}

// Every bad token is refused with 401 and counted by reason; none
// reaches the log.
func TestJWTRefusals(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	dir := t.TempDir()
	keyFile := writePEM(t, dir, &rk.PublicKey)
	pemBytes, _ := os.ReadFile(keyFile)
	in := startCaddy(t, `
	metrics
	realtime {
		jwt {
			public_key `+keyFile+`
			issuer https://idp.test/
			audience app
			topics_claim topics
			from header Authorization
			from query access_token
		}
		shutdown_spread 0
	}`)
	ok := map[string]any{"iss": "https://idp.test/", "aud": "app"}
	rs := func(extra map[string]any) string {
		c := claimsFor("bob", time.Hour, ok)
		for k, v := range extra {
			c[k] = v
		}
		return signJWT(t, jwt.SigningMethodRS256, rk, c, "")
	}
	if st, _ := dialStatus(t, in, "/ws", bearer(rs(nil))); st != http.StatusSwitchingProtocols {
		t.Fatalf("a good RS256 token: %d", st)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	none := signJWT(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsFor("bob", time.Hour, ok), "")
	cases := []struct {
		name, tok, reason string
	}{
		{"alg none", none, "algorithm"},
		{"HS256 with the public key as secret", signJWT(t, jwt.SigningMethodHS256, pemBytes, claimsFor("bob", time.Hour, ok), ""), "algorithm"},
		{"other key", signJWT(t, jwt.SigningMethodRS256, other, claimsFor("bob", time.Hour, ok), ""), "signature"},
		{"expired", rs(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()}), "expired"},
		{"nbf", rs(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()}), "not_yet_valid"},
		{"issuer", rs(map[string]any{"iss": "https://evil/"}), "issuer"},
		{"audience", rs(map[string]any{"aud": "other"}), "audience"},
		{"malformed", "not.a.jwt", "malformed"},
		{"8 KiB", strings.Repeat("A", 8<<10), "too_large"},
		{"topics string", rs(map[string]any{"topics": "chat:*"}), "claims"},
		{"topics objects", rs(map[string]any{"topics": []any{map[string]any{"a": 1}}}), "claims"},
	}
	for _, tc := range cases {
		if st, _ := dialStatus(t, in, "/ws", bearer(tc.tok)); st != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", tc.name, st)
		}
	}
	// 1 MiB does not fit in a header: the query carries it (Go's server
	// may refuse the over-long request line itself).
	st := rawUpgrade(t, in, "/ws?access_token="+strings.Repeat("A", 1<<20))
	if st != http.StatusUnauthorized && st != http.StatusRequestHeaderFieldsTooLarge && st != http.StatusRequestURITooLong {
		t.Errorf("1 MiB token: %d", st)
	}
	m := metricsText(t, in)
	for _, tc := range cases {
		if metricSum(m, "caddy_realtime_token_rejected_total", `reason="`+tc.reason+`"`) < 1 {
			t.Errorf("%s: no token_rejected_total{reason=%q}", tc.name, tc.reason)
		}
	}
	logs := in.logs.String()
	for _, tc := range cases {
		if len(tc.tok) > 30 && strings.Contains(logs, tc.tok[len(tc.tok)-30:]) {
			t.Errorf("%s: the token is in the log", tc.name)
		}
	}
	if !strings.Contains(logs, "token refused") {
		t.Error("refusals are not logged")
	}
}

// The topics claim authorizes what it covers locally; without a subscribe
// hook it denies the rest, with one the hook decides the rest.
func TestJWTTopicsClaim(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		writeJSONAnswer(w, http.StatusOK, `{"extra":true,"nope":false}`)
	})
	site := func(hook string) string {
		return `
	realtime {
		api /_realtime
		jwt {
			secret ` + jwtSecret + `
			topics_claim topics
		}
		public news
		` + hook + `
		shutdown_spread 0
	}`
	}
	tok := hs256(t, "bob", map[string]any{"topics": []string{"chat:*", "room:1"}})

	in := startCaddy(t, site(""))
	c := dialWith(t, in, dialOpts{origin: in.origin(), header: bearer(tok)})
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["chat:a/b","room:1","room:2","news"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"chat:a/b","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"room:1","ref":1}`)
	c.expect(`{"type":"subscribe-denied","topic":"room:2","ref":1,"reason":"FORBIDDEN"}`)
	c.expect(`{"type":"subscribed","topic":"news","ref":1}`)
	// A replay request of a denied topic is denied too.
	c.send(`{"type":"replay","topic":"room:2","since":0,"reqId":1}`)
	if f := c.next(2 * time.Second); !strings.Contains(f, `"denied":true`) {
		t.Fatalf("replay of a denied topic: %s", f)
	}
	publish(t, in, `{"topic":"room:2","event":"e","data":1}`)
	publish(t, in, `{"topic":"room:1","event":"e","data":2}`)
	c.expect(`{"topic":"room:1","event":"e","data":2,"seq":1}`)

	in2 := startCaddy(t, site(`subscribe_hook `+app.url("/subscribe")))
	c2 := dialWith(t, in2, dialOpts{origin: in2.origin(), header: bearer(tok)})
	c2.welcome()
	c2.send(`{"type":"subscribe-batch","topics":["chat:1","extra","nope"],"ref":2}`)
	c2.expect(`{"type":"subscribed","topic":"chat:1","ref":2}`)
	c2.expect(`{"type":"subscribed","topic":"extra","ref":2}`)
	c2.expect(`{"type":"subscribe-denied","topic":"nope","ref":2,"reason":"FORBIDDEN"}`)
	calls := app.callsTo("/subscribe")
	if len(calls) != 1 || strings.Join(decodeSub(t, calls[0]).Topics, ",") != "extra,nope" {
		t.Fatalf("the hook was asked %d times, last about %v; want once, about extra,nope", len(calls), calls)
	}
	// Covered topics alone never call the hook.
	c2.send(`{"type":"subscribe","topic":"room:1","ref":3}`)
	c2.expect(`{"type":"subscribed","topic":"room:1","ref":3}`)
	if n := len(app.callsTo("/subscribe")); n != 1 {
		t.Fatalf("a covered topic called the hook (%d calls)", n)
	}
}

// Token first, the auth hook when there is none: a valid token never
// calls the hook, an invalid one is refused without asking it.
func TestJWTWithAuthHook(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		if c.Path == "/auth" {
			if c.Header.Get("Cookie") == "session=ok" {
				w.Header().Add("Set-Cookie", "refreshed=1; Path=/")
				writeJSONAnswer(w, http.StatusOK, `{"id":"from-hook"}`)
				return
			}
			writeJSONAnswer(w, http.StatusUnauthorized, `{}`)
			return
		}
		writeJSONAnswer(w, http.StatusOK, `{}`)
	})
	in := startCaddy(t, `
	realtime {
		jwt {
			secret `+jwtSecret+`
			from cookie rt
		}
		auth `+app.url("/auth")+`
		subscribe_hook `+app.url("/subscribe")+`
		shutdown_spread 0
	}`)
	c := dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"Cookie": {"rt=" + hs256(t, "tok-user", nil)}}})
	c.welcome()
	c.send(`{"type":"subscribe","topic":"t","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"t","ref":1}`)
	if got := lastSubscribeUser(t, app); got != `{"id":"tok-user"}` {
		t.Fatalf("identity %s", got)
	}
	if n := len(app.callsTo("/auth")); n != 0 {
		t.Fatalf("a valid token called the auth hook %d times", n)
	}
	c2 := dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"Cookie": {"session=ok"}}})
	c2.welcome()
	c2.send(`{"type":"subscribe","topic":"t","ref":1}`)
	c2.expect(`{"type":"subscribed","topic":"t","ref":1}`)
	if got := lastSubscribeUser(t, app); got != `{"id":"from-hook"}` {
		t.Fatalf("identity %s", got)
	}
	if st, _ := dialStatus(t, in, "/ws", http.Header{"Cookie": {"rt=garbage.token.here"}}); st != http.StatusUnauthorized {
		t.Fatalf("bad token with a hook: %d", st)
	}
	if n := len(app.callsTo("/auth")); n != 1 {
		t.Fatalf("auth hook calls %d, want 1 (the request without a token)", n)
	}
}

// rawUpgrade sends a bare upgrade request for path and returns the status.
func rawUpgrade(t testing.TB, in *instance, path string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, in.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Origin", in.origin())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A connection whose token expires is closed with 4001, a code after
// which the current client reconnects by itself.
func TestJWTExpiryWhileConnected(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		jwt {
			secret `+jwtSecret+`
		}
		shutdown_spread 0
	}`)
	tok := signJWT(t, jwt.SigningMethodHS256, []byte(jwtSecret), jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(2 * time.Second).Unix()}, "")
	c := dialWith(t, in, dialOpts{origin: in.origin(), header: bearer(tok)})
	c.welcome()
	start := time.Now()
	if code := c.closeStatus(5 * time.Second); code != 4001 {
		t.Fatalf("close code %d, want 4001", code)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("closed %s after the upgrade, the token lived under 2s", el)
	}
	// The same token is now refused at the upgrade.
	if st, _ := dialStatus(t, in, "/ws", bearer(tok)); st != http.StatusUnauthorized {
		t.Fatalf("expired token at the upgrade: %d", st)
	}
}

// preflight posts the current client's auth preflight and returns the
// status and headers.
func preflight(t testing.TB, in *instance, method string, h http.Header) (int, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, in.url("/__ws/auth"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// The gateway answers POST /__ws/auth itself with the upgrade's decision,
// and wants CSRF evidence (§2.2).
func TestJWTAuthPreflight(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		jwt {
			secret `+jwtSecret+`
			from cookie rt
		}
		shutdown_spread 0
	}
	respond "app"`)
	good := "rt=" + hs256(t, "bob", nil)
	xrw := "svelte-adapter-uws"
	for _, tc := range []struct {
		name   string
		method string
		h      http.Header
		want   int
	}{
		{"the client's own request", "POST", http.Header{"Cookie": {good}, "X-Requested-With": {xrw}}, 204},
		{"XMLHttpRequest in any case", "POST", http.Header{"Cookie": {good}, "X-Requested-With": {"xmlhttprequest"}}, 204},
		{"the page's origin", "POST", http.Header{"Cookie": {good}, "Origin": {in.origin()}}, 204},
		{"Sec-Fetch-Site same-origin", "POST", http.Header{"Cookie": {good}, "Sec-Fetch-Site": {"same-origin"}}, 204},
		{"no CSRF evidence", "POST", http.Header{"Cookie": {good}}, 403},
		{"another origin", "POST", http.Header{"Cookie": {good}, "X-Requested-With": {xrw}, "Origin": {"http://evil.test"}}, 403},
		{"no token", "POST", http.Header{"X-Requested-With": {xrw}}, 401},
		{"an expired token", "POST", http.Header{"X-Requested-With": {xrw}, "Cookie": {"rt=" + hs256(t, "bob", map[string]any{"exp": time.Now().Add(-time.Hour).Unix()})}}, 401},
		{"GET", "GET", http.Header{"Cookie": {good}, "X-Requested-With": {xrw}}, 405},
	} {
		st, h := preflight(t, in, tc.method, tc.h)
		if st != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, st, tc.want)
		}
		if h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q", tc.name, h.Get("Cache-Control"))
		}
	}
	// Other paths still reach the next handler.
	if st, body := apiCall(t, http.MethodPost, in.url("/other"), "", ""); st != 200 || body != "app" {
		t.Fatalf("/other: %d %q", st, body)
	}
}

// With the auth hook, the preflight passes the hook's Set-Cookie and maps
// its failures as the upgrade does: 401/403 refuse, outages are 5xx.
func TestAuthHookPreflight(t *testing.T) {
	var status atomic.Int64
	status.Store(200)
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		st := int(status.Load())
		if st == 200 {
			w.Header().Add("Set-Cookie", "session=renewed; Path=/; HttpOnly")
			writeJSONAnswer(w, 200, `{"id":"ann"}`)
			return
		}
		writeJSONAnswer(w, st, `{}`)
	})
	in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+`
		auth_path /__ws/auth
		shutdown_spread 0
	}`)
	h := http.Header{"X-Requested-With": {"svelte-adapter-uws"}, "Cookie": {"session=old"}}
	st, hdr := preflight(t, in, "POST", h)
	if st != 204 || hdr.Get("Set-Cookie") != "session=renewed; Path=/; HttpOnly" {
		t.Fatalf("preflight %d, Set-Cookie %q", st, hdr.Get("Set-Cookie"))
	}
	if calls := app.callsTo("/auth"); len(calls) != 1 || calls[0].Header.Get("Cookie") != "session=old" {
		t.Fatalf("auth hook calls %v", calls)
	}
	for hook, want := range map[int]int{401: 401, 403: 403, 404: 401, 500: 503, 429: 401} {
		status.Store(int64(hook))
		if st, _ := preflight(t, in, "POST", h); st != want {
			t.Errorf("hook %d: preflight %d, want %d", hook, st, want)
		}
	}
}

// Keys rotate at the endpoint in the middle of a run: the new kid is
// fetched on its first use, the old one is refused, connections stay up,
// and an endpoint outage keeps the last good keys.
func TestJWTJWKSRotation(t *testing.T) {
	idp := testsvc.StartJWKS(t)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	idp.Set(t, map[string]any{"k1": &k1.PublicKey})
	in := startCaddy(t, `
	metrics
	realtime {
		jwt {
			jwks `+idp.URL+`/jwks.json
		}
		limits {
			upgrade_rate off
		}
		shutdown_spread 0
	}`)
	t1 := signJWT(t, jwt.SigningMethodES256, k1, claimsFor("ann", time.Hour, nil), "k1")
	waitFor(t, 5*time.Second, "the first jwks fetch", func() bool {
		st, _ := dialStatus(t, in, "/ws", bearer(t1))
		return st == http.StatusSwitchingProtocols
	})
	live := dialWith(t, in, dialOpts{origin: in.origin(), header: bearer(t1)})
	live.welcome()

	idp.Set(t, map[string]any{"k2": &k2.PublicKey})
	t2 := signJWT(t, jwt.SigningMethodRS256, k2, claimsFor("bob", time.Hour, nil), "k2")
	if st, _ := dialStatus(t, in, "/ws", bearer(t2)); st != http.StatusSwitchingProtocols {
		t.Fatalf("the rotated key: %d", st)
	}
	if st, _ := dialStatus(t, in, "/ws", bearer(t1)); st != http.StatusUnauthorized {
		t.Fatalf("the retired key: %d, want 401", st)
	}
	// Made-up kids are refused and cost the endpoint no fetch each.
	before := idp.Fetches()
	for i := 0; i < 10; i++ {
		bad := signJWT(t, jwt.SigningMethodRS256, k2, claimsFor("eve", time.Hour, nil), fmt.Sprintf("made-up-%d", i))
		if st, _ := dialStatus(t, in, "/ws", bearer(bad)); st != http.StatusUnauthorized {
			t.Fatalf("unknown kid: %d", st)
		}
	}
	if n := idp.Fetches() - before; n > 1 {
		t.Fatalf("10 unknown kids caused %d fetches", n)
	}
	idp.SetMode(testsvc.JWKSDown)
	if st, _ := dialStatus(t, in, "/ws", bearer(t2)); st != http.StatusSwitchingProtocols {
		t.Fatalf("endpoint down: %d, the last good keys should serve", st)
	}
	live.send(`{"type":"subscribe","topic":"t","ref":1}`)
	live.expect(`{"type":"subscribed","topic":"t","ref":1}`)
	if metricSum(metricsText(t, in), "caddy_realtime_token_rejected_total", `reason="unknown_kid"`) < 10 {
		t.Fatal("unknown kids not counted")
	}

	// A reload that changes the jwt block but not its jwks keeps the
	// fetched keys: with the endpoint still down, tokens keep verifying
	// and the connected client stays.
	cfg := currentCaddyfile(t, in)
	changed := strings.Replace(cfg, "jwks "+idp.URL+"/jwks.json", "jwks "+idp.URL+"/jwks.json\n\t\t\tleeway 5s", 1)
	if changed == cfg {
		t.Fatal("the reload would not change the jwt block: the check would prove nothing")
	}
	reload(t, in, changed)
	logLine(t, in, "reload applied new options to the live gateway; no connection closed")
	if st, _ := dialStatus(t, in, "/ws", bearer(t2)); st != http.StatusSwitchingProtocols {
		t.Fatalf("after a reload with the endpoint down: %d, the kept keys should serve", st)
	}
	live.send(`{"type":"subscribe","topic":"u","ref":2}`)
	live.expect(`{"type":"subscribed","topic":"u","ref":2}`)
}

// An endpoint that is down when Caddy starts does not hold the start up:
// upgrades get 503 (an outage, which clients retry) until a background
// refresh succeeds.
func TestJWTJWKSDownAtStart(t *testing.T) {
	idp := testsvc.StartJWKS(t)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idp.Set(t, map[string]any{"k1": &k1.PublicKey})
	idp.SetMode(testsvc.JWKSDown)
	in := startCaddy(t, `
	realtime {
		jwt {
			jwks `+idp.URL+`/jwks.json
			jwks_refresh 1s
		}
		limits {
			upgrade_rate off
		}
		shutdown_spread 0
	}`)
	tok := signJWT(t, jwt.SigningMethodES256, k1, claimsFor("ann", time.Hour, nil), "k1")
	if st, _ := dialStatus(t, in, "/ws", bearer(tok)); st != http.StatusServiceUnavailable {
		t.Fatalf("no keys yet: %d, want 503", st)
	}
	if st, _ := preflight(t, in, "POST", http.Header{"Authorization": {"Bearer " + tok}, "X-Requested-With": {"svelte-adapter-uws"}}); st != http.StatusServiceUnavailable {
		t.Fatalf("preflight without keys: %d, want 503 (a 4xx would stop the client)", st)
	}
	idp.SetMode(testsvc.JWKSUp)
	waitFor(t, 5*time.Second, "the background refresh", func() bool {
		st, _ := dialStatus(t, in, "/ws", bearer(tok))
		return st == http.StatusSwitchingProtocols
	})
}

// `caddy realtime token` prints an HS256 token alone on stdout, which the
// jwt block with the same secret accepts.
func TestJWTTokenCommand(t *testing.T) {
	if caddyBin == "" {
		t.Skip("needs the Caddy binary")
	}
	run := func(env []string, args ...string) (string, string, error) {
		cmd := exec.Command(caddyBin, append([]string{"realtime", "token"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
	out, _, err := run(nil, "--secret", jwtSecret, "--sub", "bob", "--topics", "chat:*", "--ttl", "10m", "--claim", "name=Bob", "--claim", "n=3")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "\n") != 1 || strings.Count(strings.TrimSpace(out), ".") != 2 {
		t.Fatalf("stdout %q, want one token and a newline", out)
	}
	tok := strings.TrimSpace(out)
	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return []byte(jwtSecret), nil }, jwt.WithValidMethods([]string{"HS256"})); err != nil {
		t.Fatal(err)
	}
	exp, _ := claims.GetExpirationTime()
	if claims["sub"] != "bob" || claims["name"] != "Bob" || claims["n"] != 3.0 || exp == nil || time.Until(exp.Time) > 10*time.Minute || time.Until(exp.Time) < 9*time.Minute {
		t.Fatalf("claims %v", claims)
	}
	if ts, _ := claims["topics"].([]any); len(ts) != 1 || ts[0] != "chat:*" {
		t.Fatalf("topics %v", claims["topics"])
	}
	out2, _, err := run([]string{"RT_MINT_SECRET=" + jwtSecret}, "--secret-env", "RT_MINT_SECRET", "--sub", "ann")
	if err != nil || strings.Count(strings.TrimSpace(out2), ".") != 2 {
		t.Fatalf("--secret-env: %v %q", err, out2)
	}
	for _, args := range [][]string{{"--sub", "bob"}, {"--secret", "s"}, {"--secret-env", "RT_UNSET_XYZ", "--sub", "b"}, {"--secret", "s", "--sub", "b", "--ttl", "-1m"}, {"--secret", "s", "--sub", "b", "--claim", "novalue"}} {
		out, stderr, err := run(nil, args...)
		if err == nil || out != "" || stderr == "" {
			t.Errorf("%v: err %v, stdout %q, stderr %q; want a failure told on stderr only", args, err, out, stderr)
		}
	}
	in := startCaddy(t, `
	realtime {
		jwt {
			secret `+jwtSecret+`
			topics_claim topics
		}
		shutdown_spread 0
	}`)
	c := dialWith(t, in, dialOpts{origin: in.origin(), header: bearer(tok)})
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["chat:1","other"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"chat:1","ref":1}`)
	c.expect(`{"type":"subscribe-denied","topic":"other","ref":1,"reason":"FORBIDDEN"}`)
}
