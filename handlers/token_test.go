package handlers

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestConfigValidateJWT(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no key", Config{JWT: &JWTConfig{Issuer: "x"}}, "jwt needs a secret"},
		{"bad pem", Config{JWT: &JWTConfig{PublicKeys: [][]byte{[]byte("nope")}}}, "jwt: public_key 1: not a PEM-encoded"},
		{"bad jwks", Config{JWT: &JWTConfig{JWKS: "file:///etc/keys"}}, "bad jwks url"},
		{"bad source", Config{JWT: &JWTConfig{Secret: "s", From: []TokenSource{{Kind: "body", Name: "x"}}}}, "unknown jwt from source"},
		{"nameless source", Config{JWT: &JWTConfig{Secret: "s", From: []TokenSource{{Kind: TokenFromCookie}}}}, "from cookie needs a name"},
		{"auth_path on the websocket path", Config{JWT: &JWTConfig{Secret: "s"}, AuthPath: "/ws"}, "auth_path"},
		{"auth_path under the api", Config{APIPath: "/_rt", AuthPath: "/_rt/auth"}, "auth_path"},
		{"auth_path not a path", Config{AuthPath: "x"}, "auth_path must start with '/'"},
	} {
		err := tc.cfg.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	c := Config{JWT: &JWTConfig{Secret: "s"}}.WithDefaults()
	if c.AuthPath != DefaultAuthPath || c.Validate() != nil {
		t.Fatalf("jwt's default auth_path %q, %v", c.AuthPath, c.Validate())
	}
	if (Config{}).WithDefaults().AuthPath != "" {
		t.Fatal("the preflight is on without jwt")
	}
}

func TestTokenExtract(t *testing.T) {
	ta := &tokenAuth{cfg: JWTConfig{From: []TokenSource{
		{Kind: TokenFromHeader, Name: "Authorization"}, {Kind: TokenFromHeader, Name: "X-Token"},
		{Kind: TokenFromCookie, Name: "rt"}, {Kind: TokenFromQuery, Name: "token"},
	}}}
	for _, tc := range []struct {
		header, value, query, want string
	}{
		{"Authorization", "Bearer abc", "", "abc"},
		{"Authorization", "bearer  abc ", "", "abc"},
		{"Authorization", "Basic abc", "token=q", "q"},
		{"X-Token", "raw", "", "raw"},
		{"Cookie", "rt=c1; other=2", "", "c1"},
		{"", "", "token=q", "q"},
		{"", "", "", ""},
	} {
		r := httptest.NewRequest("GET", "/ws?"+tc.query, nil)
		if tc.header != "" {
			r.Header.Set(tc.header, tc.value)
		}
		got, ok := ta.extract(r)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: %q: got %q %v, want %q", tc.header, tc.value, got, ok, tc.want)
		}
	}
}
