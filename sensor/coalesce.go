package sensor

import (
	"hash/maphash"
	"time"

	"parry.dev/parry/sensor/internal/wire"
)

// coalescer suppresses identical events (same kind, cgroup and details)
// within a window: the first is emitted, the others are counted, and the
// next one emitted after the window carries the count. It belongs to the
// reader goroutine.
type coalescer struct {
	window   time.Duration // <= 0: every event is emitted
	seed     maphash.Seed
	table    map[coalesceKey]*coalesceEntry
	lastExec lastExecHash // execHash's memory
}

type coalesceKey struct {
	kind wire.Kind
	cg   uint64
	a, b uint64
}

type coalesceEntry struct {
	last       int64
	suppressed uint32
}

// maxCoalesce bounds the table; past it, new keys are emitted, not tracked.
const maxCoalesce = 1 << 16

func newCoalescer(window time.Duration) coalescer {
	return coalescer{window: window, seed: maphash.MakeSeed(), table: map[coalesceKey]*coalesceEntry{}}
}

// check reports whether to emit r, and how many identical events were
// suppressed since the last one emitted.
func (c *coalescer) check(r *wire.Record, cg uint64, t time.Time) (uint32, bool) {
	w := c.window
	if w <= 0 {
		return 0, true
	}
	k := coalesceKey{kind: r.Kind, cg: cg}
	switch r.Kind {
	case wire.KindExec:
		k.a = c.execHash(r)
	case wire.KindExit:
		k.a = maphash.String(c.seed, r.Comm)
		k.b = uint64(uint32(r.ExitCode))
	case wire.KindConnect:
		a16 := r.DAddr.As16()
		k.a = maphash.Bytes(c.seed, a16[:])
		k.b = uint64(r.DPort) | uint64(r.Proto)<<16 | b2u(r.Blocked)<<24
	case wire.KindOpen:
		k.a = maphash.String(c.seed, r.Path)
		k.b = uint64(r.FileFlags & 3) // O_ACCMODE: a write differs from a read
	case wire.KindPriv:
		k.a = maphash.String(c.seed, r.Name) ^ uint64(r.Signal)<<56
		k.b = uint64(r.Ret) ^ uint64(uint32(r.Syscall))<<32 ^ r.SysArgs[0]
	}
	now := t.UnixNano()
	e, ok := c.table[k]
	if ok && now-e.last < int64(w) {
		e.suppressed++
		return 0, false
	}
	if !ok {
		if len(c.table) >= maxCoalesce {
			return 0, true // full: emit rather than forget
		}
		e = &coalesceEntry{}
		c.table[k] = e
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return n, true
}

// execHash hashes exe and argv. A storm repeats them, and the parser then
// returns the very same strings, so the previous hash is reused after a
// pointer compare.
func (c *coalescer) execHash(r *wire.Record) uint64 {
	l := &c.lastExec
	if l.valid && l.exe == r.Exe && len(l.args) == len(r.Args) && (len(r.Args) == 0 || &l.args[0] == &r.Args[0]) {
		return l.hash
	}
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(r.Exe)
	for _, a := range r.Args {
		h.WriteByte(0)
		h.WriteString(a)
	}
	*l = lastExecHash{exe: r.Exe, args: r.Args, hash: h.Sum64(), valid: true}
	return l.hash
}

type lastExecHash struct {
	exe   string
	args  []string
	hash  uint64
	valid bool
}

// sweep forgets the keys whose window is over and that suppressed nothing
// since (a key with a count waits for its next event to carry it).
func (c *coalescer) sweep(now time.Time) {
	cut := now.Add(-c.window).UnixNano()
	for k, e := range c.table {
		if e.last < cut && e.suppressed == 0 {
			delete(c.table, k)
		}
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
