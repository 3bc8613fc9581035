package auth

import (
	"context"
	"errors"
)

// Chain authenticates with each of its authenticators in turn and takes
// the first identity one returns: parry run with a cluster accepts its
// in-process components' local tokens (a TokenFile, checked first: no
// API call) and any other sender's service-account token (TokenReview).
// When none accepts the token, an Unavailable answer wins over a
// rejection, so a token that might have been valid fails closed (503).
type Chain []Authenticator

func (c Chain) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrNoToken
	}
	var rejected, unavailable error
	for _, a := range c {
		id, err := a.Authenticate(ctx, token)
		if err == nil {
			return id, nil
		}
		var u *Unavailable
		if errors.As(err, &u) {
			unavailable = err
		} else {
			rejected = err
		}
	}
	switch {
	case unavailable != nil:
		return Identity{}, unavailable
	case rejected != nil:
		return Identity{}, rejected
	}
	return Identity{}, &Rejected{Reason: "no authenticator is configured"}
}
