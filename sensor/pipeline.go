package sensor

import (
	"fmt"
	"hash/maphash"
	"os"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/wire"
)

// handle is the hot path: one ring-buffer record in, at most one CloudEvent
// out. It runs on the reader goroutine only, so its maps need no lock.
func (s *Sensor) handle(raw []byte) {
	r := &s.rec0
	if err := s.parser.Parse(raw, r); err != nil {
		if s.malformed.Add(1) == 1 || s.malformed.Load()%1000 == 0 {
			s.log.Error().Err(err).Uint64("malformed", s.malformed.Load()).Msg("ring-buffer record dropped (counted)")
		}
		s.kickLoss()
		return
	}
	if s.firstRec.Load() == 0 {
		s.firstRec.Store(time.Now().UnixNano())
	}
	s.received[r.Kind].Add(1)
	cg := r.CgroupID
	if s.v1 {
		cg = r.MemcgID
	}
	t := s.wall(r.Ktime)
	id := s.attr.Identify(cg, r.CgroupLeaf, r.CgroupParent, t)
	if s.v1 && !s.inScopeV1(id) {
		s.outScope.Add(1)
		return
	}
	exe := s.trackExe(r)
	ev := recorderEvent(r, t, cg, exe)
	s.rec.Add(id, ev)
	if s.em == nil {
		return
	}
	n, ok := s.coalesceCheck(r, cg, t)
	if !ok {
		s.coalesced.Add(1)
		return
	}
	if len(s.waiting) > 0 {
		s.releaseWaiting(time.Now())
	}
	if s.mustWait(id) {
		s.hold(r, id, ev, n)
		return
	}
	s.emitRecord(r, id, &ev, n)
}

// tick runs after every drain: at most once per WakeupInterval it releases
// waiting events, and at most once a second it sweeps the coalescing table.
func (s *Sensor) tick(now time.Time) {
	if len(s.waiting) > 0 && now.Sub(s.lastRelease) >= s.cfg.WakeupInterval {
		s.releaseWaiting(now)
		s.lastRelease = now
	}
	if now.Sub(s.lastTick) < time.Second {
		return
	}
	s.lastTick = now
	s.sweepCoalesce(now)
	if len(s.exes) > maxExes {
		clear(s.exes)
	}
}

const maxExes = 1 << 16

// trackExe remembers each process's executable from its exec, so connect,
// open and privilege events can name it; a process that exec'd before the
// sensor started is looked up once in /proc.
func (s *Sensor) trackExe(r *wire.Record) string {
	switch r.Kind {
	case wire.KindExec:
		if len(s.exes) < maxExes {
			s.exes[r.PID] = r.Exe
		}
		return r.Exe
	case wire.KindExit:
		exe := s.exes[r.PID]
		delete(s.exes, r.PID)
		return exe
	}
	if exe, ok := s.exes[r.PID]; ok {
		return exe
	}
	exe, _ := os.Readlink("/proc/" + strconv.FormatUint(uint64(r.PID), 10) + "/exe")
	if len(s.exes) < maxExes {
		s.exes[r.PID] = exe
	}
	return exe
}

func recorderEvent(r *wire.Record, t time.Time, cg uint64, exe string) api.RecordedEvent {
	ev := api.RecordedEvent{
		Time: t, Kind: r.Kind.String(), CgroupID: cg, PID: r.PID, PPID: r.PPID,
		UID: r.UID, EUID: r.EUID, Comm: r.Comm, Truncated: r.Truncated,
	}
	switch r.Kind {
	case wire.KindExec:
		ev.Exe, ev.Args, ev.Fileless = r.Exe, r.Args, r.Fileless
	case wire.KindExit:
		ev.Exe = exe
		ev.Exit = api.RecordedExit{Status: r.ExitCode, Start: time.Unix(0, t.UnixNano()-int64(r.Ktime-r.StartKtime))}
	case wire.KindConnect:
		ev.Exe, ev.DAddr, ev.DPort, ev.Proto, ev.Blocked = exe, r.DAddr, r.DPort, wire.ProtoName(r.Proto), r.Blocked
	case wire.KindOpen:
		ev.Exe, ev.Path = exe, r.Path
	case wire.KindPriv:
		ev.Exe, ev.Signal, ev.Ret = exe, r.Signal.String(), r.Ret
		if r.Signal == wire.SigExecMemfd || r.Signal == wire.SigMemfd {
			ev.Path = r.Name
		}
	}
	return ev
}

// ---- coalescing ----

type coalesceKey struct {
	kind wire.Kind
	cg   uint64
	a, b uint64
}

type coalesceEntry struct {
	last       int64
	suppressed uint32
}

const maxCoalesce = 1 << 16

// coalesceCheck reports whether to emit r, and how many identical events
// were suppressed since the last one emitted.
func (s *Sensor) coalesceCheck(r *wire.Record, cg uint64, t time.Time) (uint32, bool) {
	w := s.cfg.CoalesceWindow
	if w <= 0 {
		return 0, true
	}
	k := coalesceKey{kind: r.Kind, cg: cg}
	switch r.Kind {
	case wire.KindExec:
		k.a = s.execHash(r)
	case wire.KindExit:
		k.a = maphash.String(s.seed, r.Comm)
		k.b = uint64(uint32(r.ExitCode))
	case wire.KindConnect:
		a16 := r.DAddr.As16()
		k.a = maphash.Bytes(s.seed, a16[:])
		k.b = uint64(r.DPort) | uint64(r.Proto)<<16 | b2u(r.Blocked)<<24
	case wire.KindOpen:
		k.a = maphash.String(s.seed, r.Path)
		k.b = uint64(r.FileFlags & 3) // O_ACCMODE: a write differs from a read
	case wire.KindPriv:
		k.a = maphash.String(s.seed, r.Name) ^ uint64(r.Signal)<<56
		k.b = uint64(r.Ret) ^ uint64(uint32(r.Syscall))<<32 ^ r.SysArgs[0]
	}
	now := t.UnixNano()
	e, ok := s.coalesce[k]
	if ok && now-e.last < int64(w) {
		e.suppressed++
		return 0, false
	}
	if !ok {
		if len(s.coalesce) >= maxCoalesce {
			return 0, true // full: emit rather than forget
		}
		e = &coalesceEntry{}
		s.coalesce[k] = e
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return n, true
}

// execHash hashes exe and argv. A storm repeats them, and the parser then
// returns the very same strings, so the previous hash is reused after a
// pointer compare.
func (s *Sensor) execHash(r *wire.Record) uint64 {
	l := &s.lastExec
	if l.valid && l.exe == r.Exe && len(l.args) == len(r.Args) && (len(r.Args) == 0 || &l.args[0] == &r.Args[0]) {
		return l.hash
	}
	var h maphash.Hash
	h.SetSeed(s.seed)
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

func (s *Sensor) sweepCoalesce(now time.Time) {
	cut := now.Add(-s.cfg.CoalesceWindow).UnixNano()
	for k, e := range s.coalesce {
		if e.last < cut && e.suppressed == 0 {
			delete(s.coalesce, k)
		}
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// ---- waiting for the API server ----

type waitingEvent struct {
	rec      wire.Record
	id       *attrib.Identity
	ev       api.RecordedEvent
	n        uint32
	deadline time.Time
}

const maxWaiting = 4096

// mustWait: the cluster is known and synced, the record is from a pod, but
// the informer has not seen the pod yet (it was created a moment ago). A
// pod's events wait together, so they still leave in order.
func (s *Sensor) mustWait(id *attrib.Identity) bool {
	if s.inf == nil || !id.InPod() || s.cfg.AttributionWait <= 0 {
		return false
	}
	if s.waitPods[id.PodUID] > 0 {
		return true
	}
	if !s.inf.Synced() || len(s.waiting) >= maxWaiting {
		return false
	}
	_, ok := s.inf.Pod(id.PodUID)
	return !ok
}

func (s *Sensor) hold(r *wire.Record, id *attrib.Identity, ev api.RecordedEvent, n uint32) {
	s.waiting = append(s.waiting, waitingEvent{rec: *r, id: id, ev: ev, n: n, deadline: time.Now().Add(s.cfg.AttributionWait)})
	s.waitPods[id.PodUID]++
}

// releaseWaiting emits held events whose pod is now known or whose wait is
// over, keeping each pod's order.
func (s *Sensor) releaseWaiting(now time.Time) {
	kept := s.waiting[:0]
	blocked := map[string]bool{}
	for i := range s.waiting {
		w := &s.waiting[i]
		uid := w.id.PodUID
		_, known := s.inf.Pod(uid)
		if !blocked[uid] && (known || now.After(w.deadline)) {
			s.emitRecord(&w.rec, w.id, &w.ev, w.n)
			if s.waitPods[uid]--; s.waitPods[uid] <= 0 {
				delete(s.waitPods, uid)
			}
			continue
		}
		blocked[uid] = true
		kept = append(kept, *w)
	}
	clear(s.waiting[len(kept):])
	s.waiting = kept
}

// ---- building CloudEvents ----

// emitRecord builds the CloudEvent for a record and queues it.
func (s *Sensor) emitRecord(r *wire.Record, id *attrib.Identity, ev *api.RecordedEvent, coalesced uint32) {
	ce, err := s.build(r, id, ev, coalesced)
	if err != nil {
		s.buildErrs.Add(1)
		s.log.Error().Err(err).Msg("building event (dropped, counted)")
		s.kickLoss()
		return
	}
	s.em.Emit(ce)
	s.emitted.Add(1)
}

func (s *Sensor) build(r *wire.Record, id *attrib.Identity, ev *api.RecordedEvent, coalesced uint32) (cloudevents.Event, error) {
	data := api.EventData{
		Process: api.Process{
			PID: r.PID, TID: r.TID, PPID: r.PPID, UID: r.UID, EUID: r.EUID, GID: r.GID, EGID: r.EGID,
			Comm: r.Comm, Exe: ev.Exe,
		},
		Cgroup:    api.Cgroup{ID: id.CgroupID, Path: id.CgroupPath},
		Truncated: r.Truncated,
		Coalesced: coalesced,
	}
	ext := map[string]string{
		events.ExtNode: s.cfg.Node,
		events.ExtComm: r.Comm,
		events.ExtExe:  ev.Exe,
		events.ExtUID:  strconv.FormatUint(uint64(r.UID), 10),
	}
	subject := "node/" + s.cfg.Node
	if id.InPod() {
		p := &api.Pod{UID: id.PodUID, ContainerID: id.ContainerID, Runtime: id.Runtime, QoS: id.QoS}
		ext[events.ExtPodUID] = id.PodUID
		ext[events.ExtContainerID] = id.ContainerID
		subject = "pod/" + id.PodUID
		if pm, cm, ok := s.attr.Meta(id); ok {
			p.Namespace, p.Name, p.Owner, p.Deleted = pm.Namespace, pm.Name, pm.Owner, pm.Deleted
			p.Container, p.Image, p.ImageID = cm.Name, cm.Image, cm.ImageID
			ext[events.ExtPodNamespace] = pm.Namespace
			ext[events.ExtPodName] = pm.Name
			ext[events.ExtOwner] = pm.Owner
			ext[events.ExtContainer] = cm.Name
			ext[events.ExtImage] = cm.Image
			subject = "pod/" + pm.Namespace + "/" + pm.Name
		}
		data.Pod = p
	}
	var typ string
	switch r.Kind {
	case wire.KindExec:
		typ = events.TypeProcessExec
		data.Args, data.Fileless = r.Args, r.Fileless
	case wire.KindExit:
		typ = events.TypeProcessExit
		code := r.ExitCode
		data.Exit = &api.Exit{Status: code, Code: code >> 8 & 0xff, Signal: code & 0x7f, LifetimeNs: int64(r.Ktime - r.StartKtime)}
	case wire.KindConnect:
		typ = events.TypeNetworkConnect
		data.Connect = &api.Connect{DAddr: r.DAddr, DPort: r.DPort, Proto: wire.ProtoName(r.Proto), Blocked: r.Blocked}
		ext[events.ExtDestPort] = strconv.Itoa(int(r.DPort))
		ext[events.ExtDestAddr] = r.DAddr.String()
		ext[events.ExtProto] = data.Connect.Proto
		if r.Blocked {
			ext[events.ExtAction] = "blocked"
		}
	case wire.KindOpen:
		typ = events.TypeFileOpen
		data.File = &api.File{Path: r.Path, Flags: r.FileFlags, Write: r.FileFlags&3 != 0}
		ext[events.ExtPath] = r.Path
	case wire.KindPriv:
		typ = events.TypePrivilege
		data.Signal = &api.Signal{
			Name: r.Signal.String(), Syscall: r.Syscall, Ret: r.Ret, Args: r.SysArgs,
			Old:  &api.Creds{UID: r.OldUID, EUID: r.OldEUID, GID: r.OldGID, EGID: r.OldEGID},
			New:  &api.Creds{UID: r.UID, EUID: r.EUID, GID: r.GID, EGID: r.EGID},
			File: r.Name,
		}
		if r.Signal == wire.SigExecMemfd {
			data.Signal.Old, data.Signal.New = nil, nil
		}
		ext[events.ExtSignal] = data.Signal.Name
	default:
		return cloudevents.Event{}, fmt.Errorf("record kind %d", r.Kind)
	}
	key := s.bootID + "/" + strconv.Itoa(int(r.Kind)) + "/" + strconv.FormatUint(r.Ktime, 10) + "/" + strconv.FormatUint(uint64(r.TID), 10)
	if r.Kind == wire.KindPriv {
		key += "/" + strconv.Itoa(int(r.Signal))
	}
	return events.New(events.Spec{
		Type: typ, Source: s.cfg.Source, Subject: subject, Key: key,
		Time: ev.Time, Extensions: ext, Data: data,
	})
}

func (s *Sensor) kickLoss() {
	select {
	case s.lossKick <- struct{}{}:
	default:
	}
}
