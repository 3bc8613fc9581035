package kernel

import (
	"os"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TestEnsureTracefs: where tracefs is missing, Load mounts it.
func TestEnsureTracefs(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: needs root")
		}
		t.Skip("needs root")
	}
	dir := t.TempDir()
	if tracefsAt(dir) {
		t.Fatal("an empty directory taken for tracefs")
	}
	if !ensureTracefs(zerolog.Nop(), dir) {
		t.Fatal("tracefs not mounted")
	}
	defer unix.Unmount(dir, 0)
	if !tracefsAt(dir) {
		t.Fatal("mounted, but not seen as tracefs")
	}
	if _, err := os.Stat(dir + "/events/syscalls"); err != nil {
		t.Fatalf("no syscall events in the new mount: %v", err)
	}
}
