// Package api holds the sensor's public types: the data of the events it
// emits (EventData, Health) and the answers and paths of its HTTP API (the
// flight recorder's PodHistory, the egress block, /healthz).
//
// It imports nothing of the agent (no BPF, no kernel code), so whatever
// only talks to a sensor — sensor/client, the response steps, the
// classifier — builds for every architecture and links none of it. The
// agent (package sensor and its internal packages) produces these very
// types; their JSON field names are the wire format, consumed by other
// processes and kept stable.
package api
