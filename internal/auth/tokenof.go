package auth

import "fmt"

// TokenOf returns user's token from the file: how a local client (parry
// incident close) acts as the identity the file gives it.
func (f *TokenFile) TokenOf(user string) (string, error) {
	for _, t := range f.tokens {
		if t.id.Username == user {
			return string(t.token), nil
		}
	}
	return "", fmt.Errorf("token file %s holds no token of %s (parry run adds it when it starts: start it once with this state directory)", f.path, user)
}
