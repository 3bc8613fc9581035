// Package redact removes secrets from process arguments and environment
// values before parry stores or sends them: the sensor applies it to the
// argv of every exec (the flight recorder and the emitted events), the
// snapshot step to the pod's environment, its containers' command lines and
// the flight recorder it saves.
//
// The rules go by names, never by guessing at values:
//
//   - a flag or variable whose name contains one of the rule's names
//     (case-insensitive; by default password, passwd, passphrase, secret,
//     token, key, credential): the value of `--name=value`, `name=value`
//     (`API_KEY=x`), and of `--name value` (the next argument, unless it
//     starts with '-');
//   - a header in an argument, `Authorization: ...`, `Proxy-Authorization:`,
//     `Cookie:`, or a header whose name matches (`X-Api-Key: ...`), and the
//     word after `Bearer `;
//   - the password of a URL with user information (`https://u:p@host`; the
//     user is kept).
//
// A short option (`-p x`) is not enough context and is kept. A redacted
// value becomes `[redacted sha256:<8 hex>]`, the first 32 bits of the
// value's SHA-256, so equal secrets can still be correlated (two processes
// with the same token) without keeping them; a guessable secret can be
// confirmed by hashing the guess, so the hash says "the same value", not
// "a strong secret". Everything else is kept verbatim.
//
// The package imports nothing of parry: the sensor and the steps both use it.
package redact

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// DefaultNames are the name fragments the default rules redact.
var DefaultNames = []string{"password", "passwd", "passphrase", "secret", "token", "key", "credential"}

// headers are redacted whatever the rules' names.
var headers = []string{"authorization", "cookie"}

// Rules redact by name. The zero value and nil redact with DefaultNames.
type Rules struct {
	names []string  // lower case
	first [256]bool // the names' first bytes, both cases
}

var defaults = build(DefaultNames)

func build(names []string) *Rules {
	r := &Rules{names: names}
	for _, n := range names {
		r.first[n[0]] = true
		if n[0] >= 'a' && n[0] <= 'z' {
			r.first[n[0]-'a'+'A'] = true
		}
	}
	return r
}

// New returns the default rules extended by extra name fragments (empty
// ones are ignored; case does not matter).
func New(extra ...string) *Rules {
	names := append([]string(nil), DefaultNames...)
	for _, n := range extra {
		if n = strings.ToLower(strings.TrimSpace(n)); n != "" {
			names = append(names, n)
		}
	}
	return build(names)
}

// Names are the rules' name fragments.
func (r *Rules) Names() []string { return append([]string(nil), r.rules().names...) }

func (r *Rules) rules() *Rules {
	if r == nil || r.names == nil {
		return defaults
	}
	return r
}

// Value is what a redacted value becomes.
func Value(v string) string {
	sum := sha256.Sum256([]byte(v))
	return "[redacted sha256:" + hex.EncodeToString(sum[:4]) + "]"
}

// Sensitive reports whether a flag or variable name matches the rules.
func (r *Rules) Sensitive(name string) bool {
	r = r.rules()
	for i := 0; i < len(name); i++ {
		if !r.first[name[i]] {
			continue
		}
		for _, n := range r.names {
			if hasPrefixFold(name[i:], n) {
				return true
			}
		}
	}
	return false
}

// hasPrefixFold: s starts with the lower-case prefix, ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for j := 0; j < len(prefix); j++ {
		if lower(s[j]) != prefix[j] {
			return false
		}
	}
	return true
}

// Args returns argv with the secrets redacted. When nothing is redacted it
// returns args itself and allocates nothing (the sensor's hot path);
// otherwise a copy, args is never modified.
func (r *Rules) Args(args []string) []string {
	var out []string
	set := func(i int, v string) {
		if out == nil {
			out = make([]string, len(args))
			copy(out, args)
		}
		out[i] = v
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if v, ok := r.arg(a); ok {
			set(i, v)
			continue
		}
		// `--name value`: the next argument is the value.
		if len(a) > 1 && a[0] == '-' && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && r.Sensitive(a) {
			set(i+1, Value(args[i+1]))
			i++
		}
	}
	if out == nil {
		return args
	}
	return out
}

// Env returns an environment variable's value with the secrets redacted:
// all of it when the name matches, else the headers and URL passwords in it.
func (r *Rules) Env(name, value string) string {
	if value == "" {
		return value
	}
	if r.Sensitive(name) {
		return Value(value)
	}
	if v, ok := r.content(value); ok {
		return v
	}
	return value
}

// arg redacts one argument on its own: `name=value`, a header, a bearer
// token, a URL's password. ok is false when nothing was redacted.
func (r *Rules) arg(a string) (string, bool) {
	// Quick exit for the usual argument: none of the characters any rule
	// needs.
	if strings.IndexAny(a, "=: ") < 0 {
		return a, false
	}
	if eq := strings.IndexByte(a, '='); eq > 0 {
		name := a[:eq]
		// a name has no ':' or space: `http://h/?a=b` and `x: a=b` are not
		// assignments
		if strings.IndexAny(name, ": /") < 0 {
			if r.Sensitive(name) {
				return a[:eq+1] + Value(a[eq+1:]), true
			}
			// `--set=db.password=x`: the value is an assignment too.
			if v, ok := r.arg(a[eq+1:]); ok {
				return a[:eq+1] + v, true
			}
			return a, false
		}
	}
	return r.content(a)
}

// content redacts headers, bearer tokens and URL passwords in a string.
func (r *Rules) content(s string) (string, bool) {
	changed := false
	if c := strings.IndexByte(s, ':'); c > 0 {
		name := strings.TrimSpace(s[:c])
		if isHeaderName(name) && (r.isHeader(name) || (r.Sensitive(name) && (strings.IndexByte(name, '-') >= 0 || strings.HasPrefix(s[c+1:], " ")))) {
			v := strings.TrimSpace(s[c+1:])
			if v != "" {
				return s[:c+1] + " " + Value(v), true
			}
		}
	}
	if v, ok := bearer(s); ok {
		s, changed = v, true
	}
	if v, ok := urlPasswords(s); ok {
		s, changed = v, true
	}
	if v, ok := r.query(s); ok {
		s, changed = v, true
	}
	return s, changed
}

// query redacts the values of URL query parameters whose names match
// (`?access_token=x&a=b`).
func (r *Rules) query(s string) (string, bool) {
	q := strings.IndexByte(s, '?')
	if q < 0 || strings.IndexByte(s[q:], '=') < 0 {
		return s, false
	}
	var b strings.Builder
	b.WriteString(s[:q])
	changed := false
	rest := s[q:]
	for len(rest) > 0 {
		// rest starts with '?' or '&'
		end := 1
		for end < len(rest) && rest[end] != '&' && rest[end] != '#' && rest[end] != ' ' && rest[end] != '"' && rest[end] != '\'' {
			end++
		}
		param := rest[1:end]
		b.WriteByte(rest[0])
		if eq := strings.IndexByte(param, '='); eq > 0 && r.Sensitive(param[:eq]) {
			b.WriteString(param[:eq+1])
			b.WriteString(Value(param[eq+1:]))
			changed = true
		} else {
			b.WriteString(param)
		}
		rest = rest[end:]
		if len(rest) > 0 && rest[0] != '&' {
			b.WriteString(rest)
			break
		}
	}
	if !changed {
		return s, false
	}
	return b.String(), true
}

func (r *Rules) isHeader(name string) bool {
	for _, h := range headers {
		if containsFold(name, h) {
			return true
		}
	}
	return false
}

// isHeaderName: letters, digits, '-' and '_' only.
func isHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// bearer redacts the word after each "Bearer " (any case).
func bearer(s string) (string, bool) {
	const word = "bearer "
	i := indexFold(s, word)
	if i < 0 {
		return s, false
	}
	var b strings.Builder
	for i >= 0 {
		start := i + len(word)
		end := start
		for end < len(s) && s[end] != ' ' && s[end] != '"' && s[end] != '\'' && s[end] != ',' {
			end++
		}
		b.WriteString(s[:start])
		if end > start {
			b.WriteString(Value(s[start:end]))
		}
		s = s[end:]
		i = indexFold(s, word)
	}
	b.WriteString(s)
	return b.String(), true
}

// urlPasswords redacts the password of every `scheme://user:password@host`
// in s and keeps the user.
func urlPasswords(s string) (string, bool) {
	i := strings.Index(s, "://")
	if i < 0 {
		return s, false
	}
	var b strings.Builder
	changed := false
	for i >= 0 {
		start := i + 3
		// the authority ends at the first '/', '?', '#', space or quote
		end := start
		for end < len(s) && !strings.ContainsRune("/?# \"'", rune(s[end])) {
			end++
		}
		auth := s[start:end]
		b.WriteString(s[:start])
		if at := strings.LastIndexByte(auth, '@'); at >= 0 {
			if colon := strings.IndexByte(auth[:at], ':'); colon >= 0 {
				b.WriteString(auth[:colon+1])
				b.WriteString(Value(auth[colon+1 : at]))
				b.WriteString(auth[at:])
				changed = true
			} else {
				b.WriteString(auth)
			}
		} else {
			b.WriteString(auth)
		}
		s = s[end:]
		i = strings.Index(s, "://")
	}
	if !changed {
		return b.String() + s, false
	}
	b.WriteString(s)
	return b.String(), true
}

// containsFold reports whether s contains sub, ASCII case-insensitively;
// sub is lower case.
func containsFold(s, sub string) bool { return indexFold(s, sub) >= 0 }

func indexFold(s, sub string) int {
	n := len(sub)
	if n == 0 {
		return 0
	}
	first := sub[0]
	for i := 0; i+n <= len(s); i++ {
		if lower(s[i]) != first {
			continue
		}
		j := 1
		for j < n && lower(s[i+j]) == sub[j] {
			j++
		}
		if j == n {
			return i
		}
	}
	return -1
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
