package sensor

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"parry.dev/parry/internal/binhash"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/sensor/api"
)

// handler serves the flight recorder, health and the egress block, each
// route to callers granted its subresource of sensors.parry.dev on this
// node (sensor/api's access.go; authorized):
//
//	GET    /v1/pods                 pods with recorded history                  history
//	GET    /v1/pods/{uid}           a pod's history: processes, connections,    history
//	                                files, events
//	GET    /v1/pods/{uid}/binaries  SHA-256 of the binaries its live processes  history
//	                                run
//	GET    /v1/cgroups/{id}         one cgroup's history                        history
//	PUT    /v1/pods/{uid}/block     block the pod's egress in the kernel        block
//	DELETE /v1/pods/{uid}/block     lift it                                     unblock
//	GET    /v1/blocked              blocked cgroup ids                          history
//	GET    /healthz                 hooks and counters (as the health event)    (open)
//	GET    /metrics                 the same counters, Prometheus text format   metrics
func (s *Sensor) handler() http.Handler {
	mux := http.NewServeMux()
	history := func(h http.HandlerFunc) http.HandlerFunc { return s.authorized(api.SubresourceHistory, h) }
	mux.HandleFunc("GET "+api.RoutePods, history(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.rec.Pods())
	}))
	mux.HandleFunc("GET "+api.RoutePod, history(func(w http.ResponseWriter, r *http.Request) {
		h, ok := s.PodHistory(r.PathValue("uid"))
		if !ok {
			httpError(w, http.StatusNotFound, "no history of pod %s on node %s (never seen, or older than --recorder-ttl %s)", r.PathValue("uid"), s.cfg.Node, s.cfg.RecorderTTL)
			return
		}
		writeJSON(w, http.StatusOK, h)
	}))
	mux.HandleFunc("GET "+api.RouteBinaries, history(func(w http.ResponseWriter, r *http.Request) {
		b, ok := s.PodBinaries(r.PathValue("uid"))
		if !ok {
			httpError(w, http.StatusNotFound, "no history of pod %s on node %s (never seen, or older than --recorder-ttl %s)", r.PathValue("uid"), s.cfg.Node, s.cfg.RecorderTTL)
			return
		}
		writeJSON(w, http.StatusOK, b)
	}))
	mux.HandleFunc("GET "+api.RouteCgroup, history(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			httpError(w, http.StatusBadRequest, "cgroup id %q: a decimal number", r.PathValue("id"))
			return
		}
		c, ok := s.rec.Cgroup(id)
		if !ok {
			httpError(w, http.StatusNotFound, "no history of cgroup %d", id)
			return
		}
		writeJSON(w, http.StatusOK, c)
	}))
	block := func(on bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			uid := r.PathValue("uid")
			var id uint64
			var err error
			if on {
				id, err = s.BlockPod(uid)
			} else {
				id, err = s.UnblockPod(uid)
			}
			if err != nil {
				httpError(w, http.StatusConflict, "%v", err)
				return
			}
			s.log.Info().Str(logging.FieldPodUID, uid).Uint64("cgroup", id).Bool("blocked", on).Str(logging.FieldUser, caller(r)).Msg("egress block changed")
			writeJSON(w, http.StatusOK, api.BlockResult{PodUID: uid, CgroupID: id, Blocked: on})
		}
	}
	mux.HandleFunc("PUT "+api.RouteBlock, s.authorized(api.SubresourceBlock, block(true)))
	mux.HandleFunc("DELETE "+api.RouteBlock, s.authorized(api.SubresourceUnblock, block(false)))
	mux.HandleFunc("GET "+api.RouteBlocked, history(func(w http.ResponseWriter, r *http.Request) {
		ids, err := s.Blocked()
		if err != nil {
			httpError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		writeJSON(w, http.StatusOK, ids)
	}))
	mux.HandleFunc("GET "+api.RouteHealth, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Health())
	})
	mux.HandleFunc("GET "+api.RouteMetrics, s.authorized(api.SubresourceMetrics, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		writeMetrics(w, s.Health(), &s.apiAuth)
	}))
	return mux
}

// PodHistory returns what the flight recorder holds about a pod, with its
// metadata when the API server knows (or knew) it.
func (s *Sensor) PodHistory(uid string) (api.PodHistory, bool) {
	cgs, ok := s.rec.Pod(uid)
	if !ok {
		return api.PodHistory{}, false
	}
	h := api.PodHistory{PodUID: uid, Node: s.cfg.Node, Taken: time.Now(), Cgroups: cgs, Pod: &api.Pod{UID: uid}}
	for _, id := range s.attr.OfPod(uid) {
		if pm, _, ok := s.attr.Meta(&id); ok {
			h.Pod.Namespace, h.Pod.Name, h.Pod.Owner, h.Pod.Deleted = pm.Namespace, pm.Name, pm.Owner, pm.Deleted
			break
		}
	}
	return h, true
}

// PodBinaries hashes the binary of every live process the flight recorder
// holds for a pod, through /proc/<pid>/exe, while /proc/<pid>/cgroup still
// names the pod (binhash.Hash). The sensor sees the host's PIDs, which a
// step in a cluster does not. An executable only exited processes ran is
// listed with that reason.
func (s *Sensor) PodBinaries(uid string) (api.Binaries, bool) {
	cgs, ok := s.rec.Pod(uid)
	if !ok {
		return nil, false
	}
	var live []binhash.Process
	exited := map[string]time.Time{}
	for _, cg := range cgs {
		for _, p := range cg.Processes {
			if p.ExitTime != nil {
				if p.Exe != "" && p.ExitTime.After(exited[p.Exe]) {
					exited[p.Exe] = *p.ExitTime
				}
				continue
			}
			live = append(live, binhash.Process{PID: p.PID, Exe: p.Exe})
		}
	}
	b := api.Binaries(binhash.Pod("/proc", uid, live))
	for exe, at := range exited {
		if _, ok := b[exe]; !ok {
			b[exe] = fmt.Sprintf("unreadable: every process of the pod that ran %s has exited (the last at %s)", exe, at.UTC().Format(time.RFC3339))
		}
	}
	return b, true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, api.Error{Error: fmt.Sprintf(format, args...)})
}

func writeMetrics(w http.ResponseWriter, h api.Health, a *apiAuthStats) {
	var b strings.Builder
	metric := func(name, help, typ string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("parry_sensor_records_seen_total", "Records that passed the kernel filters.", "counter")
	for k, c := range h.Kinds {
		fmt.Fprintf(&b, "parry_sensor_records_seen_total{kind=%q} %d\n", k, c.Seen)
	}
	metric("parry_sensor_records_dropped_total", "Records the ring buffer had no room for.", "counter")
	for k, c := range h.Kinds {
		fmt.Fprintf(&b, "parry_sensor_records_dropped_total{kind=%q} %d\n", k, c.Dropped)
	}
	metric("parry_sensor_records_received_total", "Records read by the sensor.", "counter")
	for k, c := range h.Kinds {
		fmt.Fprintf(&b, "parry_sensor_records_received_total{kind=%q} %d\n", k, c.Received)
	}
	metric("parry_sensor_lost_total", "Events lost, by cause.", "counter")
	for cause, v := range map[string]uint64{
		"ring_buffer": h.Lost.RingBuffer, "malformed": h.Lost.Malformed, "build": h.Lost.Build,
		"spool_overflow": h.Lost.SpoolOverflow, "rejected": h.Lost.Rejected,
	} {
		fmt.Fprintf(&b, "parry_sensor_lost_total{cause=%q} %d\n", cause, v)
	}
	metric("parry_sensor_events_emitted_total", "CloudEvents queued for the sink.", "counter")
	fmt.Fprintf(&b, "parry_sensor_events_emitted_total %d\n", h.Emitted)
	metric("parry_sensor_events_coalesced_total", "Identical events not emitted (counted in the next one).", "counter")
	fmt.Fprintf(&b, "parry_sensor_events_coalesced_total %d\n", h.Coalesced)
	metric("parry_sensor_hook_active", "Whether a hook is attached.", "gauge")
	for _, hk := range h.Hooks {
		v := 0
		if hk.Active {
			v = 1
		}
		fmt.Fprintf(&b, "parry_sensor_hook_active{hook=%q,kind=%q} %d\n", hk.Name, hk.Kind, v)
	}
	metric("parry_sensor_api_auth_total", "Requests to the API by the authentication and authorization decision (unavailable: a review could not be made, so the request was refused).", "counter")
	for result, v := range map[string]uint64{
		"allowed": a.allowed.Load(), "unauthenticated": a.unauthenticated.Load(),
		"forbidden": a.forbidden.Load(), "unavailable": a.unavailable.Load(),
	} {
		fmt.Fprintf(&b, "parry_sensor_api_auth_total{result=%q} %d\n", result, v)
	}
	metric("parry_sensor_resident_bytes", "Resident set size.", "gauge")
	fmt.Fprintf(&b, "parry_sensor_resident_bytes %d\n", h.RSSBytes)
	if h.Emitter != nil {
		metric("parry_sensor_spool_events", "Events waiting in the on-disk spool.", "gauge")
		fmt.Fprintf(&b, "parry_sensor_spool_events %d\n", h.Emitter.Spooled)
	}
	w.Write([]byte(b.String()))
}
