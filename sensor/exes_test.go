package sensor

import (
	"os"
	"testing"

	"parry.dev/parry/sensor/internal/wire"
)

func TestExeTable(t *testing.T) {
	e := newExeTable()
	if got := e.track(&wire.Record{Kind: wire.KindExec, PID: 10, Exe: "/bin/sh"}); got != "/bin/sh" {
		t.Errorf("exec: %q", got)
	}
	if got := e.track(&wire.Record{Kind: wire.KindConnect, PID: 10}); got != "/bin/sh" {
		t.Errorf("connect after the exec: %q", got)
	}
	if got := e.track(&wire.Record{Kind: wire.KindExit, PID: 10}); got != "/bin/sh" || len(e.m) != 0 {
		t.Errorf("exit: %q, %d rows left", got, len(e.m))
	}
	// a process that exec'd before the sensor: its exe from /proc, once
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if got := e.track(&wire.Record{Kind: wire.KindOpen, PID: uint32(os.Getpid())}); got != self {
		t.Errorf("from /proc: %q, want %q", got, self)
	}
	// a full table is cleared by trim, so new processes are learnt again
	for pid := range uint32(maxExes) {
		e.track(&wire.Record{Kind: wire.KindExec, PID: pid + 100, Exe: "/x"})
	}
	if len(e.m) != maxExes {
		t.Fatalf("%d rows", len(e.m))
	}
	e.trim()
	if len(e.m) != 0 {
		t.Errorf("a full table was not cleared: %d rows", len(e.m))
	}
}
