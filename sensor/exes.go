package sensor

import (
	"os"
	"strconv"

	"parry.dev/parry/sensor/internal/wire"
)

// exeTable remembers each process's executable from its exec, so connect,
// open and privilege events can name it; a process that exec'd before the
// sensor started is looked up once in /proc. It belongs to the reader
// goroutine.
type exeTable struct {
	m map[uint32]string // pid → exe
}

// maxExes bounds the table; it is cleared, not grown, beyond.
const maxExes = 1 << 16

func newExeTable() exeTable { return exeTable{m: map[uint32]string{}} }

// track returns the executable of r's process, learning it from execs and
// forgetting it at exit.
func (e *exeTable) track(r *wire.Record) string {
	switch r.Kind {
	case wire.KindExec:
		if len(e.m) < maxExes {
			e.m[r.PID] = r.Exe
		}
		return r.Exe
	case wire.KindExit:
		exe := e.m[r.PID]
		delete(e.m, r.PID)
		return exe
	}
	if exe, ok := e.m[r.PID]; ok {
		return exe
	}
	exe, _ := os.Readlink("/proc/" + strconv.FormatUint(uint64(r.PID), 10) + "/exe") // "" for a process gone
	if len(e.m) < maxExes {
		e.m[r.PID] = exe
	}
	return exe
}

// trim clears a full table (exits that were never seen leave rows
// behind), so new processes are remembered again.
func (e *exeTable) trim() {
	if len(e.m) >= maxExes {
		clear(e.m)
	}
}
