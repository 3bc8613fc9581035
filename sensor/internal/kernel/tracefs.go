package kernel

import (
	"os"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// ensureTracefs mounts tracefs when neither of its usual places has it: the
// syscall tracepoints are found through it. It must run before the first
// tracepoint is attached (cilium/ebpf looks the mount up once). Without it
// the tracepoint hooks are reported inactive and the rest still runs.
func ensureTracefs(log zerolog.Logger, dirs ...string) bool {
	if len(dirs) == 0 {
		dirs = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}
	}
	for _, d := range dirs {
		if tracefsAt(d) {
			return true
		}
	}
	err := unix.Mount("nodev", dirs[0], "tracefs", 0, "")
	if err == nil && tracefsAt(dirs[0]) {
		log.Info().Str("path", dirs[0]).Msg("mounted tracefs (it was not mounted; syscall tracepoints need it)")
		return true
	}
	log.Warn().AnErr("error", err).Str("path", dirs[0]).Msg("tracefs is not mounted and mounting it failed: syscall tracepoint hooks (opens, privilege signals) will be inactive; mount it (mount -t tracefs nodev /sys/kernel/tracing) or give the sensor CAP_SYS_ADMIN")
	return false
}

func tracefsAt(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	if st.Type != unix.TRACEFS_MAGIC {
		return false
	}
	_, err := os.Stat(dir + "/events")
	return err == nil
}
