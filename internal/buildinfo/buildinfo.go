// Package buildinfo carries the version stamped in at link time.
package buildinfo

import "runtime/debug"

// Version is set with -ldflags "-X parry.dev/parry/internal/buildinfo.Version=...".
var Version = "dev"

// String is the version line `parry version` prints.
func String() string {
	goVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
	}
	return "parry " + Version + " (" + goVersion + ")"
}
