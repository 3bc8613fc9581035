// Package recorder is the sensor's flight recorder: what happened inside
// each cgroup recently, kept in memory for a while after the container is
// gone, so the snapshot step can save the history of a pod that no longer
// exists.
//
// Per cgroup it keeps the last events in a ring, and three summaries that
// survive the ring's turnover under a storm: the process table (exec, exit,
// parent), the connections (destination, count, first and last) and the
// sensitive files opened. Everything is bounded: events per cgroup, rows per
// summary, age, and the memory all of it holds (MaxBytes), which the
// recorder accounts as it goes.
package recorder

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"
	"unsafe"

	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/attrib"
)

// proc is a row of a cgroup's process table. It keeps the exit by value
// (no allocation per exit); a snapshot points ExitTime and ExitStatus at
// its own copy.
type proc struct {
	api.RecordedProcess
	exitTime time.Time
	exitCode int32
	exited   bool
}

// DefaultMaxBytes is the default memory bound: with it the sensor's RSS
// stays under 40 MB when the recorder is full (see Config.LimitMemory in package sensor).
const DefaultMaxBytes = 3 << 20

// Options bound the recorder.
type Options struct {
	TTL       time.Duration // events older than this are forgotten
	PerCgroup int           // events kept per cgroup
	// MaxBytes bounds the memory the recorder holds, events and summaries
	// together: an estimate from the sizes of what it keeps (struct and
	// string bytes), which errs high, since strings are often shared.
	MaxBytes int
	MaxRows  int // rows per summary table and cgroup
	// Redact removes secrets from an exec's arguments before they are
	// kept; nil applies the default rules.
	Redact *redact.Rules
}

func (o *Options) defaults() {
	if o.TTL <= 0 {
		o.TTL = 15 * time.Minute
	}
	if o.PerCgroup <= 0 {
		o.PerCgroup = 2048
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxRows <= 0 {
		o.MaxRows = 512
	}
}

// Recorder is safe for concurrent use: the sensor adds from its reader,
// the HTTP server reads.
type Recorder struct {
	o Options

	mu      sync.Mutex
	cgroups map[uint64]*cgroupLog
	pods    map[string]map[uint64]struct{}
	total   int // events held
	bytes   int // memory held, as accounted by the cgroups
	evicted uint64
}

// Accounted sizes. A row also costs its map slot (key, pointer, control
// byte, over the table's load factor) and its allocation's size class, a
// cgroup its maps and identity.
const (
	eventSize      = int(unsafe.Sizeof(api.RecordedEvent{}))
	procSize       = int(unsafe.Sizeof(proc{})) + 64
	connSize       = int(unsafe.Sizeof(api.RecordedConn{})) + 128
	fileSize       = int(unsafe.Sizeof(api.RecordedFile{})) + 64
	cgroupOverhead = 1024
)

// heldStrings is what an event's strings add to its slot; the kinds,
// protocols and signals are constants and cost nothing.
func heldStrings(ev *api.RecordedEvent) int {
	return len(ev.Comm) + len(ev.Exe) + len(ev.Path) + argsCost(ev.Args)
}

func procCost(p *proc) int { return procSize + len(p.Exe) + argsCost(p.Args) }

// argsCost is the slice's backing array and the strings' bytes.
func argsCost(args []string) int {
	n := 16 * len(args)
	for _, a := range args {
		n += len(a)
	}
	return n
}

type connKey struct {
	addr  netip.Addr
	port  uint16
	proto string
}

type cgroupLog struct {
	ident      attrib.Identity
	ring       []api.RecordedEvent
	head, n    int
	first      time.Time
	last       time.Time
	evicted    uint64
	procs      map[uint32]*proc
	procsPeak  int      // most rows procs has held since its table was last fitted
	exited     []uint32 // pids of exited processes, oldest first, for O(1) eviction
	conns      map[connKey]*api.RecordedConn
	files      map[string]*api.RecordedFile
	overflowed uint64 // summary rows not kept because a table was full
	bytes      int    // memory held, accounted as in Recorder.bytes
}

// New returns an empty recorder.
func New(o Options) *Recorder {
	o.defaults()
	return &Recorder{o: o, cgroups: map[uint64]*cgroupLog{}, pods: map[string]map[uint64]struct{}{}}
}

// Add records ev for the cgroup id describes.
func (r *Recorder) Add(id *attrib.Identity, ev api.RecordedEvent) {
	if len(ev.Args) > 1 {
		ev.Args = r.o.Redact.Args(ev.Args)
	}
	r.mu.Lock()
	c := r.cgroups[id.CgroupID]
	if c == nil {
		c = &cgroupLog{
			ident: *id, first: ev.Time,
			procs: map[uint32]*proc{}, conns: map[connKey]*api.RecordedConn{}, files: map[string]*api.RecordedFile{},
			bytes: cgroupOverhead + len(id.CgroupPath),
		}
		r.cgroups[id.CgroupID] = c
		r.bytes += c.bytes
		if id.PodUID != "" {
			if r.pods[id.PodUID] == nil {
				r.pods[id.PodUID] = map[uint64]struct{}{}
			}
			r.pods[id.PodUID][id.CgroupID] = struct{}{}
		}
	} else if c.ident.PodUID == "" && id.PodUID != "" {
		c.ident = *id
		if r.pods[id.PodUID] == nil {
			r.pods[id.PodUID] = map[uint64]struct{}{}
		}
		r.pods[id.PodUID][id.CgroupID] = struct{}{}
	}
	c.last = ev.Time
	before := c.bytes
	r.summarise(c, &ev)
	// a ring grows only while the bound has room: past it, a full ring
	// turns over instead, so growing never forces a shrink
	if c.push(ev, r.o.PerCgroup, r.bytes+len(c.ring)*eventSize <= r.o.MaxBytes) {
		r.evicted++
	} else {
		r.total++
	}
	r.bytes += c.bytes - before
	if r.bytes > r.o.MaxBytes {
		r.shrinkLocked()
	}
	r.mu.Unlock() // not deferred: Add is the hot path, and cannot panic
}

// push appends to the ring, growing it up to capacity; it reports whether
// the oldest event was overwritten to make room.
func (c *cgroupLog) push(ev api.RecordedEvent, capacity int, mayGrow bool) bool {
	if c.n == len(c.ring) {
		if len(c.ring) > 0 && (len(c.ring) >= capacity || !mayGrow) {
			c.bytes += heldStrings(&ev) - heldStrings(&c.ring[c.head])
			c.ring[c.head] = ev
			c.head = (c.head + 1) % len(c.ring)
			c.evicted++
			return true
		}
		// most cgroups see few events: start small, double
		c.resize(min(capacity, max(16, 2*len(c.ring))))
	}
	c.ring[(c.head+c.n)%len(c.ring)] = ev
	c.n++
	c.bytes += heldStrings(&ev)
	return false
}

// resize moves the events into a ring of the given size (at least c.n).
func (c *cgroupLog) resize(size int) {
	var ring []api.RecordedEvent
	if size > 0 {
		ring = make([]api.RecordedEvent, size)
	}
	for i := range c.n {
		ring[i] = c.ring[(c.head+i)%len(c.ring)]
	}
	c.bytes += (size - len(c.ring)) * eventSize
	c.ring, c.head = ring, 0
}

// dropOldest forgets the k oldest events and returns how many went. A ring
// left half empty shrinks, so the memory goes too.
func (c *cgroupLog) dropOldest(k int) int {
	k = min(k, c.n)
	for i := range k {
		slot := &c.ring[(c.head+i)%len(c.ring)]
		c.bytes -= heldStrings(slot)
		*slot = api.RecordedEvent{}
	}
	if k > 0 {
		c.head = (c.head + k) % len(c.ring)
	}
	c.n -= k
	switch {
	case c.n == 0:
		c.resize(0)
	case c.n <= len(c.ring)/2 && len(c.ring) > 16:
		c.resize(max(16, c.n+c.n/4))
	}
	return k
}

// shrinkLocked brings the memory held back to 15/16 of MaxBytes (so the
// next few hundred events need no shrink), taking from the cgroup that
// holds the most: the oldest eighth of its events, of its exited-process
// rows, and of its connections and files (the least recently active,
// counted as overflowed), so neither the events nor the summaries of a busy
// pod crowd out the other. A storm in one pod cannot erase every other
// pod's history. Rows of live processes stay: MaxRows bounds them, and the
// TTL their cgroups.
func (r *Recorder) shrinkLocked() {
	target := r.o.MaxBytes - r.o.MaxBytes/16
	for r.bytes > target {
		var big *cgroupLog
		for _, c := range r.cgroups {
			if c.droppable() && (big == nil || c.bytes > big.bytes) {
				big = c
			}
		}
		if big == nil {
			return
		}
		before := big.bytes
		if big.n > 0 {
			n := big.dropOldest(max(big.n/8, 1))
			big.evicted += uint64(n)
			r.total -= n
			r.evicted += uint64(n)
		}
		big.dropRows()
		r.bytes += big.bytes - before
	}
}

// droppable: the cgroup holds something shrinkLocked may take.
func (c *cgroupLog) droppable() bool {
	return c.n > 0 || len(c.exited) > 0 || len(c.conns) > 0 || len(c.files) > 0
}

// dropRows forgets the oldest eighth of the summary rows that may go.
func (c *cgroupLog) dropRows() {
	if len(c.exited) > 0 {
		c.dropExitedRows(max(len(c.exited)/8, 1))
	}
	if len(c.conns) > 0 {
		gone := dropStaleRows(&c.conns, max(len(c.conns)/8, 1), func(cn *api.RecordedConn) time.Time { return cn.Last })
		c.bytes -= len(gone) * connSize
		c.overflowed += uint64(len(gone))
	}
	if len(c.files) > 0 {
		for _, f := range dropStaleRows(&c.files, max(len(c.files)/8, 1), func(f *api.RecordedFile) time.Time { return f.Last }) {
			c.bytes -= fileSize + len(f.Path)
			c.overflowed++
		}
	}
}

func (r *Recorder) summarise(c *cgroupLog, ev *api.RecordedEvent) {
	switch ev.Kind {
	case "exec":
		p, ok := c.procs[ev.PID]
		switch {
		case ok: // exec again in the same process
			c.bytes -= procCost(p)
		case len(c.procs) < r.o.MaxRows:
			p = &proc{}
			c.procs[ev.PID] = p
			c.procsPeak = max(c.procsPeak, len(c.procs))
		default:
			if p = c.evictExited(); p == nil {
				c.overflowed++
				return
			}
			c.bytes -= procCost(p)
			c.procs[ev.PID] = p
		}
		*p = proc{RecordedProcess: api.RecordedProcess{PID: ev.PID, PPID: ev.PPID, UID: ev.UID, EUID: ev.EUID, Exe: ev.Exe, Args: ev.Args, Exec: ev.Time, Fileless: ev.Fileless}}
		c.bytes += procCost(p)
	case "exit":
		if p, ok := c.procs[ev.PID]; ok && !p.exited {
			p.exited, p.exitTime, p.exitCode = true, ev.Time, ev.Exit.Status
			c.exited = append(c.exited, ev.PID)
			if len(c.exited) > 2*r.o.MaxRows {
				c.compactExited() // reused pids left stale entries
			}
		}
	case "connect":
		k := connKey{ev.DAddr, ev.DPort, ev.Proto}
		cn, ok := c.conns[k]
		if !ok {
			if len(c.conns) >= r.o.MaxRows {
				c.overflowed++
				return
			}
			cn = &api.RecordedConn{DAddr: ev.DAddr, DPort: ev.DPort, Proto: ev.Proto, First: ev.Time}
			c.conns[k] = cn
			c.bytes += connSize
		}
		cn.Count++
		if ev.Blocked {
			cn.Blocked++
		}
		cn.Last = ev.Time
	case "open":
		f, ok := c.files[ev.Path]
		if !ok {
			if len(c.files) >= r.o.MaxRows {
				c.overflowed++
				return
			}
			f = &api.RecordedFile{Path: ev.Path, First: ev.Time}
			c.files[ev.Path] = f
			c.bytes += fileSize + len(ev.Path)
		}
		f.Count++
		f.Last = ev.Time
	}
}

// evictExited frees the row of the earliest exited process and returns it
// for reuse (a pid reused since is skipped: its row belongs to the new
// process), or nil when every process is alive.
func (c *cgroupLog) evictExited() *proc {
	for len(c.exited) > 0 {
		pid := c.exited[0]
		c.exited = c.exited[1:]
		if p, ok := c.procs[pid]; ok && p.exited {
			delete(c.procs, pid)
			return p
		}
	}
	return nil
}

// dropExitedRows forgets up to k rows of exited processes, oldest first.
// A Go map keeps its table when entries go, so a table down to a quarter of
// its peak is copied into a fitting one.
func (c *cgroupLog) dropExitedRows(k int) {
	for range k {
		p := c.evictExited()
		if p == nil {
			break
		}
		c.bytes -= procCost(p)
	}
	if len(c.procs) <= c.procsPeak/4 {
		c.procs = refit(c.procs)
		c.procsPeak = len(c.procs)
	}
}

// dropStaleRows forgets the k rows of *m least recently active and returns
// them; the map is rebuilt to fit, since a Go map keeps its table.
func dropStaleRows[K comparable, V any](m *map[K]*V, k int, last func(*V) time.Time) []*V {
	keys := slices.Collect(maps.Keys(*m))
	slices.SortFunc(keys, func(a, b K) int { return last((*m)[a]).Compare(last((*m)[b])) })
	gone := make([]*V, 0, k)
	for _, key := range keys[:min(k, len(keys))] {
		gone = append(gone, (*m)[key])
		delete(*m, key)
	}
	*m = refit(*m)
	return gone
}

// refit copies m into a table sized for what it holds (maps.Clone keeps
// the old table's size).
func refit[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (c *cgroupLog) compactExited() {
	seen := make(map[uint32]bool, len(c.exited))
	kept := c.exited[:0]
	for _, pid := range c.exited {
		if p, ok := c.procs[pid]; ok && p.exited && !seen[pid] {
			seen[pid] = true
			kept = append(kept, pid)
		}
	}
	c.exited = kept
}

// Sweep forgets events older than the TTL, and cgroups with nothing left.
func (r *Recorder) Sweep(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cut := now.Add(-r.o.TTL)
	for id, c := range r.cgroups {
		k := 0
		for k < c.n && c.ring[(c.head+k)%len(c.ring)].Time.Before(cut) {
			k++
		}
		before := c.bytes
		r.total -= c.dropOldest(k) // aged out: not counted as evicted
		r.bytes += c.bytes - before
		if c.n == 0 && c.last.Before(cut) {
			r.bytes -= c.bytes
			delete(r.cgroups, id)
			if set := r.pods[c.ident.PodUID]; set != nil {
				delete(set, id)
				if len(set) == 0 {
					delete(r.pods, c.ident.PodUID)
				}
			}
		}
	}
}

// Stats returns the current counts.
func (r *Recorder) Stats() api.RecorderStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return api.RecorderStats{Cgroups: len(r.cgroups), Pods: len(r.pods), Events: r.total, Bytes: r.bytes, Evicted: r.evicted}
}

// Cgroup returns one cgroup's history.
func (r *Recorder) Cgroup(id uint64) (api.CgroupRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.cgroups[id]
	if !ok {
		return api.CgroupRecord{}, false
	}
	return c.snapshot(), true
}

// Pod returns the histories of every cgroup of a pod, oldest first.
func (r *Recorder) Pod(uid string) ([]api.CgroupRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	set, ok := r.pods[uid]
	if !ok {
		return nil, false
	}
	out := make([]api.CgroupRecord, 0, len(set))
	for id := range set {
		out = append(out, r.cgroups[id].snapshot())
	}
	slices.SortFunc(out, func(a, b api.CgroupRecord) int { return a.First.Compare(b.First) })
	return out, true
}

// Pods lists the pods with history, most recently active first.
func (r *Recorder) Pods() []api.PodSummary {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.PodSummary, 0, len(r.pods))
	for uid, set := range r.pods {
		s := api.PodSummary{PodUID: uid, Cgroups: len(set)}
		for id := range set {
			c := r.cgroups[id]
			s.Events += c.n
			if c.last.After(s.Last) {
				s.Last = c.last
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b api.PodSummary) int { return b.Last.Compare(a.Last) })
	return out
}

func (c *cgroupLog) snapshot() api.CgroupRecord {
	rec := api.CgroupRecord{
		ID: c.ident.CgroupID, Path: c.ident.CgroupPath, PodUID: c.ident.PodUID,
		ContainerID: c.ident.ContainerID, Runtime: c.ident.Runtime,
		First: c.first, Last: c.last, Evicted: c.evicted, Overflowed: c.overflowed,
		Processes: make([]api.RecordedProcess, len(c.procs)), Connections: make([]api.RecordedConn, 0, len(c.conns)),
		Files: make([]api.RecordedFile, 0, len(c.files)), Events: make([]api.RecordedEvent, 0, c.n),
	}
	// the copies the exit pointers point at
	procs := make([]proc, 0, len(c.procs))
	for _, p := range c.procs {
		procs = append(procs, *p)
	}
	slices.SortFunc(procs, func(a, b proc) int { return cmp.Or(a.Exec.Compare(b.Exec), cmp.Compare(a.PID, b.PID)) })
	for i := range procs {
		p := &procs[i]
		if p.exited {
			p.ExitTime, p.ExitStatus = &p.exitTime, &p.exitCode
		}
		rec.Processes[i] = p.RecordedProcess
	}
	for _, cn := range c.conns {
		rec.Connections = append(rec.Connections, *cn)
	}
	slices.SortFunc(rec.Connections, func(a, b api.RecordedConn) int { return a.First.Compare(b.First) })
	for _, f := range c.files {
		rec.Files = append(rec.Files, *f)
	}
	slices.SortFunc(rec.Files, func(a, b api.RecordedFile) int { return a.First.Compare(b.First) })
	for i := range c.n {
		rec.Events = append(rec.Events, c.ring[(c.head+i)%len(c.ring)])
	}
	return rec
}
