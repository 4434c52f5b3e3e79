// Package token verifies the signed tokens (JWT) a client presents at the
// WebSocket upgrade, so that an identity provider's tokens authenticate a
// connection without a call to the application.
//
// Signatures, keys and key sets are handled by github.com/golang-jwt/jwt/v5
// and github.com/MicahParks/keyfunc/v3; this package decides which keys and
// algorithms a token may use, turns every failure into a Reason for metrics
// and logs, and reads the claims the gateway needs.
package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Verifier checks a raw token and returns its claims. Implementations are
// safe for concurrent use; a failure is always an *Error.
type Verifier interface {
	Verify(ctx context.Context, raw string) (*Claims, error)
}

// Claims is what the gateway takes from a valid token.
type Claims struct {
	// User is the user claim's value, a JSON string or number.
	User json.RawMessage
	// Fields holds the identity claims present in the token, by name.
	Fields map[string]json.RawMessage
	// Topics are the topic patterns of the topics claim; HasTopics says
	// whether the verifier reads a topics claim at all.
	Topics    []string
	HasTopics bool
	// Expires is the end of the token's validity, leeway included.
	Expires time.Time
}

// Reason classifies a refused token. The values are metric labels.
type Reason string

// Reasons a token is refused for.
const (
	ReasonMissing      Reason = "missing"       // no token in any configured source
	ReasonTooLarge     Reason = "too_large"     // longer than MaxSize
	ReasonMalformed    Reason = "malformed"     // not three base64url JSON segments
	ReasonAlgorithm    Reason = "algorithm"     // alg none, unknown, or not allowed for the configured keys
	ReasonUnknownKey   Reason = "unknown_kid"   // no configured or fetched key matches
	ReasonSignature    Reason = "signature"     // the signature does not verify
	ReasonExpired      Reason = "expired"       // exp passed (beyond the leeway), or missing
	ReasonNotYetValid  Reason = "not_yet_valid" // nbf or iat in the future
	ReasonIssuer       Reason = "issuer"        // iss is not the configured issuer
	ReasonAudience     Reason = "audience"      // aud does not name the configured audience
	ReasonClaims       Reason = "claims"        // user or topics claim missing or of the wrong type
	ReasonKeysNotReady Reason = "keys_unavailable"
)

// Error is a refused token. Err never contains the token.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "token refused: " + string(e.Reason)
	}
	return "token refused: " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the reason of a Verify error; an error that is not an
// *Error (there should be none) counts as malformed.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonMalformed
}

// Defaults.
const (
	DefaultMaxSize   = 4096
	DefaultUserClaim = "sub"
	// MaxTopics bounds the topics claim: a longer list is refused, since
	// every subscribe scans it.
	MaxTopics = 256
)

// hmacAlgs and the other lists are the algorithms each kind of key may
// verify. Keeping them apart is what stops algorithm confusion: an HS256
// token is only ever checked against the configured secret, never against
// the bytes of a public key.
var (
	hmacAlgs  = []string{"HS256", "HS384", "HS512"}
	rsaAlgs   = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	ecAlgs    = []string{"ES256", "ES384", "ES512"}
	edAlgs    = []string{"EdDSA"}
	errAlg    = errors.New("algorithm not allowed")
	errNoKey  = errors.New("no key matches")
	errNoKeys = errors.New("the key set has not been fetched yet")
)

// algKinds maps every algorithm a key may verify to its key family.
var algKinds = func() map[string]string {
	m := map[string]string{}
	for kind, algs := range map[string][]string{"hmac": hmacAlgs, "rsa": rsaAlgs, "ec": ecAlgs, "ed": edAlgs} {
		for _, a := range algs {
			m[a] = kind
		}
	}
	return m
}()

// kindOf names the family of a verification key.
func kindOf(key any) string {
	switch key.(type) {
	case []byte:
		return "hmac"
	case *rsa.PublicKey:
		return "rsa"
	case *ecdsa.PublicKey:
		return "ec"
	case ed25519.PublicKey:
		return "ed"
	}
	return ""
}

// ParsePublicKey reads one PEM-encoded public key: RSA, ECDSA or Ed25519,
// as PKIX, PKCS#1 or a certificate.
func ParsePublicKey(pem []byte) (any, error) {
	if k, err := jwt.ParseRSAPublicKeyFromPEM(pem); err == nil {
		return k, nil
	}
	if k, err := jwt.ParseECPublicKeyFromPEM(pem); err == nil {
		return k, nil
	}
	if k, err := jwt.ParseEdPublicKeyFromPEM(pem); err == nil {
		return k, nil
	}
	return nil, errors.New("not a PEM-encoded RSA, ECDSA or Ed25519 public key")
}

// Config configures a JWT verifier. At least one of Secret, PublicKeys and
// a key set (JWKS) is required.
type Config struct {
	Secret     []byte // HS256/384/512
	PublicKeys []any  // from ParsePublicKey
	// JWKS supplies keys fetched from a JWKS endpoint (NewJWKS).
	JWKS *JWKS

	Issuer   string        // required iss when set
	Audience string        // required in aud when set
	Leeway   time.Duration // clock skew allowed on exp, nbf and iat

	MaxSize        int    // bytes; default DefaultMaxSize
	UserClaim      string // default DefaultUserClaim
	IdentityClaims []string
	TopicsClaim    string // "": topics are not read from the token

	Now func() time.Time // default time.Now
}

// JWT is the Verifier of signed JSON Web Tokens.
type JWT struct {
	cfg    Config
	parser *jwt.Parser
}

// New checks cfg and returns its verifier.
func New(cfg Config) (*JWT, error) {
	if len(cfg.Secret) == 0 && len(cfg.PublicKeys) == 0 && cfg.JWKS == nil {
		return nil, errors.New("jwt needs a secret, a public_key or a jwks url")
	}
	for i, k := range cfg.PublicKeys {
		if kindOf(k) == "" || kindOf(k) == "hmac" {
			return nil, fmt.Errorf("public key %d: unsupported key type %T", i+1, k)
		}
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("leeway must not be negative")
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.UserClaim == "" {
		cfg.UserClaim = DefaultUserClaim
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	opts := []jwt.ParserOption{
		jwt.WithJSONNumber(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(cfg.Now),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	return &JWT{cfg: cfg, parser: jwt.NewParser(opts...)}, nil
}

// Verify implements Verifier.
func (v *JWT) Verify(ctx context.Context, raw string) (*Claims, error) {
	if raw == "" {
		return nil, &Error{Reason: ReasonMissing}
	}
	if len(raw) > v.cfg.MaxSize {
		return nil, &Error{Reason: ReasonTooLarge, Err: fmt.Errorf("%d bytes, at most %d", len(raw), v.cfg.MaxSize)}
	}
	claims := jwt.MapClaims{}
	if _, err := v.parser.ParseWithClaims(raw, claims, v.keyfunc(ctx)); err != nil {
		return nil, classify(err)
	}
	return v.claims(claims)
}

// keyfunc picks the keys a token may be verified with, from its alg and
// kid. Only keys of the alg's own family are ever returned.
func (v *JWT) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		alg, _ := t.Header["alg"].(string)
		kind := algKinds[alg]
		switch {
		case kind == "":
			return nil, errAlg
		case kind == "hmac":
			if len(v.cfg.Secret) == 0 {
				return nil, errAlg
			}
			return v.cfg.Secret, nil
		}
		var keys []jwt.VerificationKey
		for _, k := range v.cfg.PublicKeys {
			if kindOf(k) == kind {
				keys = append(keys, k)
			}
		}
		if v.cfg.JWKS != nil {
			fetched, err := v.cfg.JWKS.keys(ctx, t)
			if err != nil && len(keys) == 0 {
				return nil, err
			}
			for _, k := range fetched {
				if kindOf(k) == kind {
					keys = append(keys, k)
				}
			}
		}
		if len(keys) == 0 {
			if v.cfg.JWKS == nil && len(v.cfg.PublicKeys) == 0 {
				return nil, errAlg // only a secret is configured
			}
			return nil, errNoKey
		}
		return jwt.VerificationKeySet{Keys: keys}, nil
	}
}

// classify maps a parse error to its reason.
func classify(err error) *Error {
	var reason Reason
	switch {
	case errors.Is(err, errNoKeys):
		reason = ReasonKeysNotReady
	case errors.Is(err, errAlg):
		reason = ReasonAlgorithm
	case errors.Is(err, errNoKey):
		reason = ReasonUnknownKey
	case errors.Is(err, jwt.ErrTokenMalformed):
		reason = ReasonMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		reason = ReasonAlgorithm // an alg the library does not know
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		reason = ReasonSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		reason = ReasonExpired
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		reason = ReasonExpired // exp is required
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		reason = ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		reason = ReasonIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		reason = ReasonAudience
	default:
		reason = ReasonClaims // a registered claim of the wrong type
	}
	return &Error{Reason: reason, Err: err}
}

// claims reads the user, identity and topics claims of a verified token.
func (v *JWT) claims(m jwt.MapClaims) (*Claims, error) {
	bad := func(format string, args ...any) (*Claims, error) {
		return nil, &Error{Reason: ReasonClaims, Err: fmt.Errorf(format, args...)}
	}
	out := &Claims{Fields: map[string]json.RawMessage{}, HasTopics: v.cfg.TopicsClaim != ""}
	switch u := m[v.cfg.UserClaim].(type) {
	case string:
		if u == "" {
			return bad("claim %q is empty", v.cfg.UserClaim)
		}
	case json.Number:
	default:
		return bad("claim %q: want a string or a number", v.cfg.UserClaim)
	}
	var err error
	if out.User, err = json.Marshal(m[v.cfg.UserClaim]); err != nil {
		return bad("claim %q: %v", v.cfg.UserClaim, err)
	}
	for _, name := range v.cfg.IdentityClaims {
		val, ok := m[name]
		if !ok {
			continue
		}
		b, err := json.Marshal(val)
		if err != nil {
			return bad("claim %q: %v", name, err)
		}
		out.Fields[name] = b
	}
	if v.cfg.TopicsClaim != "" {
		if raw, ok := m[v.cfg.TopicsClaim]; ok {
			list, ok := raw.([]any)
			if !ok {
				return bad("claim %q: want an array of topic patterns", v.cfg.TopicsClaim)
			}
			if len(list) > MaxTopics {
				return bad("claim %q: %d patterns, at most %d", v.cfg.TopicsClaim, len(list), MaxTopics)
			}
			for _, e := range list {
				p, ok := e.(string)
				if !ok || !ValidPattern(p) {
					return bad("claim %q: want an array of topic patterns", v.cfg.TopicsClaim)
				}
				out.Topics = append(out.Topics, p)
			}
		}
	}
	exp, err := m.GetExpirationTime()
	if err != nil || exp == nil {
		return nil, &Error{Reason: ReasonExpired, Err: errors.New("no exp")}
	}
	out.Expires = exp.Add(v.cfg.Leeway)
	return out, nil
}

// ValidPattern reports whether p is a topic pattern a topics claim may
// hold: the directive's rules (printable ASCII without '"' or '\', not in
// the "__" system namespace).
func ValidPattern(p string) bool {
	return p != "" && !strings.HasPrefix(p, "__") && wire.ValidTopic(p, false)
}
