package auth_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"parry.dev/parry/internal/auth"
)

type fixed struct {
	id  auth.Identity
	err error
}

func (f fixed) Authenticate(context.Context, string) (auth.Identity, error) { return f.id, f.err }

func TestChainTakesTheFirstIdentityAndFailsClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	toks, err := auth.EnsureTokenFile(path, "local")
	if err != nil {
		t.Fatal(err)
	}
	file, err := auth.LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	down := fixed{err: &auth.Unavailable{Err: errors.New("connection refused")}}
	reviewer := fixed{id: auth.Identity{Username: "system:serviceaccount:ns:sa"}}
	ctx := context.Background()

	// A local token is accepted without asking the (unreachable) reviewer.
	if id, err := (auth.Chain{file, down}).Authenticate(ctx, toks["local"]); err != nil || id.Username != "local" {
		t.Fatalf("local token: %v %v", id, err)
	}
	// Any other token goes on to the reviewer.
	if id, err := (auth.Chain{file, reviewer}).Authenticate(ctx, "x-token-of-the-cluster-not-in-the-file"); err != nil || id.Username != "system:serviceaccount:ns:sa" {
		t.Fatalf("reviewed token: %v %v", id, err)
	}
	// The reviewer unreachable: not a rejection (401) but unavailable (503).
	var u *auth.Unavailable
	if _, err := (auth.Chain{file, down}).Authenticate(ctx, "x-token-of-the-cluster-not-in-the-file"); !errors.As(err, &u) {
		t.Fatalf("unreachable reviewer: %v, want Unavailable", err)
	}
	var r *auth.Rejected
	if _, err := (auth.Chain{file}).Authenticate(ctx, "x-token-of-the-cluster-not-in-the-file"); !errors.As(err, &r) {
		t.Fatalf("unknown token: %v, want Rejected", err)
	}
	if _, err := (auth.Chain{file, reviewer}).Authenticate(ctx, ""); !errors.Is(err, auth.ErrNoToken) {
		t.Fatalf("no token: %v", err)
	}
}
