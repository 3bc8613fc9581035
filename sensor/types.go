package sensor

import (
	"parry.dev/parry/sensor/internal/emit"
	"parry.dev/parry/sensor/internal/kernel"
	"parry.dev/parry/sensor/internal/recorder"
)

// Types of the sensor's API that live in its internal packages, named here
// so callers (the snapshot step, sensor/client) can use them.
type (
	// HookStatus says whether a kernel hook runs and, if not, why.
	HookStatus = kernel.HookStatus
	// CgroupRecord is one cgroup's history in the flight recorder.
	CgroupRecord = recorder.CgroupRecord
	// RecordedEvent is one event as the flight recorder keeps it.
	RecordedEvent = recorder.Event
	// RecordedProcess is a row of a cgroup's process table.
	RecordedProcess = recorder.Process
	// RecordedConn summarises the connects to one destination.
	RecordedConn = recorder.Conn
	// RecordedFile summarises the opens of one path.
	RecordedFile = recorder.File
	// RecorderStats is the flight recorder's size.
	RecorderStats = recorder.Stats
	// EmitterStats are the delivery counters.
	EmitterStats = emit.Stats
)
