// Package sensor is parry's eBPF sensor: one per node, it turns kernel
// activity into CloudEvents, attributed to pods, without silent loss.
//
// # Data path
//
//	kernel hooks ─► in-kernel filters ─► ring buffer ─► parse ─► attribute ─► flight recorder
//	                (BPF maps)           (batched       (wire)   (cgroup id    (per cgroup,
//	                                      wake-ups)               → pod)        after exit)
//	                                                        └─► coalesce ─► CloudEvent ─► sink
//	                                                                                 └─► spool (disk)
//
// Hooks (bpf/sensor.bpf.c) are chosen for kernels without BPF trampolines:
// exec and exit on tp_btf with a raw_tp fallback; connect on
// cgroup/connect4 and connect6 attached to the cgroup2 root (which also
// enforces the egress block); opens on the sys_exit tracepoints of open,
// openat, openat2, creat and open_by_handle_at (the opened file is read from
// the fd table, so relative paths, symlinks and dirfds cannot hide a
// sensitive path); privilege and evasion signals on the syscall tracepoints
// of the set*id family, ptrace, memfd_create, unshare, setns, init_module
// and finit_module, plus exec of a file with no name on disk. fentry, BPF-LSM
// and kprobes are probed at start-up and reported; the log says which hooks
// are active and why the others are not. Every hook loads on its own: one
// the kernel refuses costs that hook only.
//
// Records pass the in-kernel filters (below), are counted as seen, and are
// counted as dropped when the ring buffer has no room (per-CPU counters), so
// received + dropped = seen exactly. Wake-ups are batched: the first record
// after a quiet spell wakes the sensor at once; the records behind it wait
// for a BPF timer that fires --wakeup-interval after that wake-up and wakes
// the sensor if anything is unread (or an eighth of the ring filling up
// wakes it sooner). So under load the sensor wakes once per interval and no
// record waits longer. In a storm (over 1,000 records/s) the interval
// stretches, up to --storm-wakeup-interval, so a wake-up carries about 128
// records (pace.go). Only tp_btf and cgroup programs may arm the timer;
// the tracepoint hooks (opens, privilege signals) and the raw_tp fallback
// ride on an armed flush or wake the sensor at once, and the sensor, woken
// again within half an interval, arms it for them (a BPF_PROG_RUN of a
// syscall program), so their streams cost about two wake-ups per interval.
// The health event counts wake-ups and these kicks. The sensor drains the
// ring from its memory mapping without system calls and waits in Go's
// netpoller with no timer of its own, so an idle sensor costs nothing. (Each
// wake-up costs tens of microseconds of scheduling, more in VMs: the
// batching is what keeps the CPU per event low under storms.)
//
// Attribution: a record's cgroup id is the inode of its cgroup v2 directory;
// it resolves by file handle to a path, whose kubelet naming gives the pod
// UID and container id (systemd: kubepods-<qos>-pod<uid>.slice/
// cri-containerd-<id>.scope, crio-, docker-; cgroupfs: kubepods/<qos>/
// pod<uid>/<id>). Exec records also carry the names of the cgroup and its
// parent, so a container whose cgroup is gone before its record is read is
// still attributed. Identities are cached by cgroup id for --recorder-ttl
// after their last record. With a cluster (--kubeconfig, or in-cluster), an
// informer on the node's pods adds namespace, pod name, container name,
// image and owner, and keeps deleted pods for --recorder-ttl. On nodes whose
// kubelet uses cgroup v1 only, the v1 memory controller's cgroup plays the
// same role (--cgroup-mode).
//
// # Filters
//
// The filter file (--filters; kind SensorFilters, schema in package
// sensor/filters, built-in default in sensor/filters/default.yaml) decides
// what crosses into userspace:
//
//	scope: pods | all        only processes below podRoots, or every process
//	podRoots: [...]          the kubelet's pod cgroup roots, relative to the cgroup mount
//	exec: {all, names, exits}  every exec, or those of these executable basenames; and their exits
//	connect: {all, ports}    every outbound connect, or those to these ports
//	files: {prefixes}        opens of these paths and below (whole components)
//	signals: [...]           setuid, setgid, ptrace, memfd, exec-memfd, unshare, setns, module
//
// `parry playbook compile` writes the union of what the playbooks need
// (filters.Merge), e.g. to config/sensor-filters.yaml, which the DaemonSet
// passes with --filters.
//
// # Events
//
// Types dev.parry.sensor.process.exec.v1, .process.exit.v1,
// .network.connect.v1, .file.open.v1, .privilege.v1 and .health.v1, source
// parry://sensor/<node>, subject pod/<namespace>/<name> (pod/<uid> without a
// cluster, node/<node> outside pods). Extension attributes for Triggers:
// node, podns, podname, poduid, container (name), containerid, image,
// owner, exe, comm, uid; dport, daddr, proto and action=blocked on
// connects; path on opens; signal on privilege events. Data is
// api.EventData (api.Health for health events; package sensor/api holds
// every type of the events and the HTTP API). Ids derive from boot id, record kind, kernel
// time and thread id: a redelivered event has the same id.
//
// Identical events (same cgroup, kind and details: exe and argv, address
// and port, path, signal) within --coalesce-window are emitted once; the
// next one carries data.coalesced, and the flight recorder keeps them all.
//
// Delivery is CloudEvents HTTP binary mode to --sink or K_SINK, with
// K_CE_OVERRIDES applied. While the sink is down or slow, events queue in
// memory and then in a bounded on-disk spool (--spool-dir,
// --spool-max-bytes), drained in order when the sink returns; what does not
// fit is counted. dev.parry.sensor.health.v1 reports hooks and every counter
// each --health-interval, and within a second of any loss (severity warning).
//
// # Flight recorder
//
// The HTTP API on --recorder-listen (loopback by default) serves what
// happened in each cgroup, also after the pod is gone (routes and answers
// in package sensor/api; sensor/client calls them):
//
//	GET    /v1/pods                 pods with recorded history
//	GET    /v1/pods/{uid}           processes, connections, files and the last events (PodHistory)
//	GET    /v1/cgroups/{id}         one cgroup
//	PUT    /v1/pods/{uid}/block     egress block in the kernel (connect fails with EPERM)
//	DELETE /v1/pods/{uid}/block     lift it
//	GET    /v1/blocked              blocked cgroup ids
//	GET    /healthz, /metrics       counters, as JSON and Prometheus text
//
// Its memory is bounded by --recorder-max-bytes (3 MiB), events and
// summaries together: past it, the cgroup holding the most gives up the
// oldest eighth of its events and summary rows, so a busy pod cannot erase
// a quiet pod's history. With the binary's pages, the ring buffer and the
// runtime's memory limit (Config.LimitMemory), a full recorder keeps parry-sensor
// under 40 MB of RSS.
//
// # Use
//
//	if err := sensor.Probe(); err != nil { ... run without it, saying why ... }
//	s, err := sensor.New(ctx, cfg, log)
//	go s.Run(ctx)
//	s.BlockPod(uid)
//
// or sensor.Run(ctx, cfg, log) to do both. The sensor needs root (CAP_BPF,
// CAP_PERFMON, CAP_SYS_ADMIN) and kernel BTF (or --btf).
package sensor
