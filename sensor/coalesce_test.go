package sensor

import (
	"net/netip"
	"testing"
	"time"

	"parry.dev/parry/sensor/internal/wire"
)

func TestCoalescer(t *testing.T) {
	c := newCoalescer(time.Second)
	t0 := time.Unix(1700000000, 0)
	conn := func(port uint16) *wire.Record {
		return &wire.Record{Kind: wire.KindConnect, DAddr: netip.MustParseAddr("10.0.0.1"), DPort: port, Proto: 6}
	}
	check := func(r *wire.Record, cg uint64, at time.Duration) (uint32, bool) { return c.check(r, cg, t0.Add(at)) }

	if n, ok := check(conn(443), 1, 0); !ok || n != 0 {
		t.Fatalf("first: %d %v", n, ok)
	}
	for i := range 3 {
		if _, ok := check(conn(443), 1, time.Duration(i+1)*100*time.Millisecond); ok {
			t.Fatalf("identical connect %d within the window emitted", i)
		}
	}
	if _, ok := check(conn(80), 1, 500*time.Millisecond); !ok {
		t.Error("another port was coalesced")
	}
	if _, ok := check(conn(443), 2, 500*time.Millisecond); !ok {
		t.Error("another cgroup was coalesced")
	}
	blocked := conn(443)
	blocked.Blocked = true
	if _, ok := check(blocked, 1, 500*time.Millisecond); !ok {
		t.Error("a blocked connect was coalesced with the allowed ones")
	}
	if n, ok := check(conn(443), 1, 1500*time.Millisecond); !ok || n != 3 {
		t.Errorf("after the window: %d %v, want 3 suppressed", n, ok)
	}

	// A key that suppressed something survives the sweep until its next
	// event carries the count; the others go.
	check(conn(443), 1, 1600*time.Millisecond)
	c.sweep(t0.Add(10 * time.Second))
	if len(c.table) != 1 {
		t.Fatalf("%d keys after the sweep, want the one with a count", len(c.table))
	}
	if n, ok := check(conn(443), 1, 11*time.Second); !ok || n != 1 {
		t.Errorf("count after the sweep: %d %v", n, ok)
	}

	off := newCoalescer(-1)
	for range 3 {
		if _, ok := off.check(conn(443), 1, t0); !ok {
			t.Fatal("coalescing off still suppresses")
		}
	}
}

func TestCoalescerKinds(t *testing.T) {
	c := newCoalescer(time.Second)
	t0 := time.Unix(1700000000, 0)
	args := []string{"curl", "x"}
	pairs := []struct {
		name string
		a, b wire.Record
	}{
		{"exec argv", wire.Record{Kind: wire.KindExec, Exe: "/bin/curl", Args: args}, wire.Record{Kind: wire.KindExec, Exe: "/bin/curl", Args: []string{"curl", "y"}}},
		{"exit code", wire.Record{Kind: wire.KindExit, Comm: "sh", ExitCode: 0}, wire.Record{Kind: wire.KindExit, Comm: "sh", ExitCode: 256}},
		{"open mode", wire.Record{Kind: wire.KindOpen, Path: "/etc/shadow"}, wire.Record{Kind: wire.KindOpen, Path: "/etc/shadow", FileFlags: 1}},
		{"signal", wire.Record{Kind: wire.KindPriv, Signal: wire.SigSetuid}, wire.Record{Kind: wire.KindPriv, Signal: wire.SigSetgid}},
	}
	for i, p := range pairs {
		cg := uint64(100 + i)
		if _, ok := c.check(&p.a, cg, t0); !ok {
			t.Errorf("%s: first emitted", p.name)
		}
		again := p.a
		if _, ok := c.check(&again, cg, t0); ok {
			t.Errorf("%s: identical one emitted", p.name)
		}
		if _, ok := c.check(&p.b, cg, t0); !ok {
			t.Errorf("%s: a different one was coalesced", p.name)
		}
	}
	// the exec hash is remembered for the very same argv, and only for it
	r := wire.Record{Kind: wire.KindExec, Exe: "/bin/curl", Args: args}
	h := c.execHash(&r)
	if c.execHash(&r) != h || c.execHash(&wire.Record{Exe: "/bin/curl", Args: []string{"curl", "x"}}) != h {
		t.Error("equal exe and argv hash differently")
	}
	if c.execHash(&wire.Record{Exe: "/bin/curl", Args: []string{"curlx"}}) == h {
		t.Error("argv boundaries are not hashed")
	}
}
