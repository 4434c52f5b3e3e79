package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/token"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// JWTConfig lets signed tokens authenticate upgrades and the auth
// preflight without a call to the application (docs/hooks.md, "Tokens").
type JWTConfig struct {
	Secret     string   // HS256/384/512
	PublicKeys [][]byte // PEM-encoded RSA, ECDSA or Ed25519 public keys
	JWKS       string   // JWKS endpoint URL
	// JWKSRefresh is the background refresh interval of the JWKS.
	// Default token.DefaultJWKSRefresh.
	JWKSRefresh time.Duration
	Issuer      string
	Audience    string
	Leeway      time.Duration
	// From lists where a token is looked for, in order. Default: the
	// Authorization header's Bearer credentials.
	From           []TokenSource
	UserClaim      string // default "sub"
	IdentityClaims []string
	TopicsClaim    string // "": subscribes are not authorized from the token
	MaxSize        int    // bytes; default token.DefaultMaxSize
}

// TokenSource is one place a token is looked for.
type TokenSource struct {
	Kind TokenSourceKind
	Name string
}

// TokenSourceKind is a kind of token source.
type TokenSourceKind string

// Token sources.
const (
	TokenFromHeader TokenSourceKind = "header"
	TokenFromCookie TokenSourceKind = "cookie"
	TokenFromQuery  TokenSourceKind = "query"
)

// ParseTokenSourceKind reads a jwt from source kind: header, cookie or query.
func ParseTokenSourceKind(s string) (TokenSourceKind, error) {
	return parseEnum("jwt from source", s, TokenFromHeader, TokenFromCookie, TokenFromQuery)
}

// DefaultAuthPath is where the current client sends its auth preflight.
const DefaultAuthPath = "/__ws/auth"

// AuthPathOff turns the auth preflight off (auth_path off).
const AuthPathOff = "off"

// CloseTokenExpired closes a connection whose token expired. The current
// client treats only 1008, 4401 and 4403 as final, so it reconnects after
// this code with its normal backoff, presenting whatever token the page
// holds by then (docs/protocol.md §2.6).
const CloseTokenExpired websocket.StatusCode = 4001

// CheckJWT checks a jwt block: keys that parse, a JWKS URL, sources and
// claim names. It builds nothing.
func CheckJWT(j *JWTConfig) error {
	if err := CheckJWTKeys(j.Secret, len(j.PublicKeys), j.JWKS); err != nil {
		return err
	}
	for i, p := range j.PublicKeys {
		if _, err := token.ParsePublicKey(p); err != nil {
			return fmt.Errorf("jwt: public_key %d: %w", i+1, err)
		}
	}
	if j.JWKS != "" {
		if err := CheckJWKSURL(j.JWKS); err != nil {
			return fmt.Errorf("jwt: %w", err)
		}
	}
	if j.Leeway < 0 || j.JWKSRefresh < 0 || j.MaxSize < 0 {
		return fmt.Errorf("jwt: leeway, jwks_refresh and max_size must not be negative")
	}
	for _, src := range j.From {
		if err := checkEnum(src.Kind, ParseTokenSourceKind); err != nil {
			return fmt.Errorf("jwt: %w", err)
		}
		if src.Name == "" {
			return fmt.Errorf("jwt: from %s needs a name", src.Kind)
		}
		if src.Kind == TokenFromHeader {
			if err := CheckHeaderName(src.Name); err != nil {
				return fmt.Errorf("jwt: %w", err)
			}
		}
	}
	return nil
}

// CheckJWTKeys checks that a jwt block has a key: a secret, public keys
// or a JWKS URL.
func CheckJWTKeys(secret string, publicKeys int, jwks string) error {
	if secret == "" && publicKeys == 0 && jwks == "" {
		return errors.New("jwt needs a secret, a public_key or a jwks url")
	}
	return nil
}

// CheckJWKSURL checks a jwt jwks URL: absolute http or https.
func CheckJWKSURL(raw string) error { return token.CheckJWKSURL(raw) }

// CheckAuthPath checks auth_path: a path, or off.
func CheckAuthPath(p string) error {
	if p == AuthPathOff {
		return nil
	}
	return CheckPath("auth_path", p)
}

// Token metrics; RegisterMetrics registers them with the others.
var (
	metricTokenRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "token_rejected_total",
		Help: "Tokens refused at an upgrade or an auth preflight, by reason: missing, too_large, malformed, algorithm, unknown_kid, signature, expired, not_yet_valid, issuer, audience, claims, keys_unavailable.",
	}, []string{"gateway", "reason"})
	metricJWKSFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "jwks_fetches_total",
		Help: "JWKS fetches, by result (ok, error).",
	}, []string{"gateway", "result"})
)

func init() { allMetrics = append(allMetrics, metricTokenRejected, metricJWKSFetches) }

// tokenAuth is a gateway's token verification: the verifier built from
// one JWTConfig, and the JWKS fetcher it may share with the next one.
type tokenAuth struct {
	cfg      JWTConfig
	verifier token.Verifier
	jwks     *token.JWKS
}

// tokenState holds a gateway's tokenAuth across reconfigurations. A
// reload that keeps the JWKS URL and refresh keeps the fetcher and its
// keys; one that changes them starts a new fetcher and stops the old.
type tokenState struct {
	mu  sync.Mutex
	cur *tokenAuth
}

func (g *Gateway) tokenAuth() *tokenAuth {
	g.tokens.mu.Lock()
	defer g.tokens.mu.Unlock()
	return g.tokens.cur
}

// configureTokens builds the verifier of cfg.JWT (nil: none). It never
// waits for a JWKS endpoint: the first fetch runs in the background.
func (g *Gateway) configureTokens(cfg Config) error {
	g.tokens.mu.Lock()
	defer g.tokens.mu.Unlock()
	old := g.tokens.cur
	j := cfg.JWT
	if j == nil {
		g.tokens.cur = nil
		if old != nil && old.jwks != nil {
			old.jwks.Close()
		}
		return nil
	}
	ta := &tokenAuth{cfg: *j}
	if len(ta.cfg.From) == 0 {
		ta.cfg.From = []TokenSource{{Kind: TokenFromHeader, Name: "Authorization"}}
	}
	var keys []any
	for _, p := range j.PublicKeys {
		k, err := token.ParsePublicKey(p)
		if err != nil {
			return err
		}
		keys = append(keys, k)
	}
	reused := false
	if j.JWKS != "" {
		if old != nil && old.jwks != nil && old.cfg.JWKS == j.JWKS && old.cfg.JWKSRefresh == j.JWKSRefresh {
			ta.jwks, reused = old.jwks, true
		} else {
			name := g.m.name
			logger := g.logger
			jw, err := token.NewJWKS(token.JWKSConfig{
				URL: j.JWKS, Refresh: j.JWKSRefresh,
				OnError: func(err error) {
					metricJWKSFetches.WithLabelValues(name, "error").Inc()
					logger.Warn("fetching the jwks failed; keeping the keys of the last good fetch", zap.String("url", j.JWKS), zap.Error(err))
				},
				OnLoad: func(n int) {
					metricJWKSFetches.WithLabelValues(name, "ok").Inc()
					logger.Debug("jwks fetched", zap.String("url", j.JWKS), zap.Int("keys", n))
				},
			})
			if err != nil {
				return err
			}
			ta.jwks = jw
		}
	}
	v, err := token.New(token.Config{
		Secret: []byte(j.Secret), PublicKeys: keys, JWKS: ta.jwks,
		Issuer: j.Issuer, Audience: j.Audience, Leeway: j.Leeway, MaxSize: j.MaxSize,
		UserClaim: j.UserClaim, IdentityClaims: j.IdentityClaims, TopicsClaim: j.TopicsClaim,
		Now: cfg.Now,
	})
	if err != nil {
		if ta.jwks != nil && !reused {
			ta.jwks.Close()
		}
		return err
	}
	ta.verifier = v
	g.tokens.cur = ta
	if old != nil && old.jwks != nil && !reused {
		old.jwks.Close()
	}
	return nil
}

// closeTokens stops the JWKS fetcher.
func (g *Gateway) closeTokens() {
	g.tokens.mu.Lock()
	defer g.tokens.mu.Unlock()
	if t := g.tokens.cur; t != nil && t.jwks != nil {
		t.jwks.Close()
	}
	g.tokens.cur = nil
}

// extract returns the first token found in the configured sources.
func (t *tokenAuth) extract(r *http.Request) (string, bool) {
	for _, src := range t.cfg.From {
		var v string
		switch src.Kind {
		case TokenFromHeader:
			v = strings.TrimSpace(r.Header.Get(src.Name))
			// Credentials in the Authorization style: "Bearer <token>".
			// Another scheme (Basic, say) is not a token of ours.
			if scheme, cred, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "bearer") {
				v = strings.TrimSpace(cred)
			} else if strings.EqualFold(src.Name, "Authorization") {
				v = ""
			}
		case TokenFromCookie:
			if c, err := r.Cookie(src.Name); err == nil {
				v = c.Value
			}
		case TokenFromQuery:
			v = r.URL.Query().Get(src.Name)
		}
		if v != "" {
			return v, true
		}
	}
	return "", false
}

// tokenGrant is what a verified token gives its connection beyond the
// identity: the topic patterns it may subscribe to, and its expiry.
type tokenGrant struct {
	// restricts: the token's topics claim decides the topics it covers,
	// and without a subscribe hook denies the others.
	restricts bool
	topics    wire.Patterns
	expires   time.Time
	timer     *time.Timer
}

// covers reports whether the token's topics claim allows topic t.
func (gr *tokenGrant) covers(t string) bool {
	return gr != nil && gr.topics.Match(t) >= 0
}

// stop cancels the expiry close of a connection that ended.
func (gr *tokenGrant) stop() {
	if gr != nil && gr.timer != nil {
		gr.timer.Stop()
	}
}

// needsDecision reports whether subscribing connection c to the valid,
// non-system topic t needs authorize's decision (§3.5): it is not public,
// and a subscribe hook or the token's topics claim decides it.
func (c *conn) needsDecision(s *settings, t string) bool {
	return !s.isPublic(t) && (s.SubscribeHook != nil || (c.grant != nil && c.grant.restricts))
}

// identify makes the identity of an upgrade or an auth preflight: from a
// token when one is presented (the auth hook is then not called), else
// from the auth hook, else {} (§2.1 check 6). A token that fails is
// refused, never passed on to the hook.
func (g *Gateway) identify(r *http.Request, ip string, s *settings) authResult {
	if ta := g.tokenAuth(); ta != nil {
		if raw, ok := ta.extract(r); ok {
			return g.verifyToken(r.Context(), ta, raw, s)
		}
		if s.Auth == nil {
			g.rejectToken(token.ReasonMissing, nil, ip)
			return authResult{status: http.StatusUnauthorized, message: "Unauthorized"}
		}
	}
	if s.Auth != nil {
		return g.authenticate(r, ip, s)
	}
	return authResult{identity: json.RawMessage("{}")}
}

func (g *Gateway) verifyToken(ctx context.Context, ta *tokenAuth, raw string, s *settings) authResult {
	claims, err := ta.verifier.Verify(ctx, raw)
	if err != nil {
		reason := token.ReasonOf(err)
		g.rejectToken(reason, err, "")
		if reason == token.ReasonKeysNotReady {
			return authResult{status: http.StatusServiceUnavailable, message: "Authentication unavailable"}
		}
		return authResult{status: http.StatusUnauthorized, message: "Unauthorized"}
	}
	// The identity: the user under user_key, then the identity claims in
	// the order configured (none may replace the user).
	var b bytes.Buffer
	b.WriteByte('{')
	key, _ := json.Marshal(s.UserKey)
	b.Write(key)
	b.WriteByte(':')
	b.Write(claims.User)
	for _, name := range ta.cfg.IdentityClaims {
		v, ok := claims.Fields[name]
		if !ok || name == s.UserKey {
			continue
		}
		k, _ := json.Marshal(name)
		b.WriteByte(',')
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	gr := &tokenGrant{restricts: claims.HasTopics, expires: claims.Expires}
	for _, p := range claims.Topics {
		gr.topics = append(gr.topics, wire.Pattern(p))
	}
	return authResult{identity: b.Bytes(), grant: gr}
}

// rejectToken counts and logs a refused token; the log never carries the
// token, only the reason and the library's description.
func (g *Gateway) rejectToken(reason token.Reason, err error, ip string) {
	metricTokenRejected.WithLabelValues(g.m.name, string(reason)).Inc()
	fields := []zap.Field{zap.String("reason", string(reason))}
	if ip != "" {
		fields = append(fields, zap.String("remote_ip", ip))
	}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	g.logger.Info("token refused", fields...)
}

// armExpiry closes c with CloseTokenExpired when its token expires.
func (c *conn) armExpiry(now time.Time) {
	gr := c.grant
	if gr == nil || gr.expires.IsZero() {
		return
	}
	gr.timer = time.AfterFunc(gr.expires.Sub(now), func() {
		c.closeAsync(CloseTokenExpired, "Token expired")
	})
}
