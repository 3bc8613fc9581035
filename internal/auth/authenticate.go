package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Authenticator turns a bearer token into an Identity. Errors are
// ErrNoToken, *Rejected or *Unavailable.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// Stats count what an authenticator or authorizer decided, for metrics.
type Stats struct {
	Reviews     atomic.Uint64 // calls to the API server
	CacheHits   atomic.Uint64
	Rejected    atomic.Uint64 // tokens refused (401), requests forbidden (403)
	Unavailable atomic.Uint64 // reviews that could not be made: failed closed
}

// TokenReview authenticates service-account (and any other) tokens with the
// API server's TokenReview, for one audience: a token minted for another
// audience (the API server's own, the broker's) is rejected, so a token
// that leaks from one use cannot be replayed at another.
type TokenReview struct {
	kube     kubernetes.Interface
	audience string
	ttl      time.Duration
	cache    *cache[Identity]
	Stats    Stats
}

// NewTokenReview reviews tokens for audience and keeps accepted ones for
// ttl (the kubelet keeps them two minutes; parry's default is one).
func NewTokenReview(kube kubernetes.Interface, audience string, ttl time.Duration) *TokenReview {
	return &TokenReview{kube: kube, audience: audience, ttl: ttl, cache: newCache[Identity](4096)}
}

// Audience is the audience tokens must carry.
func (t *TokenReview) Audience() string { return t.audience }

func (t *TokenReview) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrNoToken
	}
	k, now := key(t.audience, token), time.Now()
	if id, ok := t.cache.get(k, now); ok {
		t.Stats.CacheHits.Add(1)
		return id, nil
	}
	t.Stats.Reviews.Add(1)
	tr, err := t.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{t.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Stats.Unavailable.Add(1)
		return Identity{}, &Unavailable{Err: fmt.Errorf("TokenReview: %w", err)}
	}
	st := tr.Status
	switch {
	case st.Error != "" && !st.Authenticated:
		t.Stats.Rejected.Add(1)
		return Identity{}, &Rejected{Reason: st.Error}
	case !st.Authenticated:
		t.Stats.Rejected.Add(1)
		return Identity{}, &Rejected{Reason: "the API server did not authenticate it"}
	case !slices.Contains(st.Audiences, t.audience):
		t.Stats.Rejected.Add(1)
		return Identity{}, &Rejected{Reason: fmt.Sprintf("it is not for audience %q", t.audience)}
	}
	id := Identity{Username: st.User.Username, UID: st.User.UID, Groups: st.User.Groups}
	t.cache.put(k, id, t.ttl, now)
	return id, nil
}

// TokenFile authenticates the tokens listed in a file: the local stand-in
// for TokenReview where there is no cluster (parry run). Each line is
// "<token> <username>"; blank lines and lines starting with # are skipped.
// Tokens are compared in constant time.
type TokenFile struct {
	path   string
	tokens []fileToken
	Stats  Stats
}

type fileToken struct {
	token []byte
	id    Identity
}

// LoadTokenFile reads path. It refuses a file others can read.
func LoadTokenFile(path string) (*TokenFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("token file %s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	f := &TokenFile{path: path}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		tok, user, ok := strings.Cut(line, " ")
		user = strings.TrimSpace(user)
		if !ok || len(tok) < 32 || user == "" {
			return nil, fmt.Errorf("token file %s:%d: want \"<token of at least 32 characters> <username>\"", path, n)
		}
		f.tokens = append(f.tokens, fileToken{token: []byte(tok), id: Identity{Username: user}})
	}
	return f, nil
}

func (f *TokenFile) Authenticate(_ context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrNoToken
	}
	for _, t := range f.tokens {
		if subtle.ConstantTimeCompare(t.token, []byte(token)) == 1 {
			return t.id, nil
		}
	}
	f.Stats.Rejected.Add(1)
	return Identity{}, &Rejected{Reason: "not a token of " + f.path}
}

// EnsureTokenFile makes sure path holds a token for each of users, creating
// the file (mode 0600) or appending random tokens for the users it lacks,
// and returns each user's token: how parry run gives its in-process
// components (the sensor, the steps, the operator's CLI) identities without
// a cluster.
func EnsureTokenFile(path string, users ...string) (map[string]string, error) {
	have := map[string]string{}
	if f, err := LoadTokenFile(path); err == nil {
		for _, t := range f.tokens {
			have[t.id.Username] = string(t.token)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var add strings.Builder
	for _, u := range users {
		if _, ok := have[u]; ok {
			continue
		}
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		have[u] = hex.EncodeToString(b)
		fmt.Fprintf(&add, "%s %s\n", have[u], u)
	}
	if add.Len() > 0 {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		_, err = f.WriteString(add.String())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
	}
	return have, nil
}
