package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func sign(t testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims, header map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func valid(extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func pemOf(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func mustNew(t testing.TB, cfg Config) *JWT {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func wantReason(t *testing.T, v Verifier, raw string, want Reason) {
	t.Helper()
	_, err := v.Verify(context.Background(), raw)
	if err == nil {
		t.Fatalf("token accepted, want %s", want)
	}
	if got := ReasonOf(err); got != want {
		t.Fatalf("reason %s (%v), want %s", got, err, want)
	}
	if raw != "" && len(raw) > 20 && strings.Contains(err.Error(), raw) {
		t.Fatal("the error quotes the token")
	}
}

func TestHS256Claims(t *testing.T) {
	v := mustNew(t, Config{Secret: secret, IdentityClaims: []string{"name", "avatar"}, TopicsClaim: "topics"})
	raw := sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"name": "Bob", "topics": []string{"chat:*", "news"}, "uid": 7}), nil)
	c, err := v.Verify(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if string(c.User) != `"bob"` || string(c.Fields["name"]) != `"Bob"` || c.Fields["avatar"] != nil {
		t.Fatalf("claims %+v", c)
	}
	if !c.HasTopics || strings.Join(c.Topics, ",") != "chat:*,news" {
		t.Fatalf("topics %v", c.Topics)
	}
	if time.Until(c.Expires) < 59*time.Minute {
		t.Fatalf("expires %v", c.Expires)
	}
	// A numeric user claim keeps its digits.
	v2 := mustNew(t, Config{Secret: secret, UserClaim: "uid"})
	c, err = v2.Verify(context.Background(), raw)
	if err != nil || string(c.User) != "7" {
		t.Fatalf("uid: %v %s", err, c.User)
	}
}

func TestAsymmetricKeys(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	var keys []any
	for _, p := range []any{&ec.PublicKey, &rk.PublicKey, edPub} {
		k, err := ParsePublicKey(pemOf(t, p))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	v := mustNew(t, Config{PublicKeys: keys})
	for name, raw := range map[string]string{
		"ES256": sign(t, jwt.SigningMethodES256, ec, valid(nil), nil),
		"RS256": sign(t, jwt.SigningMethodRS256, rk, valid(nil), nil),
		"PS384": sign(t, jwt.SigningMethodPS384, rk, valid(nil), nil),
		"EdDSA": sign(t, jwt.SigningMethodEdDSA, edPriv, valid(nil), nil),
	} {
		if _, err := v.Verify(context.Background(), raw); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wantReason(t, v, sign(t, jwt.SigningMethodES256, other, valid(nil), nil), ReasonSignature)
	// HS256 "signed" with the public key's PEM as the HMAC secret: only a
	// configured secret ever verifies HS*, and there is none.
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, pemOf(t, &rk.PublicKey), valid(nil), nil), ReasonAlgorithm)
	// With a secret too, the forged token meets the secret and fails.
	v2 := mustNew(t, Config{Secret: secret, PublicKeys: keys})
	wantReason(t, v2, sign(t, jwt.SigningMethodHS256, pemOf(t, &rk.PublicKey), valid(nil), nil), ReasonSignature)
	if _, err := ParsePublicKey([]byte("not pem")); err == nil {
		t.Fatal("garbage parsed as a key")
	}
}

func TestBadTokens(t *testing.T) {
	v := mustNew(t, Config{Secret: secret, Issuer: "https://idp/", Audience: "app", TopicsClaim: "topics", Leeway: time.Second})
	good := map[string]any{"iss": "https://idp/", "aud": "app"}
	with := func(extra map[string]any) jwt.MapClaims {
		c := valid(good)
		for k, x := range extra {
			if x == nil {
				delete(c, k)
			} else {
				c[k] = x
			}
		}
		return c
	}
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, with(nil), nil)
	cases := map[string]struct {
		raw  string
		want Reason
	}{
		"empty":          {"", ReasonMissing},
		"alg none":       {none, ReasonAlgorithm},
		"alg unknown":    {strings.Replace(none, "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJhbGciOiJYWDEiLCJ0eXAiOiJKV1QifQ", 1), ReasonAlgorithm},
		"bad signature":  {sign(t, jwt.SigningMethodHS256, []byte("another secret of enough length!"), with(nil), nil), ReasonSignature},
		"expired":        {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()}), nil), ReasonExpired},
		"no exp":         {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"exp": nil}), nil), ReasonExpired},
		"nbf":            {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"nbf": time.Now().Add(time.Minute).Unix()}), nil), ReasonNotYetValid},
		"iat future":     {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"iat": time.Now().Add(time.Minute).Unix()}), nil), ReasonNotYetValid},
		"issuer":         {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"iss": "https://evil/"}), nil), ReasonIssuer},
		"audience":       {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"aud": []string{"other"}}), nil), ReasonAudience},
		"malformed":      {"abc.def", ReasonMalformed},
		"malformed b64":  {"!!!.???.***", ReasonMalformed},
		"8 KiB":          {strings.Repeat("a", 8<<10), ReasonTooLarge},
		"1 MiB":          {strings.Repeat("a", 1<<20), ReasonTooLarge},
		"topics string":  {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"topics": "chat:*"}), nil), ReasonClaims},
		"topics numbers": {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"topics": []int{1}}), nil), ReasonClaims},
		"topics system":  {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"topics": []string{"__presence:x"}}), nil), ReasonClaims},
		"no sub":         {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"sub": nil}), nil), ReasonClaims},
		"sub object":     {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"sub": map[string]any{"a": 1}}), nil), ReasonClaims},
		"exp string":     {sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"exp": "tomorrow"}), nil), ReasonClaims},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) { wantReason(t, v, tc.raw, tc.want) })
	}
	// Within the leeway an expired token still passes.
	raw := sign(t, jwt.SigningMethodHS256, secret, with(map[string]any{"exp": time.Now().Add(-500 * time.Millisecond).Unix()}), nil)
	if _, err := v.Verify(context.Background(), raw); err != nil && ReasonOf(err) != ReasonExpired {
		t.Fatal(err)
	}
}

func waitLoaded(t *testing.T, j *JWKS) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := j.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSRotation(t *testing.T) {
	srv := testsvc.StartJWKS(t)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	srv.Set(t, map[string]any{"k1": &k1.PublicKey})
	j, err := NewJWKS(JWKSConfig{URL: srv.URL, MinRefresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	waitLoaded(t, j)
	v := mustNew(t, Config{JWKS: j})
	t1 := sign(t, jwt.SigningMethodES256, k1, valid(nil), map[string]any{"kid": "k1"})
	if _, err := v.Verify(context.Background(), t1); err != nil {
		t.Fatal(err)
	}
	// Without a kid every fetched key of the family is tried.
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodES256, k1, valid(nil), nil)); err != nil {
		t.Fatal(err)
	}
	// Rotation: k2 replaces k1 at the endpoint; the first token with kid
	// k2 triggers a refresh.
	srv.Set(t, map[string]any{"k2": &k2.PublicKey})
	t2 := sign(t, jwt.SigningMethodRS256, k2, valid(nil), map[string]any{"kid": "k2"})
	if _, err := v.Verify(context.Background(), t2); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	wantReason(t, v, t1, ReasonUnknownKey)
	// Unknown kids are rate-limited: a burst costs at most one fetch.
	before := srv.Fetches()
	for i := 0; i < 20; i++ {
		wantReason(t, v, sign(t, jwt.SigningMethodRS256, k2, valid(nil), map[string]any{"kid": "nope"}), ReasonUnknownKey)
	}
	if n := srv.Fetches() - before; n > 2 {
		t.Fatalf("%d fetches for 20 unknown kids", n)
	}
	// The endpoint goes down or answers garbage: the last keys stay.
	for _, mode := range []testsvc.JWKSMode{testsvc.JWKSDown, testsvc.JWKSGarbage} {
		srv.SetMode(mode)
		time.Sleep(250 * time.Millisecond)
		wantReason(t, v, sign(t, jwt.SigningMethodRS256, k2, valid(nil), map[string]any{"kid": "unknown-" + mode}), ReasonUnknownKey)
		if _, err := v.Verify(context.Background(), t2); err != nil {
			t.Fatalf("%s: lost the last good keys: %v", mode, err)
		}
	}
}

func TestJWKSUnavailableAtStart(t *testing.T) {
	srv := testsvc.StartJWKS(t)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv.Set(t, map[string]any{"k1": &k1.PublicKey})
	srv.SetMode(testsvc.JWKSHang)
	var errs atomic.Int32
	start := time.Now()
	j, err := NewJWKS(JWKSConfig{URL: srv.URL, Timeout: 300 * time.Millisecond, MinRefresh: 100 * time.Millisecond, OnError: func(error) { errs.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if time.Since(start) > 100*time.Millisecond {
		t.Fatal("NewJWKS waited for the endpoint")
	}
	v := mustNew(t, Config{JWKS: j})
	raw := sign(t, jwt.SigningMethodES256, k1, valid(nil), map[string]any{"kid": "k1"})
	wantReason(t, v, raw, ReasonKeysNotReady)
	waitLoaded(t, j)
	if errs.Load() == 0 {
		t.Fatal("the failed first fetch was not reported")
	}
	srv.SetMode(testsvc.JWKSGarbage)
	time.Sleep(150 * time.Millisecond)
	wantReason(t, v, raw, ReasonKeysNotReady)
	// The endpoint comes back: the next unknown kid fetches again.
	srv.SetMode(testsvc.JWKSUp)
	time.Sleep(150 * time.Millisecond)
	if _, err := v.Verify(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSAnswerTooLong(t *testing.T) {
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"keys":[`))
		for i := 0; i < 1<<16; i++ {
			_, _ = w.Write([]byte(`{"kty":"oct","k":"AAAA"},`))
		}
		_, _ = w.Write([]byte(`{}]}`))
	}))
	defer big.Close()
	j, err := NewJWKS(JWKSConfig{URL: big.URL, MaxBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	waitLoaded(t, j)
	if j.Loaded() {
		t.Fatal("an over-long answer was loaded")
	}
	if _, err := NewJWKS(JWKSConfig{URL: "ftp://x"}); err == nil {
		t.Fatal("ftp url accepted")
	}
}

func TestNewChecks(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("a verifier without keys")
	}
	if _, err := New(Config{Secret: secret, Leeway: -time.Second}); err == nil {
		t.Fatal("negative leeway")
	}
	if _, err := New(Config{PublicKeys: []any{"x"}}); err == nil {
		t.Fatal("a string as public key")
	}
}

func FuzzVerify(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(sign(f, jwt.SigningMethodHS256, secret, valid(map[string]any{"topics": []string{"a*"}}), nil))
	f.Add(sign(f, jwt.SigningMethodES256, ec, valid(nil), map[string]any{"kid": "x"}))
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ.")
	f.Add("a.b.c")
	v := mustNew(f, Config{Secret: secret, PublicKeys: []any{&ec.PublicKey}, TopicsClaim: "topics", IdentityClaims: []string{"name"}})
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := v.Verify(context.Background(), raw)
		if err == nil {
			if c == nil || !json.Valid(c.User) {
				t.Fatalf("accepted with claims %+v", c)
			}
			return
		}
		if ReasonOf(err) == "" {
			t.Fatal("no reason")
		}
	})
}
