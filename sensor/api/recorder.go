package api

import (
	"net/netip"
	"time"
)

// PodHistory is the flight recorder's answer for one pod
// (GET /v1/pods/{uid}).
type PodHistory struct {
	PodUID  string         `json:"podUID"`
	Pod     *Pod           `json:"pod,omitempty"`
	Node    string         `json:"node"`
	Taken   time.Time      `json:"taken"`
	Cgroups []CgroupRecord `json:"cgroups"`
}

// PodSummary lists a pod the flight recorder holds (GET /v1/pods).
type PodSummary struct {
	PodUID  string    `json:"podUID"`
	Cgroups int       `json:"cgroups"`
	Events  int       `json:"events"`
	Last    time.Time `json:"last"`
}

// CgroupRecord is one cgroup's history (GET /v1/cgroups/{id}, and each
// cgroup of a PodHistory).
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
	Evicted     uint64            `json:"evicted,omitempty"`
	Overflowed  uint64            `json:"overflowed,omitempty"`
	Processes   []RecordedProcess `json:"processes"`
	Connections []RecordedConn    `json:"connections"`
	Files       []RecordedFile    `json:"files"`
	Events      []RecordedEvent   `json:"events"`
}

// RecordedEvent is one kernel record as the flight recorder keeps and
// serves it.
type RecordedEvent struct {
	Time      time.Time    `json:"time"`
	Kind      string       `json:"kind"`
	CgroupID  uint64       `json:"cgroupId"`
	PID       uint32       `json:"pid"`
	PPID      uint32       `json:"ppid,omitempty"`
	UID       uint32       `json:"uid"`
	EUID      uint32       `json:"euid"`
	Comm      string       `json:"comm,omitempty"`
	Exe       string       `json:"exe,omitempty"`
	Args      []string     `json:"args,omitempty"`
	Path      string       `json:"path,omitempty"`
	DAddr     netip.Addr   `json:"daddr,omitzero"`
	DPort     uint16       `json:"dport,omitempty"`
	Proto     string       `json:"proto,omitempty"`
	Signal    string       `json:"signal,omitempty"`
	Ret       int64        `json:"ret,omitempty"`
	Exit      RecordedExit `json:"exit,omitzero"` // a value: no allocation per exit
	Truncated bool         `json:"truncated,omitempty"`
	Blocked   bool         `json:"blocked,omitempty"`
	Fileless  bool         `json:"fileless,omitempty"`
}

// RecordedExit is the outcome of an exit event.
type RecordedExit struct {
	Status int32     `json:"status"` // wait status: code<<8 | signal
	Start  time.Time `json:"start"`
}

// RecordedProcess is a row of a cgroup's process table.
type RecordedProcess struct {
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
}

// RecordedConn summarises the connects to one destination.
type RecordedConn struct {
	DAddr   netip.Addr `json:"daddr"`
	DPort   uint16     `json:"dport"`
	Proto   string     `json:"proto"`
	Count   uint64     `json:"count"`
	Blocked uint64     `json:"blocked,omitempty"`
	First   time.Time  `json:"first"`
	Last    time.Time  `json:"last"`
}

// RecordedFile summarises the opens of one path.
type RecordedFile struct {
	Path  string    `json:"path"`
	Count uint64    `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// Binaries answers GET /v1/pods/{uid}/binaries: for each executable of the
// pod's processes the flight recorder holds, keyed by its path,
// "sha256:<hex> (<file read>)", read through /proc/<host pid>/exe while the
// process lives and /proc/<pid>/cgroup still names the pod, or
// "unreadable: <why>" (it exited, the PID was reused, ...). The snapshot
// step saves it as binaries.json.
type Binaries map[string]string

// BlockResult answers PUT and DELETE /v1/pods/{uid}/block.
type BlockResult struct {
	PodUID   string `json:"podUID"`
	CgroupID uint64 `json:"cgroupId"`
	Blocked  bool   `json:"blocked"`
}

// Error is the body of every answer with an error status.
type Error struct {
	Error string `json:"error"`
}
