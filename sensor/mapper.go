package sensor

import (
	"fmt"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/wire"
)

// podMeta gives a pod's and its container's metadata from the API server
// (attrib.Attributor).
type podMeta interface {
	Meta(id *attrib.Identity) (attrib.PodMeta, attrib.ContainerMeta, bool)
}

// eventMapper turns records into the sensor's CloudEvents: type, subject,
// extension attributes, data (api.EventData) and a deterministic id; and
// health reports into health events. It holds no state that changes.
type eventMapper struct {
	node   string
	source string
	bootID string  // ids are unique per boot: kernel times restart
	meta   podMeta // nil: no cluster
	// redact removes secrets from an exec's argv before it is sent; nil
	// applies the default rules.
	redact *redact.Rules
}

// recorderEvent is the flight recorder's copy of a record.
func recorderEvent(r *wire.Record, t time.Time, cg uint64, exe string) api.RecordedEvent {
	ev := api.RecordedEvent{
		Time: t, Kind: r.Kind.String(), CgroupID: cg, PID: r.PID, PPID: r.PPID,
		UID: r.UID, EUID: r.EUID, Comm: r.Comm, Truncated: r.Truncated,
	}
	switch r.Kind {
	case wire.KindExec:
		ev.Exe, ev.Args, ev.Fileless = r.Exe, r.Args, r.Fileless
	case wire.KindExit:
		ev.Exe = exe
		ev.Exit = api.RecordedExit{Status: r.ExitCode, Start: time.Unix(0, t.UnixNano()-int64(r.Ktime-r.StartKtime))}
	case wire.KindConnect:
		ev.Exe, ev.DAddr, ev.DPort, ev.Proto, ev.Blocked = exe, r.DAddr, r.DPort, wire.ProtoName(r.Proto), r.Blocked
	case wire.KindOpen:
		ev.Exe, ev.Path = exe, r.Path
	case wire.KindPriv:
		ev.Exe, ev.Signal, ev.Ret = exe, r.Signal.String(), r.Ret
		if r.Signal == wire.SigExecMemfd || r.Signal == wire.SigMemfd {
			ev.Path = r.Name
		}
	}
	return ev
}

// build is the CloudEvent of a record: id the attribution, ev its recorder
// copy (time and exe), coalesced the identical events suppressed before it.
func (m *eventMapper) build(r *wire.Record, id *attrib.Identity, ev *api.RecordedEvent, coalesced uint32) (cloudevents.Event, error) {
	data := api.EventData{
		Process: api.Process{
			PID: r.PID, TID: r.TID, PPID: r.PPID, UID: r.UID, EUID: r.EUID, GID: r.GID, EGID: r.EGID,
			Comm: r.Comm, Exe: ev.Exe,
		},
		Cgroup:    api.Cgroup{ID: id.CgroupID, Path: id.CgroupPath},
		Truncated: r.Truncated,
		Coalesced: coalesced,
	}
	ext := map[string]string{
		events.ExtNode: m.node,
		events.ExtComm: r.Comm,
		events.ExtExe:  ev.Exe,
		events.ExtUID:  strconv.FormatUint(uint64(r.UID), 10),
	}
	subject := "node/" + m.node
	if id.InPod() {
		p := &api.Pod{UID: id.PodUID, ContainerID: id.ContainerID, Runtime: id.Runtime, QoS: id.QoS}
		ext[events.ExtPodUID] = id.PodUID
		ext[events.ExtContainerID] = id.ContainerID
		subject = "pod/" + id.PodUID
		if m.meta != nil {
			if pm, cm, ok := m.meta.Meta(id); ok {
				p.Namespace, p.Name, p.Owner, p.Deleted = pm.Namespace, pm.Name, pm.Owner, pm.Deleted
				p.Container, p.Image, p.ImageID = cm.Name, cm.Image, cm.ImageID
				ext[events.ExtPodNamespace] = pm.Namespace
				ext[events.ExtPodName] = pm.Name
				ext[events.ExtOwner] = pm.Owner
				ext[events.ExtContainer] = cm.Name
				ext[events.ExtImage] = cm.Image
				subject = "pod/" + pm.Namespace + "/" + pm.Name
			}
		}
		data.Pod = p
	}
	var typ string
	switch r.Kind {
	case wire.KindExec:
		typ = events.TypeProcessExec
		data.Args, data.Fileless = m.redact.Args(r.Args), r.Fileless
	case wire.KindExit:
		typ = events.TypeProcessExit
		code := r.ExitCode
		data.Exit = &api.Exit{Status: code, Code: code >> 8 & 0xff, Signal: code & 0x7f, LifetimeNs: int64(r.Ktime - r.StartKtime)}
	case wire.KindConnect:
		typ = events.TypeNetworkConnect
		data.Connect = &api.Connect{DAddr: r.DAddr, DPort: r.DPort, Proto: wire.ProtoName(r.Proto), Blocked: r.Blocked}
		ext[events.ExtDestPort] = strconv.Itoa(int(r.DPort))
		ext[events.ExtDestAddr] = r.DAddr.String()
		ext[events.ExtProto] = data.Connect.Proto
		if r.Blocked {
			ext[events.ExtAction] = "blocked"
		}
	case wire.KindOpen:
		typ = events.TypeFileOpen
		data.File = &api.File{Path: r.Path, Flags: r.FileFlags, Write: r.FileFlags&3 != 0}
		ext[events.ExtPath] = r.Path
	case wire.KindPriv:
		typ = events.TypePrivilege
		data.Signal = &api.Signal{
			Name: r.Signal.String(), Syscall: r.Syscall, Ret: r.Ret, Args: r.SysArgs,
			Old:  &api.Creds{UID: r.OldUID, EUID: r.OldEUID, GID: r.OldGID, EGID: r.OldEGID},
			New:  &api.Creds{UID: r.UID, EUID: r.EUID, GID: r.GID, EGID: r.EGID},
			File: r.Name,
		}
		if r.Signal == wire.SigExecMemfd {
			data.Signal.Old, data.Signal.New = nil, nil
		}
		ext[events.ExtSignal] = data.Signal.Name
	default:
		return cloudevents.Event{}, fmt.Errorf("record kind %d", r.Kind)
	}
	key := m.bootID + "/" + strconv.Itoa(int(r.Kind)) + "/" + strconv.FormatUint(r.Ktime, 10) + "/" + strconv.FormatUint(uint64(r.TID), 10)
	if r.Kind == wire.KindPriv {
		key += "/" + strconv.Itoa(int(r.Signal))
	}
	return events.New(events.Spec{
		Type: typ, Source: m.source, Subject: subject, Key: key,
		Time: ev.Time, Extensions: ext, Data: data,
	})
}

// health is the health event of a report: seq numbers the reports of a
// sensor started at started; a loss since the previous report makes it a
// warning.
func (m *eventMapper) health(h api.Health, started time.Time, seq uint64) (cloudevents.Event, error) {
	sev := "info"
	if h.NewLoss {
		sev = "warning"
	}
	return events.New(events.Spec{
		Type:    events.TypeSensorHealth,
		Source:  m.source,
		Subject: "node/" + m.node,
		Key:     m.bootID + "/health/" + strconv.FormatInt(started.UnixNano(), 10) + "/" + strconv.FormatUint(seq, 10),
		Extensions: map[string]string{
			events.ExtNode:     m.node,
			events.ExtSeverity: sev,
		},
		Data: h,
	})
}
