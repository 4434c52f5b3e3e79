package testsvc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/MicahParks/jwkset"
)

// JWKS is an identity provider's JWKS endpoint for tests: it serves the
// public keys last Set, counts its fetches, and fails on demand.
type JWKS struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	fetches atomic.Int64
	mode    atomic.Value // a JWKSMode
}

// JWKSMode is how the endpoint answers.
type JWKSMode string

// The endpoint's modes.
const (
	JWKSUp      JWKSMode = ""        // the keys
	JWKSDown    JWKSMode = "down"    // 503
	JWKSGarbage JWKSMode = "garbage" // 200 with a body that is no JSON
	JWKSHang    JWKSMode = "hang"    // no answer until the client gives up
)

// StartJWKS starts an endpoint serving no keys, closed in t.Cleanup.
func StartJWKS(t testing.TB) *JWKS {
	t.Helper()
	j := &JWKS{body: []byte(`{"keys":[]}`)}
	j.mode.Store(JWKSUp)
	j.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.fetches.Add(1)
		switch j.mode.Load().(JWKSMode) {
		case JWKSDown:
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		case JWKSGarbage:
			_, _ = w.Write([]byte("<html>not json"))
			return
		case JWKSHang:
			<-r.Context().Done()
			return
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(j.body)
	}))
	t.Cleanup(j.Close)
	return j
}

// Set replaces the served keys: public keys by kid.
func (j *JWKS) Set(t testing.TB, keys map[string]any) {
	t.Helper()
	st := jwkset.NewMemoryStorage()
	for kid, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid}})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.KeyWrite(context.Background(), jwk); err != nil {
			t.Fatal(err)
		}
	}
	b, err := st.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	j.mu.Lock()
	j.body = b
	j.mu.Unlock()
}

// SetMode changes how the endpoint answers from the next fetch on.
func (j *JWKS) SetMode(m JWKSMode) { j.mode.Store(m) }

// Fetches is how many requests the endpoint has had.
func (j *JWKS) Fetches() int64 { return j.fetches.Load() }
