package token

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// JWKS defaults.
const (
	DefaultJWKSRefresh    = 10 * time.Minute
	DefaultJWKSMinRefresh = 30 * time.Second
	DefaultJWKSTimeout    = 10 * time.Second
	DefaultJWKSMaxBytes   = 1 << 20
)

// JWKSConfig configures the fetching of a JWKS endpoint.
type JWKSConfig struct {
	URL string
	// Refresh is the background refresh interval. Default DefaultJWKSRefresh.
	Refresh time.Duration
	// MinRefresh is the least time between two refreshes a token with an
	// unknown kid triggers, so a flood of made-up kids costs the endpoint
	// one fetch per interval. Default DefaultJWKSMinRefresh.
	MinRefresh time.Duration
	// Timeout bounds one fetch, and how long a token with an unknown kid
	// may wait for its refresh. Default DefaultJWKSTimeout.
	Timeout time.Duration
	// MaxBytes caps the endpoint's answer; a longer one fails the fetch.
	// Default DefaultJWKSMaxBytes.
	MaxBytes int64
	// Client performs the fetches. Default: a client of its own that
	// honours the environment's proxy settings.
	Client *http.Client
	// OnError is told of every failed fetch (the keys of the last good one
	// stay in use); OnLoad of every successful one, with the key count.
	OnError func(error)
	OnLoad  func(keys int)
}

// JWKS holds the keys of a JWKS endpoint. The first fetch runs in the
// background, so a slow or unreachable endpoint never delays the caller;
// until a fetch succeeds, tokens that need its keys are refused with
// ReasonKeysNotReady. After that, a failed refresh keeps the last good keys.
type JWKS struct {
	cfg   JWKSConfig
	store *trackedStore
	kit   atomic.Pointer[jwksKit]
	// refreshes lets a token the cached keys cannot verify refresh them,
	// at most once per MinRefresh and without waiting.
	refreshes *rate.Limiter
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
}

// CheckJWKSURL checks a JWKS URL: absolute http or https.
func CheckJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("bad jwks url '%s': want http://host[:port]/path or https://…", raw)
	}
	return nil
}

// NewJWKS starts fetching cfg.URL in the background. Close stops it.
func NewJWKS(cfg JWKSConfig) (*JWKS, error) {
	if err := CheckJWKSURL(cfg.URL); err != nil {
		return nil, err
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultJWKSRefresh
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = DefaultJWKSMinRefresh
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultJWKSTimeout
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultJWKSMaxBytes
	}
	base := cfg.Client
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		base = &http.Client{Transport: t}
	}
	client := *base
	rt := client.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	client.Transport = limitTransport{rt: rt, max: cfg.MaxBytes}
	j := &JWKS{cfg: cfg, store: &trackedStore{MemoryJWKSet: jwkset.NewMemoryStorage(), onLoad: cfg.OnLoad}, done: make(chan struct{})}
	j.refreshes = rate.NewLimiter(rate.Every(cfg.MinRefresh), 1)
	j.ctx, j.cancel = context.WithCancel(context.Background())
	onError := func(_ context.Context, err error) {
		if cfg.OnError != nil && j.ctx.Err() == nil {
			cfg.OnError(err)
		}
	}
	go func() {
		defer close(j.done)
		storage, err := jwkset.NewStorageFromHTTP(cfg.URL, jwkset.HTTPClientStorageOptions{
			Client:                    &client,
			Ctx:                       j.ctx,
			HTTPTimeout:               cfg.Timeout,
			NoErrorReturnFirstHTTPReq: true,
			RefreshErrorHandler:       onError,
			RefreshInterval:           cfg.Refresh,
			Storage:                   j.store,
		})
		if err != nil {
			onError(j.ctx, err)
			return
		}
		// The client refreshes on every key id it does not hold; keys
		// calls it only when refreshes allows.
		hc, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
			HTTPURLs:          map[string]jwkset.Storage{cfg.URL: storage},
			RateLimitWaitMax:  cfg.Timeout,
			RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
		})
		if err != nil {
			onError(j.ctx, err)
			return
		}
		cached, err := keyfunc.New(keyfunc.Options{Ctx: j.ctx, Storage: storage})
		if err != nil {
			onError(j.ctx, err)
			return
		}
		j.kit.Store(&jwksKit{cached: cached, client: hc})
	}()
	return j, nil
}

// Close stops the background refresh.
func (j *JWKS) Close() {
	j.cancel()
}

// Loaded reports whether a fetch has succeeded.
func (j *JWKS) Loaded() bool { return j.store.loaded.Load() }

// WaitStarted waits until the first fetch has ended, successfully or not,
// or ctx ends. For tests and tools; the gateway never waits.
func (j *JWKS) WaitStarted(ctx context.Context) error {
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jwksKit is what the first fetch builds: a keyfunc over the cached keys
// and the client that refreshes them.
type jwksKit struct {
	cached keyfunc.Keyfunc
	client jwkset.Storage
}

// keys returns the fetched keys token t may be verified with: the key of
// its kid, or every key when it has none. When the cached keys have none
// for it, they are refreshed first if the rate limit allows.
func (j *JWKS) keys(ctx context.Context, t *jwt.Token) ([]any, error) {
	kit := j.kit.Load()
	if kit == nil {
		return nil, errNoKeys
	}
	k, err := kit.cached.KeyfuncCtx(ctx)(t)
	if set, ok := k.(jwt.VerificationKeySet); (err != nil || ok && len(set.Keys) == 0) && j.refreshes.Allow() {
		kid, _ := t.Header["kid"].(string)
		rctx, cancel := context.WithTimeout(ctx, j.cfg.Timeout)
		_, _ = kit.client.KeyRead(rctx, kid) // refreshes: kid is not held
		cancel()
		k, err = kit.cached.KeyfuncCtx(ctx)(t)
	}
	switch {
	case err != nil && !j.Loaded():
		return nil, errNoKeys
	case err != nil:
		return nil, fmt.Errorf("%w: %v", errNoKey, err)
	}
	if set, ok := k.(jwt.VerificationKeySet); ok {
		if len(set.Keys) == 0 && !j.Loaded() {
			return nil, errNoKeys
		}
		out := make([]any, len(set.Keys))
		for i, key := range set.Keys {
			out[i] = key
		}
		return out, nil
	}
	return []any{k}, nil
}

// trackedStore is the in-memory key storage that remembers whether a
// fetch ever succeeded: jwkset replaces its keys only after a good fetch.
type trackedStore struct {
	*jwkset.MemoryJWKSet
	loaded atomic.Bool
	onLoad func(int)
}

func (s *trackedStore) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	if err := s.MemoryJWKSet.KeyReplaceAll(ctx, given); err != nil {
		return err
	}
	s.loaded.Store(true)
	if s.onLoad != nil {
		s.onLoad(len(given))
	}
	return nil
}

// limitTransport fails a fetch whose answer is longer than max bytes, so
// an endpoint answering garbage cannot make the process read without end.
type limitTransport struct {
	rt  http.RoundTripper
	max int64
}

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

var errTooLong = errors.New("jwks answer too long")

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		if n, err := b.rc.Read(one[:]); n > 0 {
			return 0, errTooLong
		} else if err != nil {
			return 0, err
		}
		return 0, nil
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
