// Package ocsf turns parry's incidents into OCSF 1.3.0 events, so a SIEM
// that speaks the Open Cybersecurity Schema Framework ingests them without a
// parser of its own: one Detection Finding (class 2004) per incident, and
// one Remediation Activity (class 7001) per step that acted on it — isolate
// (Isolate), respawn (Restore) and revoke (Evict).
//
// Every event of an incident carries the incident id as
// metadata.correlation_uid, so the SIEM joins the finding and its
// remediations. The events are built from journal.IncidentSummary alone:
// whatever store the incident was read from, the export is the same.
package ocsf
