package api

import "time"

// Health is the data of dev.parry.sensor.health.v1 and of GET /healthz.
// Counters are cumulative since the sensor started, so a lost health event
// is made good by the next.
type Health struct {
	Node      string       `json:"node"`
	BootID    string       `json:"bootID"`
	Started   time.Time    `json:"started"`
	UptimeSec int64        `json:"uptimeSec"`
	StartupMs int64        `json:"startupMs"` // New until the first record was read
	Hooks     []HookStatus `json:"hooks"`
	// Kinds: per record kind, the kernel's seen and dropped (no room in
	// the ring buffer) and the sensor's received. seen = received +
	// dropped + inFlight, where inFlight is what sits unread in the ring.
	Kinds map[string]KindCounts `json:"kinds"`
	// Lost totals every event that did not make it: ring buffer drops,
	// malformed records, events that could not be built, spool overflow
	// and sink rejections.
	Lost       Loss          `json:"lost"`
	LostTotal  uint64        `json:"lostTotal"`
	NewLoss    bool          `json:"newLoss"` // lost something since the previous health event
	Emitted    uint64        `json:"emitted"`
	Coalesced  uint64        `json:"coalesced"`
	OutOfScope uint64        `json:"outOfScope,omitempty"`
	Emitter    *EmitterStats `json:"emitter,omitempty"`
	Recorder   RecorderStats `json:"recorder"`
	Cgroups    int           `json:"cgroupsAttributed"`
	// Wakeups counts the times the reader slept and the kernel woke it,
	// StretchedWakeups those at an interval a storm stretched,
	// WakeupIntervalUs is the interval now; FlushKicks the times the
	// reader armed the kernel's flush timer for records that cannot (see
	// the package sensor's documentation).
	Wakeups          uint64 `json:"wakeups"`
	StretchedWakeups uint64 `json:"stretchedWakeups"`
	WakeupIntervalUs int64  `json:"wakeupIntervalUs"`
	FlushKicks       uint64 `json:"flushKicks"`
	RSSBytes         int64  `json:"rssBytes"`
}

// HookStatus says whether one kernel hook runs and, if not, why.
type HookStatus struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"` // tp_btf, raw_tp, tracepoint, cgroup, fentry, lsm, kprobe
	Program string `json:"program,omitempty"`
	Active  bool   `json:"active"`
	// Optional hooks are probed only; the sensor does not need them.
	Optional bool   `json:"optional,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// KindCounts are the counters of one record kind.
type KindCounts struct {
	Seen     uint64 `json:"seen"`
	Dropped  uint64 `json:"dropped"`
	Received uint64 `json:"received"`
	InFlight uint64 `json:"inFlight"`
}

// Loss breaks down lost events by cause.
type Loss struct {
	RingBuffer    uint64 `json:"ringBuffer"`
	Malformed     uint64 `json:"malformed"`
	Build         uint64 `json:"build"`
	SpoolOverflow uint64 `json:"spoolOverflow"`
	Rejected      uint64 `json:"rejected"`
}

// EmitterStats are the delivery counters. They are cumulative except
// Queued, Spooled and SpoolBytes.
type EmitterStats struct {
	Sent          uint64 `json:"sent"`
	Failures      uint64 `json:"failures"`      // attempts that failed and will be retried
	Rejected      uint64 `json:"rejected"`      // events the sink refused for good (4xx)
	SpoolOverflow uint64 `json:"spoolOverflow"` // events lost: queue and spool full
	SpoolCorrupt  uint64 `json:"spoolCorrupt"`  // spool segments cut short by a crash
	Queued        int    `json:"queued"`
	Spooled       int    `json:"spooled"`
	SpoolBytes    int64  `json:"spoolBytes"`
	SinkUp        bool   `json:"sinkUp"`
}

// RecorderStats is the flight recorder's size.
type RecorderStats struct {
	Cgroups int    `json:"cgroups"`
	Pods    int    `json:"pods"`
	Events  int    `json:"events"`
	Bytes   int    `json:"bytes"` // memory held, as accounted against its bound
	Evicted uint64 `json:"evicted"`
}
