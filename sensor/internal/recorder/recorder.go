// Package recorder is the sensor's flight recorder: what happened inside
// each cgroup recently, kept in memory for a while after the container is
// gone, so the snapshot step can save the history of a pod that no longer
// exists.
//
// Per cgroup it keeps the last events in a ring, and three summaries that
// survive the ring's turnover under a storm: the process table (exec, exit,
// parent), the connections (destination, count, first and last) and the
// sensitive files opened. Everything is bounded: events per cgroup, events in
// total, rows per summary, and age.
package recorder

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"

	"parry.dev/parry/sensor/internal/attrib"
)

// Event is one kernel record as the recorder keeps and serves it.
type Event struct {
	Time      time.Time  `json:"time"`
	Kind      string     `json:"kind"`
	CgroupID  uint64     `json:"cgroupId"`
	PID       uint32     `json:"pid"`
	PPID      uint32     `json:"ppid,omitempty"`
	UID       uint32     `json:"uid"`
	EUID      uint32     `json:"euid"`
	Comm      string     `json:"comm,omitempty"`
	Exe       string     `json:"exe,omitempty"`
	Args      []string   `json:"args,omitempty"`
	Path      string     `json:"path,omitempty"`
	DAddr     netip.Addr `json:"daddr,omitzero"`
	DPort     uint16     `json:"dport,omitempty"`
	Proto     string     `json:"proto,omitempty"`
	Signal    string     `json:"signal,omitempty"`
	Ret       int64      `json:"ret,omitempty"`
	Exit      Exit       `json:"exit,omitzero"` // a value: no allocation per exit
	Truncated bool       `json:"truncated,omitempty"`
	Blocked   bool       `json:"blocked,omitempty"`
	Fileless  bool       `json:"fileless,omitempty"`
}

// Exit is the outcome of an exit event.
type Exit struct {
	Status int32     `json:"status"` // wait status: code<<8 | signal
	Start  time.Time `json:"start"`
}

// Process is a row of a cgroup's process table.
type Process struct {
	PID        uint32     `json:"pid"`
	PPID       uint32     `json:"ppid"`
	UID        uint32     `json:"uid"`
	EUID       uint32     `json:"euid"`
	Exe        string     `json:"exe"`
	Args       []string   `json:"args,omitempty"`
	Exec       time.Time  `json:"exec"`
	ExitTime   *time.Time `json:"exitTime,omitempty"`
	ExitStatus *int32     `json:"exitStatus,omitempty"`
	Fileless   bool       `json:"fileless,omitempty"`

	// The table keeps the exit by value (no allocation per exit); a
	// snapshot points ExitTime and ExitStatus at its own copy.
	exited   bool
	exitTime time.Time
	exitCode int32
}

// Conn summarises the connects to one destination.
type Conn struct {
	DAddr   netip.Addr `json:"daddr"`
	DPort   uint16     `json:"dport"`
	Proto   string     `json:"proto"`
	Count   uint64     `json:"count"`
	Blocked uint64     `json:"blocked,omitempty"`
	First   time.Time  `json:"first"`
	Last    time.Time  `json:"last"`
}

// File summarises the opens of one path.
type File struct {
	Path  string    `json:"path"`
	Count uint64    `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// Options bound the recorder.
type Options struct {
	TTL       time.Duration // events older than this are forgotten
	PerCgroup int           // events kept per cgroup
	MaxEvents int           // events kept in total
	MaxRows   int           // rows per summary table and cgroup
}

func (o *Options) defaults() {
	if o.TTL <= 0 {
		o.TTL = 15 * time.Minute
	}
	if o.PerCgroup <= 0 {
		o.PerCgroup = 2048
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = 32768
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
	total   int
	evicted uint64
}

type connKey struct {
	addr  netip.Addr
	port  uint16
	proto string
}

type cgroupLog struct {
	ident      attrib.Identity
	ring       []Event
	head, n    int
	first      time.Time
	last       time.Time
	evicted    uint64
	procs      map[uint32]*Process
	exited     []uint32 // pids of exited processes, oldest first, for O(1) eviction
	conns      map[connKey]*Conn
	files      map[string]*File
	overflowed uint64 // summary rows not kept because a table was full
}

// New returns an empty recorder.
func New(o Options) *Recorder {
	o.defaults()
	return &Recorder{o: o, cgroups: map[uint64]*cgroupLog{}, pods: map[string]map[uint64]struct{}{}}
}

// Add records ev for the cgroup id describes.
func (r *Recorder) Add(id *attrib.Identity, ev Event) {
	r.mu.Lock()
	c := r.cgroups[id.CgroupID]
	if c == nil {
		c = &cgroupLog{
			ident: *id, first: ev.Time,
			procs: map[uint32]*Process{}, conns: map[connKey]*Conn{}, files: map[string]*File{},
		}
		r.cgroups[id.CgroupID] = c
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
	r.summarise(c, &ev)
	if c.push(ev, r.o.PerCgroup) {
		r.evicted++
	} else {
		r.total++
	}
	if r.total > r.o.MaxEvents {
		r.shrinkLocked()
	}
	r.mu.Unlock() // not deferred: Add is the hot path, and cannot panic
}

// push appends to the ring, growing it up to capacity; it reports whether
// the oldest event was overwritten to make room.
func (c *cgroupLog) push(ev Event, capacity int) bool {
	if c.n == len(c.ring) {
		if len(c.ring) >= capacity {
			c.ring[c.head] = ev
			c.head = (c.head + 1) % len(c.ring)
			c.evicted++
			return true
		}
		// most cgroups see few events: start small, double
		grown := make([]Event, min(capacity, max(16, 2*len(c.ring))))
		for i := range c.n {
			grown[i] = c.ring[(c.head+i)%len(c.ring)]
		}
		c.ring, c.head = grown, 0
	}
	c.ring[(c.head+c.n)%len(c.ring)] = ev
	c.n++
	return false
}

// dropOldest forgets the k oldest events and returns how many went.
func (c *cgroupLog) dropOldest(k int) int {
	k = min(k, c.n)
	for i := range k {
		c.ring[(c.head+i)%len(c.ring)] = Event{}
	}
	if k > 0 {
		c.head = (c.head + k) % len(c.ring)
	}
	c.n -= k
	return k
}

// shrinkLocked brings the total back under MaxEvents by taking the oldest
// eighth from the cgroup with the most events: a storm in one pod cannot
// erase every other pod's history.
func (r *Recorder) shrinkLocked() {
	for r.total > r.o.MaxEvents {
		var big *cgroupLog
		for _, c := range r.cgroups {
			if big == nil || c.n > big.n {
				big = c
			}
		}
		if big == nil || big.n == 0 {
			return
		}
		k := max(big.n/8, 1, r.total-r.o.MaxEvents)
		n := big.dropOldest(k)
		big.evicted += uint64(n)
		r.total -= n
		r.evicted += uint64(n)
	}
}

func (r *Recorder) summarise(c *cgroupLog, ev *Event) {
	switch ev.Kind {
	case "exec":
		p, ok := c.procs[ev.PID]
		if !ok {
			if len(c.procs) < r.o.MaxRows {
				p = &Process{}
			} else if p = c.evictExited(); p == nil {
				c.overflowed++
				return
			}
			c.procs[ev.PID] = p
		}
		*p = Process{PID: ev.PID, PPID: ev.PPID, UID: ev.UID, EUID: ev.EUID, Exe: ev.Exe, Args: ev.Args, Exec: ev.Time, Fileless: ev.Fileless}
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
			cn = &Conn{DAddr: ev.DAddr, DPort: ev.DPort, Proto: ev.Proto, First: ev.Time}
			c.conns[k] = cn
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
			f = &File{Path: ev.Path, First: ev.Time}
			c.files[ev.Path] = f
		}
		f.Count++
		f.Last = ev.Time
	}
}

// evictExited frees the row of the earliest exited process and returns it
// for reuse (a pid reused since is skipped: its row belongs to the new
// process), or nil when every process is alive.
func (c *cgroupLog) evictExited() *Process {
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
		r.total -= c.dropOldest(k) // aged out: not counted as evicted
		if c.n == 0 && c.last.Before(cut) {
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

// Stats reports the recorder's size.
type Stats struct {
	Cgroups int    `json:"cgroups"`
	Pods    int    `json:"pods"`
	Events  int    `json:"events"`
	Evicted uint64 `json:"evicted"`
}

// Stats returns the current counts.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{Cgroups: len(r.cgroups), Pods: len(r.pods), Events: r.total, Evicted: r.evicted}
}

// CgroupRecord is one cgroup's history.
type CgroupRecord struct {
	ID          uint64    `json:"id"`
	Path        string    `json:"path,omitempty"`
	PodUID      string    `json:"podUID,omitempty"`
	ContainerID string    `json:"containerID,omitempty"`
	Runtime     string    `json:"runtime,omitempty"`
	First       time.Time `json:"first"`
	Last        time.Time `json:"last"`
	// Evicted events made room for newer ones; Overflowed summary rows did
	// not fit their table. Both say the history is incomplete.
	Evicted     uint64    `json:"evicted,omitempty"`
	Overflowed  uint64    `json:"overflowed,omitempty"`
	Processes   []Process `json:"processes"`
	Connections []Conn    `json:"connections"`
	Files       []File    `json:"files"`
	Events      []Event   `json:"events"`
}

// Cgroup returns one cgroup's history.
func (r *Recorder) Cgroup(id uint64) (CgroupRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.cgroups[id]
	if !ok {
		return CgroupRecord{}, false
	}
	return c.snapshot(), true
}

// Pod returns the histories of every cgroup of a pod, oldest first.
func (r *Recorder) Pod(uid string) ([]CgroupRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	set, ok := r.pods[uid]
	if !ok {
		return nil, false
	}
	out := make([]CgroupRecord, 0, len(set))
	for id := range set {
		out = append(out, r.cgroups[id].snapshot())
	}
	slices.SortFunc(out, func(a, b CgroupRecord) int { return a.First.Compare(b.First) })
	return out, true
}

// PodSummary lists a pod the recorder holds.
type PodSummary struct {
	PodUID  string    `json:"podUID"`
	Cgroups int       `json:"cgroups"`
	Events  int       `json:"events"`
	Last    time.Time `json:"last"`
}

// Pods lists the pods with history, most recently active first.
func (r *Recorder) Pods() []PodSummary {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]PodSummary, 0, len(r.pods))
	for uid, set := range r.pods {
		s := PodSummary{PodUID: uid, Cgroups: len(set)}
		for id := range set {
			c := r.cgroups[id]
			s.Events += c.n
			if c.last.After(s.Last) {
				s.Last = c.last
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b PodSummary) int { return b.Last.Compare(a.Last) })
	return out
}

func (c *cgroupLog) snapshot() CgroupRecord {
	rec := CgroupRecord{
		ID: c.ident.CgroupID, Path: c.ident.CgroupPath, PodUID: c.ident.PodUID,
		ContainerID: c.ident.ContainerID, Runtime: c.ident.Runtime,
		First: c.first, Last: c.last, Evicted: c.evicted, Overflowed: c.overflowed,
		Processes: make([]Process, 0, len(c.procs)), Connections: make([]Conn, 0, len(c.conns)),
		Files: make([]File, 0, len(c.files)), Events: make([]Event, 0, c.n),
	}
	for _, p := range c.procs {
		rec.Processes = append(rec.Processes, *p)
	}
	slices.SortFunc(rec.Processes, func(a, b Process) int { return cmp.Or(a.Exec.Compare(b.Exec), cmp.Compare(a.PID, b.PID)) })
	for i := range rec.Processes {
		if p := &rec.Processes[i]; p.exited {
			p.ExitTime, p.ExitStatus = &p.exitTime, &p.exitCode
		}
	}
	for _, cn := range c.conns {
		rec.Connections = append(rec.Connections, *cn)
	}
	slices.SortFunc(rec.Connections, func(a, b Conn) int { return a.First.Compare(b.First) })
	for _, f := range c.files {
		rec.Files = append(rec.Files, *f)
	}
	slices.SortFunc(rec.Files, func(a, b File) int { return a.First.Compare(b.First) })
	for i := range c.n {
		rec.Events = append(rec.Events, c.ring[(c.head+i)%len(c.ring)])
	}
	return rec
}
