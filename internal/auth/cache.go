package auth

import (
	"crypto/sha256"
	"sync"
	"time"
)

// cache holds review results for a short time, keyed by a hash of what was
// reviewed (never the token itself). It holds at most max entries: when
// full, expired entries go first and then everything, so a caller spraying
// distinct tokens costs reviews, not memory.
type cache[V any] struct {
	mu      sync.Mutex
	entries map[[32]byte]cached[V]
	max     int
}

type cached[V any] struct {
	v       V
	expires time.Time
}

func newCache[V any](max int) *cache[V] {
	return &cache[V]{entries: map[[32]byte]cached[V]{}, max: max}
}

func key(parts ...string) [32]byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *cache[V]) get(k [32]byte, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok || now.After(e.expires) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *cache[V]) put(k [32]byte, v V, ttl time.Duration, now time.Time) {
	if ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for k, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			clear(c.entries)
		}
	}
	c.entries[k] = cached[V]{v: v, expires: now.Add(ttl)}
}
