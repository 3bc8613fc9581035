package sensor

import (
	"net/netip"
	"testing"
	"time"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/cgroups"
	"parry.dev/parry/sensor/internal/wire"
)

type fakeMeta struct{}

func (fakeMeta) Meta(id *attrib.Identity) (attrib.PodMeta, attrib.ContainerMeta, bool) {
	return attrib.PodMeta{Namespace: "ns", Name: "web-1", Owner: "Deployment/web"}, attrib.ContainerMeta{Name: "app", Image: "nginx"}, id.PodUID == "uid-1"
}

func TestEventMapper(t *testing.T) {
	m := eventMapper{node: "n1", source: "parry://sensor/n1", bootID: "boot", meta: fakeMeta{}}
	t0 := time.Unix(1700000000, 0)
	pod := &attrib.Identity{CgroupID: 7, CgroupPath: "/k/p/c", PodRef: cgroups.PodRef{PodUID: "uid-1", ContainerID: "c1"}}
	host := &attrib.Identity{CgroupID: 1, CgroupPath: "/system.slice"}
	hdr := wire.Record{Ktime: 5000, PID: 10, TID: 11, UID: 1000, Comm: "curl"}
	rec := func(k wire.Kind, set func(*wire.Record)) *wire.Record {
		r := hdr
		r.Kind = k
		if set != nil {
			set(&r)
		}
		return &r
	}
	for _, c := range []struct {
		r       *wire.Record
		id      *attrib.Identity
		typ     string
		subject string
		ext     map[string]string
		check   func(api.EventData) bool
	}{
		{rec(wire.KindExec, func(r *wire.Record) { r.Exe, r.Args = "/usr/bin/curl", []string{"curl", "x"} }), pod,
			events.TypeProcessExec, "pod/ns/web-1", map[string]string{events.ExtPodName: "web-1", events.ExtContainer: "app", events.ExtImage: "nginx", events.ExtUID: "1000"},
			func(d api.EventData) bool { return len(d.Args) == 2 && d.Pod != nil && d.Pod.Owner == "Deployment/web" }},
		{rec(wire.KindExit, func(r *wire.Record) { r.ExitCode, r.StartKtime = 3<<8, 1000 }), host,
			events.TypeProcessExit, "node/n1", map[string]string{events.ExtNode: "n1"},
			func(d api.EventData) bool {
				return d.Exit != nil && d.Exit.Code == 3 && d.Exit.LifetimeNs == 4000 && d.Pod == nil
			}},
		{rec(wire.KindConnect, func(r *wire.Record) {
			r.DAddr, r.DPort, r.Proto, r.Blocked = netip.MustParseAddr("10.0.0.1"), 443, 6, true
		}), pod,
			events.TypeNetworkConnect, "pod/ns/web-1", map[string]string{events.ExtDestPort: "443", events.ExtDestAddr: "10.0.0.1", events.ExtProto: "tcp", events.ExtAction: "blocked"},
			func(d api.EventData) bool { return d.Connect != nil && d.Connect.Blocked }},
		{rec(wire.KindOpen, func(r *wire.Record) { r.Path, r.FileFlags = "/etc/shadow", 2 }), pod,
			events.TypeFileOpen, "pod/ns/web-1", map[string]string{events.ExtPath: "/etc/shadow"},
			func(d api.EventData) bool { return d.File != nil && d.File.Write }},
		{rec(wire.KindPriv, func(r *wire.Record) { r.Signal, r.Name = wire.SigExecMemfd, "payload" }), &attrib.Identity{CgroupID: 8, PodRef: cgroups.PodRef{PodUID: "uid-2"}},
			events.TypePrivilege, "pod/uid-2", map[string]string{events.ExtSignal: "exec-memfd", events.ExtPodUID: "uid-2"},
			func(d api.EventData) bool {
				return d.Signal != nil && d.Signal.File == "payload" && d.Signal.Old == nil
			}},
	} {
		ev := recorderEvent(c.r, t0, c.id.CgroupID, "/usr/bin/curl")
		ce, err := m.build(c.r, c.id, &ev, 2)
		if err != nil {
			t.Fatalf("%s: %v", c.typ, err)
		}
		if ce.Type() != c.typ || ce.Subject() != c.subject || ce.Source() != "parry://sensor/n1" || !ce.Time().Equal(t0) {
			t.Errorf("%s: type %s subject %s source %s time %v", c.typ, ce.Type(), ce.Subject(), ce.Source(), ce.Time())
		}
		for k, want := range c.ext {
			if got := extOf(t, ce, k); got != want {
				t.Errorf("%s: %s = %q, want %q", c.typ, k, got, want)
			}
		}
		d := dataOf(t, ce)
		if !c.check(d) || d.Coalesced != 2 || d.Process.TID != 11 || d.Process.Exe != "/usr/bin/curl" {
			t.Errorf("%s: data %+v", c.typ, d)
		}
		// a redelivered record is the same event
		again, err := m.build(c.r, c.id, &ev, 0)
		if err != nil || again.ID() != ce.ID() {
			t.Errorf("%s: id %s, then %s (%v)", c.typ, ce.ID(), again.ID(), err)
		}
	}
	if _, err := m.build(rec(9, nil), host, &api.RecordedEvent{}, 0); err == nil {
		t.Error("an unknown kind built")
	}

	info, err := m.health(api.Health{Node: "n1"}, t0, 1)
	if err != nil {
		t.Fatal(err)
	}
	warn, err := m.health(api.Health{Node: "n1", NewLoss: true}, t0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if info.Type() != events.TypeSensorHealth || extOf(t, info, events.ExtSeverity) != "info" || extOf(t, warn, events.ExtSeverity) != "warning" || info.ID() == warn.ID() {
		t.Errorf("health events: %v / %v", info, warn)
	}
}
