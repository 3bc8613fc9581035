package api

import "net/netip"

// EventData is the JSON data of the sensor's process, network, file and
// privilege events. Fields a kind does not use are omitted.
type EventData struct {
	Process Process `json:"process"`
	Cgroup  Cgroup  `json:"cgroup"`
	Pod     *Pod    `json:"pod,omitempty"`
	// exec
	Args     []string `json:"args,omitempty"`
	Fileless bool     `json:"fileless,omitempty"`
	// exit
	Exit *Exit `json:"exit,omitempty"`
	// connect
	Connect *Connect `json:"connect,omitempty"`
	// open
	File *File `json:"file,omitempty"`
	// privilege
	Signal *Signal `json:"signal,omitempty"`
	// Truncated: a path or argv was longer than the kernel keeps.
	Truncated bool `json:"truncated,omitempty"`
	// Coalesced counts the identical events (same cgroup, kind and details)
	// not emitted since the previous one of this kind; the flight recorder
	// has them all.
	Coalesced uint32 `json:"coalesced,omitempty"`
}

// Process identifies the task.
type Process struct {
	PID  uint32 `json:"pid"`
	TID  uint32 `json:"tid"`
	PPID uint32 `json:"ppid"`
	UID  uint32 `json:"uid"`
	EUID uint32 `json:"euid"`
	GID  uint32 `json:"gid"`
	EGID uint32 `json:"egid"`
	Comm string `json:"comm"`
	Exe  string `json:"exe,omitempty"`
}

// Cgroup is the task's cgroup.
type Cgroup struct {
	ID   uint64 `json:"id"`
	Path string `json:"path,omitempty"`
}

// Pod is the attribution of the cgroup.
type Pod struct {
	UID         string `json:"uid"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name,omitempty"`
	Container   string `json:"container,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	Runtime     string `json:"runtime,omitempty"`
	Image       string `json:"image,omitempty"`
	ImageID     string `json:"imageID,omitempty"`
	Owner       string `json:"owner,omitempty"`
	QoS         string `json:"qos,omitempty"`
	Deleted     bool   `json:"deleted,omitempty"`
}

// Exit is a process's end.
type Exit struct {
	Status     int32 `json:"status"` // wait status
	Code       int32 `json:"code"`
	Signal     int32 `json:"signal,omitempty"`
	LifetimeNs int64 `json:"lifetimeNs"`
}

// Connect is an outbound connect attempt.
type Connect struct {
	DAddr   netip.Addr `json:"daddr"`
	DPort   uint16     `json:"dport"`
	Proto   string     `json:"proto"`
	Blocked bool       `json:"blocked,omitempty"`
}

// File is an open of a watched path.
type File struct {
	Path  string `json:"path"`
	Flags uint32 `json:"flags"`
	Write bool   `json:"write,omitempty"`
}

// Signal is a privilege or evasion signal.
type Signal struct {
	Name string `json:"name"`
	// Syscall is the system call's number on the node's architecture.
	Syscall int32     `json:"syscall"`
	Ret     int64     `json:"ret"`
	Args    [3]uint64 `json:"args"`
	Old     *Creds    `json:"old,omitempty"`
	New     *Creds    `json:"new,omitempty"`
	// File is the memfd name, or the fileless executable's name.
	File string `json:"file,omitempty"`
}

// Creds are a task's credentials.
type Creds struct {
	UID  uint32 `json:"uid"`
	EUID uint32 `json:"euid"`
	GID  uint32 `json:"gid"`
	EGID uint32 `json:"egid"`
}
