package auth

import (
	"errors"
	"fmt"
	"strings"
)

// Identity is an authenticated caller.
type Identity struct {
	Username string   `json:"username"`
	UID      string   `json:"uid,omitempty"`
	Groups   []string `json:"groups,omitempty"`
}

const saPrefix = "system:serviceaccount:"

// ServiceAccountUser is the username of a service account's tokens.
func ServiceAccountUser(namespace, name string) string { return saPrefix + namespace + ":" + name }

// ServiceAccount returns the namespace and name of a service account's
// identity; ok is false for any other user.
func (i Identity) ServiceAccount() (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(i.Username, saPrefix)
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	return namespace, name, ok && namespace != "" && name != ""
}

// ErrNoToken: the request carries no bearer token.
var ErrNoToken = errors.New("no bearer token: send Authorization: Bearer <token>")

// Rejected is a token the reviewer refused: expired, wrong audience,
// unknown, malformed. The caller answers 401.
type Rejected struct{ Reason string }

func (r *Rejected) Error() string { return "token rejected: " + r.Reason }

// Unavailable is a token that could not be reviewed (the reviewer is
// unreachable). It is not accepted; the caller answers 503 so the client
// retries.
type Unavailable struct{ Err error }

func (u *Unavailable) Error() string {
	return fmt.Sprintf("the token could not be reviewed, so it is not accepted: %v", u.Err)
}
func (u *Unavailable) Unwrap() error { return u.Err }
