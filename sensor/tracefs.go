package sensor

import (
	"os"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// ensureTracefs mounts tracefs when neither of its usual places has it: the
// syscall tracepoints are found through it. It must run before the first
// tracepoint is attached (cilium/ebpf looks the mount up once). Without it
// the tracepoint hooks are reported inactive and the rest still runs.
func ensureTracefs(log zerolog.Logger) {
	if tracefsAt("/sys/kernel/tracing") || tracefsAt("/sys/kernel/debug/tracing") {
		return
	}
	err := unix.Mount("nodev", "/sys/kernel/tracing", "tracefs", 0, "")
	if err == nil {
		log.Info().Str("path", "/sys/kernel/tracing").Msg("mounted tracefs (it was not mounted; syscall tracepoints need it)")
		return
	}
	log.Warn().Err(err).Msg("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: syscall tracepoint hooks (opens, privilege signals) will be inactive; mount it (mount -t tracefs nodev /sys/kernel/tracing) or give the sensor CAP_SYS_ADMIN")
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
