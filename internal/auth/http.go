package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// BearerToken returns the request's bearer token, "" if none.
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// Check authenticates r and, when authz is not nil, authorizes attrs. It
// returns the caller's identity, or the HTTP status and reason to refuse
// with: 401 (no token, or a rejected one), 403 (not allowed), 503 (the
// decision could not be made: failed closed).
func Check(ctx context.Context, r *http.Request, authn Authenticator, authz Authorizer, attrs Attributes) (Identity, int, string) {
	id, err := authn.Authenticate(ctx, BearerToken(r))
	if err != nil {
		var u *Unavailable
		if errors.As(err, &u) {
			return Identity{}, http.StatusServiceUnavailable, err.Error()
		}
		return Identity{}, http.StatusUnauthorized, err.Error()
	}
	if authz == nil {
		return id, 0, ""
	}
	ok, reason, err := authz.Authorize(ctx, id, attrs)
	switch {
	case err != nil:
		return id, http.StatusServiceUnavailable, "authorization could not be decided, so it is refused: " + err.Error()
	case !ok:
		return id, http.StatusForbidden, reason
	}
	return id, 0, ""
}

// Refuse writes a refusal from Check as JSON {"error": reason}, with the
// WWW-Authenticate challenge a 401 needs.
func Refuse(w http.ResponseWriter, status int, reason string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="parry"`)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": reason})
}

type identityKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext returns the identity WithIdentity stored.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// TokenSource returns the bearer token a client sends.
type TokenSource func() (string, error)

// FileToken reads a token from path — a projected service-account token,
// which the kubelet rotates — again once the copy it holds is older than
// a minute.
func FileToken(path string) TokenSource {
	var mu sync.Mutex
	var tok string
	var read time.Time
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if tok != "" && time.Since(read) < time.Minute {
			return tok, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		tok, read = strings.TrimSpace(string(b)), time.Now()
		return tok, nil
	}
}

// StaticToken always returns tok.
func StaticToken(tok string) TokenSource { return func() (string, error) { return tok, nil } }

// Transport adds the bearer token of Token to every request through Base
// (http.DefaultTransport when nil).
type Transport struct {
	Base  http.RoundTripper
	Token TokenSource
}

func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	tok, err := t.Token()
	if err != nil {
		return nil, err
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(r)
}

// WithToken returns a copy of hc whose requests carry src's token.
func WithToken(hc *http.Client, src TokenSource) *http.Client {
	c := *hc
	c.Transport = &Transport{Base: hc.Transport, Token: src}
	return &c
}
