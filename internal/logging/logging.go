// Package logging builds parry's zerolog loggers. Field names are stable so
// that log queries keep working across releases; use the Field* constants.
package logging

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// Stable field names shared by every component.
const (
	FieldComponent = "component"
	FieldBroker    = "broker"
	FieldTrigger   = "trigger"
	FieldEventID   = "event_id"
	FieldEventType = "event_type"
	FieldIncident  = "incident"
	FieldAttempt   = "attempt"
	FieldStatus    = "status"
	FieldLatency   = "latency"
	FieldPath      = "path"
	FieldStep      = "step"
	FieldPlaybook  = "playbook"
	FieldPodUID    = "pod_uid"
	FieldReason    = "reason"
	// FieldUser is an authenticated caller's Kubernetes username.
	FieldUser = "user"
)

// New returns a logger writing to w at level ("debug", "info", "warn",
// "error"). format "console" is for people, "json" for machines.
func New(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("log level %q: use one of debug, info, warn, error", level)
	}
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: use console or json", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// DefaultFormat is console on a terminal and json otherwise.
func DefaultFormat() string {
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return "console"
	}
	return "json"
}
