// Package tetragon is parry's Tetragon ingester: it reads Tetragon's JSON
// export (one event a line, as Tetragon writes its export file) and sends
// each process_exec to parry's Broker as parry's own exec event,
// dev.parry.sensor.process.exec.v1 with source parry://tetragon/<node>,
// carrying the attributes parry's sensor sets, so that the shipped
// playbooks match Tetragon's execs as they match the sensor's.
//
// Tetragon has no CloudEvents or webhook exporter, so the ingester tails
// its export file on each node (Tail) and posts with its own identity (the
// ServiceAccount parry-sensor/parry-ingest-tetragon, which an EventPolicy
// lets send exec events and nothing else). Other Tetragon events
// (process_exit, process_kprobe, ...) are counted and skipped: the policy
// would refuse them, and no playbook needs them yet.
package tetragon

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/api"
)

// SourcePrefix starts the source of every event the ingester sends; the
// node's name follows.
const SourcePrefix = "parry://tetragon/"

// line is one line of Tetragon's export: a GetEventsResponse in protobuf's
// JSON form (field names in snake_case). Only the fields parry uses are
// decoded.
type line struct {
	ProcessExec *processExec `json:"process_exec"`
	NodeName    string       `json:"node_name"`
	Time        string       `json:"time"`
}

type processExec struct {
	Process *process `json:"process"`
	Parent  *process `json:"parent"`
}

type process struct {
	ExecID    string  `json:"exec_id"`
	PID       *uint32 `json:"pid"`
	TID       *uint32 `json:"tid"`
	UID       *uint32 `json:"uid"` // the effective uid
	Binary    string  `json:"binary"`
	Arguments string  `json:"arguments"`
	Flags     string  `json:"flags"`
	StartTime string  `json:"start_time"`
	Pod       *pod    `json:"pod"`
	// Credentials are there with Tetragon's --enable-process-cred.
	Credentials *struct {
		UID  *uint32 `json:"uid"`
		EUID *uint32 `json:"euid"`
		GID  *uint32 `json:"gid"`
		EGID *uint32 `json:"egid"`
	} `json:"process_credentials"`
}

type pod struct {
	Namespace    string `json:"namespace"`
	Name         string `json:"name"`
	UID          string `json:"uid"` // Tetragon 1.2 and later
	Workload     string `json:"workload"`
	WorkloadKind string `json:"workload_kind"`
	Container    *struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Image *struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"image"`
	} `json:"container"`
}

// ErrMalformed wraps why a line is not a Tetragon event parry can use: not
// JSON, or an exec without a process, binary or time. Such a line is
// counted and logged, never fatal.
var ErrMalformed = errors.New("malformed Tetragon line")

// Mapper turns export lines into events. The zero value redacts arguments
// with redact's default rules.
type Mapper struct {
	// Redact removes secrets from the arguments before they are sent, as
	// parry's sensor does; nil applies the default rules.
	Redact *redact.Rules
}

// Map returns the exec event of one export line. A line of another event
// kind returns a nil event and the kind (process_exit, process_kprobe, ...),
// for the caller to count; a line parry cannot use returns an error
// wrapping ErrMalformed.
func (m Mapper) Map(raw []byte) (*cloudevents.Event, string, error) {
	var l line
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, "", fmt.Errorf("%w: not JSON: %v", ErrMalformed, err)
	}
	if l.ProcessExec == nil {
		return nil, kindOf(raw), nil
	}
	p := l.ProcessExec.Process
	if p == nil || p.Binary == "" || p.ExecID == "" {
		return nil, "", fmt.Errorf("%w: process_exec without a process (exec_id and binary)", ErrMalformed)
	}
	at, err := eventTime(l.Time, p.StartTime)
	if err != nil {
		return nil, "", err
	}
	node := l.NodeName
	if node == "" {
		return nil, "", fmt.Errorf("%w: process_exec of %s without node_name", ErrMalformed, p.Binary)
	}

	comm := path.Base(p.Binary)
	if len(comm) > 15 { // the kernel's comm: the binary's name, 15 bytes
		comm = comm[:15]
	}
	proc := api.Process{Comm: comm, Exe: p.Binary, PID: val(p.PID), TID: val(p.TID), EUID: val(p.UID)}
	if proc.TID == 0 {
		proc.TID = proc.PID
	}
	// Tetragon's process.uid is the effective uid; the real one (what
	// the sensor's uid attribute holds) only comes with process
	// credentials.
	proc.UID = proc.EUID
	if c := p.Credentials; c != nil {
		proc.UID, proc.GID, proc.EGID = val(c.UID), val(c.GID), val(c.EGID)
		if c.EUID != nil {
			proc.EUID = *c.EUID
		}
	}
	if par := l.ProcessExec.Parent; par != nil {
		proc.PPID = val(par.PID)
	}
	data := api.EventData{
		Process:   proc,
		Args:      m.Redact.Args(SplitArguments(p.Arguments)),
		Truncated: strings.Contains(p.Flags, "truncArgs") || strings.Contains(p.Flags, "truncFilename"),
	}
	ext := map[string]string{
		events.ExtNode: node,
		events.ExtComm: comm,
		events.ExtExe:  p.Binary,
		events.ExtUID:  strconv.FormatUint(uint64(proc.UID), 10),
	}
	subject := "node/" + node
	if po := p.Pod; po != nil && po.Namespace != "" && po.Name != "" {
		d := &api.Pod{UID: po.UID, Namespace: po.Namespace, Name: po.Name}
		if po.WorkloadKind != "" && po.Workload != "" {
			d.Owner = po.WorkloadKind + "/" + po.Workload
		}
		if c := po.Container; c != nil {
			d.Container = c.Name
			d.ContainerID, d.Runtime = events.ContainerID(c.ID)
			if c.Image != nil {
				d.Image, d.ImageID = c.Image.Name, c.Image.ID
			}
		}
		data.Pod = d
		subject = "pod/" + d.Namespace + "/" + d.Name
		ext[events.ExtPodNamespace] = d.Namespace
		ext[events.ExtPodName] = d.Name
		ext[events.ExtPodUID] = d.UID
		ext[events.ExtOwner] = d.Owner
		ext[events.ExtContainer] = d.Container
		ext[events.ExtContainerID] = d.ContainerID
		ext[events.ExtImage] = d.Image
	}
	e, err := events.New(events.Spec{
		Type: events.TypeProcessExec, Source: SourcePrefix + node, Subject: subject,
		// The exec id names the process across the cluster; with the
		// event's time a re-read line gets the same id, which the broker
		// dedups.
		Key:  p.ExecID + "/" + at.UTC().Format(time.RFC3339Nano),
		Time: at, Extensions: ext, Data: data,
	})
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &e, "", nil
}

// eventTime is the line's time, else the process's start time.
func eventTime(ts, start string) (time.Time, error) {
	if ts == "" {
		ts = start
	}
	if ts == "" {
		return time.Time{}, fmt.Errorf("%w: process_exec without time", ErrMalformed)
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: time %q: %v", ErrMalformed, ts, err)
	}
	return t, nil
}

// kindOf names the event kind of a line that is not a process_exec: its
// first key other than the envelope's.
func kindOf(raw []byte) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return "unknown"
	}
	for k := range m {
		switch k {
		case "node_name", "time", "cluster_name", "node_labels", "aggregation_info":
		default:
			return k
		}
	}
	return "unknown"
}

func val(p *uint32) uint32 {
	if p == nil {
		return 0
	}
	return *p
}

// SplitArguments splits Tetragon's arguments string into argv. Tetragon
// joins the arguments with spaces and wraps one that contains a space in
// double quotes, without escaping anything inside; so spaces separate
// arguments except between double quotes, and the quotes themselves are
// removed. An argument's own double quotes cannot be told from Tetragon's
// and are removed too (`say "hi"` becomes say, hi), and an unterminated
// quote runs to the end. Redaction works per argument, so a secret inside
// a mis-split argument is still caught by its name (--token=...) or its
// content (Authorization:, a URL's password).
func SplitArguments(s string) []string {
	var args []string
	var cur strings.Builder
	in, quoted := false, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			quoted, in = !quoted, true
		case c == ' ' && !quoted:
			if in {
				args = append(args, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		args = append(args, cur.String())
	}
	return args
}
