// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * parry's kernel sensor. Hooks are chosen for what loads on kernels without
 * BPF trampolines (no fentry/fexit, no BPF-LSM, no kprobes): tp_btf with a
 * raw_tp fallback for exec/exit, syscall tracepoints for opens and the
 * privilege signals, cgroup/connect4/6 for connects and the egress block.
 *
 * Everything that crosses into userspace passes the filters userspace wrote
 * into the maps below, is counted as seen, and is counted as dropped when
 * the ring buffer has no room, so received + dropped = seen holds exactly.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "parry.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Force the generated Go types for the record layouts (bpf2go -type). */
const struct exec_rec *unused_exec_rec __attribute__((unused));
const struct exit_rec *unused_exit_rec __attribute__((unused));
const struct connect_rec *unused_connect_rec __attribute__((unused));
const struct open_rec *unused_open_rec __attribute__((unused));
const struct priv_rec *unused_priv_rec __attribute__((unused));
/* And for the enums Go uses, so it takes their values from here. */
const enum rec_kind *unused_rec_kind __attribute__((unused));
const enum counter_slot *unused_counter_slot __attribute__((unused));
const enum priv_signal *unused_priv_signal __attribute__((unused));
const enum config_flag *unused_config_flag __attribute__((unused));
const enum hdr_flag *unused_hdr_flag __attribute__((unused));

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* userspace resizes before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KIND_MAX * CNT_STRIDE);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sensor_config);
} sensor_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct exe_key);
	__type(value, __u8);
} exe_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct trie_key);
	__type(value, struct trie_val);
} path_trie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u8);
} scope_roots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} blocked_cgroups SEC(".maps");

/* Processes whose exec was reported while exec filtering by name, so their exit is too. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} tracked SEC(".maps");

struct pending_priv {
	__u32 signal;
	__s32 syscall;
	__u64 args[3];
	__u32 old_uid;
	__u32 old_euid;
	__u32 old_gid;
	__u32 old_egid;
	char name[64];
};

/* Syscall arguments saved at sys_enter for the matching sys_exit, by thread. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct pending_priv);
} pending SEC(".maps");

#define PATH_DEPTH 64
#define PB_HALF 2048 /* path text is built backwards from the middle of pb */

/* State of a path walk shared with the bpf_loop callbacks. It lives in the
 * per-CPU scratch map, not on the stack: the verifier does not track map
 * contents, so each callback body converges after one pass instead of being
 * re-verified for every distinct loop counter. Kernel pointers are kept as
 * integers: they are only ever read with probe reads. */
struct walk {
	__u64 d, vm, mnt, root_d, root_m;
	__u32 n, off, node;
	__u8 truncated, matched;
};

struct scratch {
	struct walk w;
	__u64 comps[PATH_DEPTH]; /* struct dentry *, as integers for the Go bindings */
	char pb[PB_HALF * 2];
	union {
		struct {
			struct exec_rec r;
			char data[4096];
		} exec;
		struct {
			struct open_rec r;
			char data[PB_HALF];
		} open;
	};
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* Older kernels call kernfs_node.__parent "parent". */
struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct sensor_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sensor_cfg, &zero);
}

static __always_inline void count(__u32 kind, __u32 slot)
{
	__u32 idx = kind * CNT_STRIDE + slot;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1); /* atomic: a preempted program on this CPU may share the slot */
}


/*
 * Batched wake-ups. A record wakes the sensor at once when the ring is
 * filling up, or when no flush is armed and the last wake-up is older than
 * wakeup_ns (the first record after a quiet spell). Otherwise it waits for
 * the flush timer, which fires
 * wakeup_ns after the last wake-up and wakes the sensor if anything is
 * unread: under load the sensor wakes once per wakeup_ns, and no record
 * waits longer than that, with no polling from userspace.
 *
 * Only tp_btf and cgroup programs may arm a bpf_timer (the verifier refuses
 * timers to tracepoint, raw_tp and kprobe programs). The others (opens and
 * privilege signals; exec and exit on the raw_tp fallback) ride on a flush
 * that is already armed, or wake the sensor at once; woken again within
 * half an interval, the sensor arms the flush for them (kick_flush), so a
 * stream of them costs about two wake-ups per interval, not one per record.
 */
#define CLOCK_MONOTONIC 1

struct flush {
	struct bpf_timer t;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flush);
} flush_timer SEC(".maps");

/* The current wake-up interval: --wakeup-interval, stretched by the reader
 * during a storm (sensor/pace.go). Userspace writes it through the .bss
 * mapping; it is set before any hook is attached. */
__u64 wakeup_ns = 0;
/* Time of the last wake-up; racy across CPUs on purpose: a lost update
 * costs one extra wake-up, never a lost record. */
__u64 last_wakeup = 0;
/* 1 while the flush timer is pending. Set before the timer starts and
 * cleared by its callback before it looks at the ring, so a record
 * committed while it reads 1 is seen by that flush. */
__u64 flush_armed = 0;

/* wake_now wakes the sensor with an empty, discarded record (the reader
 * skips it). With the ring full it does nothing: the records that filled it
 * crossed wakeup_bytes and woke the sensor themselves. */
static __always_inline void wake_now(void)
{
	void *p = bpf_ringbuf_reserve(&events, 8, 0);
	if (p)
		bpf_ringbuf_discard(p, BPF_RB_FORCE_WAKEUP);
}

static int flush_cb(void *map, __u32 *key, struct flush *f)
{
	__sync_lock_test_and_set(&flush_armed, 0);
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > 0) {
		last_wakeup = bpf_ktime_get_ns();
		wake_now();
	}
	return 0;
}

/* arm starts the flush timer for last_wakeup + wakeup_ns, unless another
 * CPU armed it since the caller looked: that flush sees the caller's record. */
static __always_inline void arm(__u64 now)
{
	__u32 zero = 0;
	if (__sync_val_compare_and_swap(&flush_armed, 0, 1) != 0)
		return;
	struct flush *f = bpf_map_lookup_elem(&flush_timer, &zero);
	if (!f)
		goto fail;
	__u64 since = now - last_wakeup, delay = wakeup_ns;
	if (since < delay)
		delay -= since;
	bpf_timer_init(&f->t, &flush_timer, CLOCK_MONOTONIC); /* -EBUSY once initialised */
	if (bpf_timer_set_callback(&f->t, flush_cb) || bpf_timer_start(&f->t, delay, 0))
		goto fail;
	return;
fail:
	__sync_lock_test_and_set(&flush_armed, 0);
	wake_now();
}

/* kick_flush arms the flush timer on the reader's request (BPF_PROG_RUN):
 * records from programs that cannot arm it woke the reader within half an
 * interval of its last wake-up, so more may follow; from now on they ride
 * on the flush instead of waking the reader one by one. */
SEC("syscall")
int kick_flush(void *ctx)
{
	if (!flush_armed)
		arm(bpf_ktime_get_ns());
	return 0;
}

enum { THEN_NOTHING, THEN_ARM, THEN_RECHECK };

/* submit counts the record as seen and, when there is no room, as dropped.
 * can_arm must be a constant: a program that cannot arm the timer must not
 * reference its map at all. */
static __always_inline void submit(struct sensor_config *cfg, __u32 kind, void *rec, __u64 size, const bool can_arm)
{
	__u64 now = bpf_ktime_get_ns(), flag = BPF_RB_NO_WAKEUP;
	int then = THEN_NOTHING;

	count(kind, CNT_SEEN);
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg->wakeup_bytes) {
		last_wakeup = now;
		flag = BPF_RB_FORCE_WAKEUP;
	} else if (flush_armed) {
		/* before the quiet test: at the end of an interval the flush is
		 * due, and waking here as well would wake the sensor twice */
		then = THEN_RECHECK;
	} else if (now - last_wakeup >= wakeup_ns) {
		last_wakeup = now;
		flag = BPF_RB_FORCE_WAKEUP;
	} else if (can_arm) {
		then = THEN_ARM;
	} else {
		flag = BPF_RB_FORCE_WAKEUP;
	}
	if (bpf_ringbuf_output(&events, rec, size, flag) < 0) {
		count(kind, CNT_DROPPED);
		return;
	}
	if (can_arm && then == THEN_ARM)
		arm(now);
	else if (then == THEN_RECHECK && __sync_fetch_and_add(&flush_armed, 0) == 0)
		wake_now(); /* the flush ran between our look and our commit */
}

static __always_inline bool in_scope(struct sensor_config *cfg)
{
	if (!(cfg->flags & CFG_SCOPE) || (cfg->flags & CFG_CGROUP_V1))
		return true; /* v1 attribution: userspace applies the scope */
	for (int level = 1; level < 12; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			return false;
		if (bpf_map_lookup_elem(&scope_roots, &id))
			return true;
	}
	return false;
}

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}

/* memory_css returns the task's memory controller state; the subsystem index
 * differs between kernel configs, so it is relocated, not hard-coded. */
static __always_inline struct cgroup_subsys_state *memory_css(struct task_struct *task)
{
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return NULL;
	__u32 id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	struct css_set *cs = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = NULL;
	bpf_probe_read_kernel(&css, sizeof(css),
			      (void *)cs + bpf_core_field_offset(struct css_set, subsys) + (id & 15) * sizeof(void *));
	return css;
}

/* The cgroup whose names attribute the task: the v1 memory cgroup or the v2 one. */
static __always_inline struct kernfs_node *task_cgroup_kn(struct task_struct *task, bool v1)
{
	if (v1) {
		struct cgroup_subsys_state *css = memory_css(task);
		if (css)
			return BPF_CORE_READ(css, cgroup, kn);
	}
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn);
}

static __always_inline __u64 task_memcg_id(struct task_struct *task)
{
	struct cgroup_subsys_state *css = memory_css(task);
	if (!css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

static __always_inline void fill_hdr(struct rec_hdr *h, __u8 kind, struct task_struct *task)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->kind = kind;
	h->version = RECORD_VERSION;
	h->flags = 0;
	h->ktime = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->memcg_id = task_memcg_id(task);
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->euid = BPF_CORE_READ(task, cred, euid.val);
	h->egid = BPF_CORE_READ(task, cred, egid.val);
	h->_pad = 0;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* real_mount is the kernel's container_of(vfsmount, struct mount, mnt), relocated. */
static __always_inline struct mount *real_mount(struct vfsmount *vm)
{
	return (struct mount *)((void *)vm - bpf_core_field_offset(struct mount, mnt));
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch_map, &zero);
}

static long collect_cb(__u64 i, void *unused)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 1;
	struct walk *w = &s->w;
	struct dentry *d = (struct dentry *)w->d;
	struct vfsmount *vm = (struct vfsmount *)w->vm;

	if (w->d == w->root_d && w->vm == w->root_m)
		return 1;
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (d == mnt_root || d == parent) {
		struct mount *mnt = (struct mount *)w->mnt;
		struct mount *mp = BPF_CORE_READ(mnt, mnt_parent);
		if (d == mnt_root && mp != mnt) {
			w->d = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
			w->mnt = (__u64)mp;
			w->vm = (__u64)mp + bpf_core_field_offset(struct mount, mnt);
			return 0;
		}
		/* A pseudo file (memfd, pipe) or a path outside the task's
		 * root: keep the last name, like d_path does. */
		if (d != mnt_root && w->n < PATH_DEPTH)
			s->comps[w->n++ & (PATH_DEPTH - 1)] = w->d;
		return 1;
	}
	if (w->n >= PATH_DEPTH) {
		w->truncated = 1;
		return 1;
	}
	s->comps[w->n++ & (PATH_DEPTH - 1)] = w->d;
	w->d = (__u64)parent;
	return 0;
}

/*
 * collect_path walks from a dentry up to the task's root, crossing mounts,
 * and stores the named components leaf first in s->comps. It returns the
 * number of components. Only pointers are read here, so a path that no
 * filter wants costs little.
 */
static __always_inline __u32 collect_path(struct walk *w, struct task_struct *task,
					  struct dentry *d, struct vfsmount *vm)
{
	w->d = (__u64)d;
	w->vm = (__u64)vm;
	w->mnt = (__u64)real_mount(vm);
	w->root_d = (__u64)BPF_CORE_READ(task, fs, root.dentry);
	w->root_m = (__u64)BPF_CORE_READ(task, fs, root.mnt);
	w->n = 0;
	w->truncated = 0;
	if (bpf_loop(PATH_DEPTH * 2, collect_cb, NULL, 0) == PATH_DEPTH * 2)
		w->truncated = 1;
	return w->n;
}

static long build_cb(__u64 i, void *unused)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 1;
	struct walk *w = &s->w;
	if (i >= w->n)
		return 1;
	struct dentry *d = (struct dentry *)s->comps[i & (PATH_DEPTH - 1)];
	struct qstr q = BPF_CORE_READ(d, d_name);
	__u32 len = q.len;
	if (len > 255)
		len = 255;
	__u32 off = w->off;
	if (off < len + 1 || off > PB_HALF) {
		w->truncated = 1;
		return 1;
	}
	off -= len;
	bpf_probe_read_kernel(&s->pb[off & (PB_HALF - 1)], len & 255, q.name);
	off -= 1;
	s->pb[off & (PB_HALF - 1)] = '/';
	w->off = off;
	return 0;
}

/* build_path writes "/c1/c2/..." into s->pb and returns its start offset; the
 * text ends at PB_HALF. */
static __always_inline __u32 build_path(struct scratch *s, struct walk *w)
{
	if (w->n == 0) {
		s->pb[PB_HALF - 1] = '/';
		return PB_HALF - 1;
	}
	w->off = PB_HALF;
	bpf_loop(PATH_DEPTH, build_cb, NULL, 0);
	return w->off;
}

/* copy_path copies the built path into dst (at most max bytes) and returns its length. */
static __always_inline __u32 copy_path(struct scratch *s, __u32 off, char *dst, __u32 max)
{
	if (off > PB_HALF)
		off = PB_HALF;
	__u32 len = PB_HALF - off;
	if (len > max)
		len = max;
	bpf_probe_read_kernel(dst, len & (PB_HALF - 1), &s->pb[off & (PB_HALF - 1)]);
	return len & (PB_HALF - 1);
}

static long match_cb(__u64 i, void *unused)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 1;
	struct walk *w = &s->w;
	if (i >= w->n)
		return 1;
	struct dentry *d = (struct dentry *)s->comps[(w->n - 1 - i) & (PATH_DEPTH - 1)];
	struct qstr q = BPF_CORE_READ(d, d_name);
	if (q.len == 0 || q.len >= TRIE_NAME_MAX)
		return 1;
	struct trie_key key = {};
	key.parent = w->node;
	key.len = q.len;
	bpf_probe_read_kernel(key.name, q.len & (TRIE_NAME_MAX - 1), q.name);
	struct trie_val *v = bpf_map_lookup_elem(&path_trie, &key);
	if (!v)
		return 1;
	if (v->terminal) {
		w->matched = 1;
		return 1;
	}
	w->node = v->node;
	return 0;
}

/* path_match walks the trie top-down with the collected components. */
static __always_inline bool path_match(struct walk *w)
{
	w->node = 0;
	w->matched = 0;
	bpf_loop(PATH_DEPTH, match_cb, NULL, 0);
	return w->matched;
}

static __always_inline bool exe_name_match(struct dentry *d)
{
	struct exe_key key = {};
	struct qstr q = BPF_CORE_READ(d, d_name);
	if (q.len == 0 || q.len >= EXE_NAME_MAX)
		return false;
	bpf_probe_read_kernel(key.name, q.len & (EXE_NAME_MAX - 1), q.name);
	return bpf_map_lookup_elem(&exe_names, &key) != NULL;
}

static __always_inline void emit_priv(struct sensor_config *cfg, struct task_struct *task, __u32 sig,
				      __s32 syscall, __s64 ret, struct pending_priv *p, const bool can_arm)
{
	struct priv_rec r = {};

	fill_hdr(&r.hdr, KIND_PRIV, task);
	r.hdr.size = sizeof(r);
	r.signal = sig;
	r.syscall = syscall;
	r.ret = ret;
	if (p) {
		r.args[0] = p->args[0];
		r.args[1] = p->args[1];
		r.args[2] = p->args[2];
		r.old_uid = p->old_uid;
		r.old_euid = p->old_euid;
		r.old_gid = p->old_gid;
		r.old_egid = p->old_egid;
		__builtin_memcpy(r.name, p->name, sizeof(r.name));
	}
	submit(cfg, KIND_PRIV, &r, sizeof(r), can_arm);
}

static __always_inline int handle_exec(struct task_struct *task, struct linux_binprm *bprm, const bool can_arm)
{
	struct sensor_config *cfg = get_config();
	if (!cfg || !(cfg->flags & CFG_EXEC) || !in_scope(cfg))
		return 0;

	struct file *file = BPF_CORE_READ(bprm, file);
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	bool fileless = BPF_CORE_READ(dentry, d_inode, __i_nlink) == 0;
	bool want = cfg->flags & CFG_EXEC_ALL;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	if (fileless && (cfg->signals & (1 << SIG_EXEC_MEMFD))) {
		struct pending_priv p = {};
		struct qstr q = BPF_CORE_READ(dentry, d_name);
		bpf_probe_read_kernel_str(p.name, sizeof(p.name), q.name);
		emit_priv(cfg, task, SIG_EXEC_MEMFD, -1, 0, &p, can_arm);
	}
	if (!want) {
		if (!exe_name_match(dentry))
			return 0;
	}
	if (!(cfg->flags & CFG_EXEC_ALL) && (cfg->flags & CFG_EXIT)) {
		__u8 one = 1;
		bpf_map_update_elem(&tracked, &pid, &one, BPF_ANY);
	}

	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct exec_rec *r = &s->exec.r;
	char *data = s->exec.data;
	struct walk *w = &s->w;

	fill_hdr(&r->hdr, KIND_EXEC, task);
	if (fileless)
		r->hdr.flags |= HDR_FILELESS;

	/* exe path */
	collect_path(w, task, dentry, BPF_CORE_READ(file, f_path.mnt));
	__u32 off = build_path(s, w);
	__u32 exe_len = copy_path(s, off, data, EXE_MAX);
	if (w->truncated)
		r->hdr.flags |= HDR_TRUNCATED;

	/* argv, NUL-separated, from the new mm */
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long as = BPF_CORE_READ(mm, arg_start);
	unsigned long ae = BPF_CORE_READ(mm, arg_end);
	__u32 args_len = 0;
	if (ae > as) {
		args_len = ae - as;
		if (args_len > ARGS_MAX) {
			args_len = ARGS_MAX;
			r->hdr.flags |= HDR_TRUNCATED;
		}
		if (exe_len > EXE_MAX)
			exe_len = EXE_MAX;
		if (bpf_probe_read_user(&data[exe_len], args_len & ARGS_MAX, (void *)as) < 0)
			args_len = 0;
	}

	/* names of the cgroup and its parent: the kubelet puts the container id
	 * in one and the pod UID in the other, and both survive the cgroup's
	 * removal in this record */
	__u32 cg_off = exe_len + args_len;
	if (cg_off > EXE_MAX + ARGS_MAX)
		cg_off = EXE_MAX + ARGS_MAX;
	struct kernfs_node *kn = task_cgroup_kn(task, cfg->flags & CFG_CGROUP_V1);
	const char *leaf = BPF_CORE_READ(kn, name);
	long l1 = bpf_probe_read_kernel_str(&data[cg_off], CGNAME_MAX + 1, leaf);
	if (l1 < 0)
		l1 = 0;
	__u32 cg_len = l1;
	struct kernfs_node *pkn = kn_parent(kn);
	if (pkn) {
		__u32 o2 = cg_off + cg_len;
		if (o2 > EXE_MAX + ARGS_MAX + CGNAME_MAX + 1)
			o2 = EXE_MAX + ARGS_MAX + CGNAME_MAX + 1;
		const char *pname = BPF_CORE_READ(pkn, name);
		long l2 = bpf_probe_read_kernel_str(&data[o2], CGNAME_MAX + 1, pname);
		if (l2 > 0)
			cg_len += l2;
	}
	if (cg_len > 2 * (CGNAME_MAX + 1))
		cg_len = 2 * (CGNAME_MAX + 1);

	r->exe_len = exe_len;
	r->args_len = args_len;
	r->cg_len = cg_len;
	r->_pad = 0;
	__u64 size = sizeof(*r) + exe_len + args_len + cg_len;
	if (size > sizeof(s->exec))
		size = sizeof(s->exec);
	r->hdr.size = size;
	submit(cfg, KIND_EXEC, r, size, can_arm);
	return 0;
}

static __always_inline int handle_exit(struct task_struct *task, const bool can_arm)
{
	struct sensor_config *cfg = get_config();
	if (!cfg || !(cfg->flags & CFG_EXIT))
		return 0;
	/* sched_process_exit fires per thread; report the process once, when
	 * its last thread goes (signal->live already dropped to zero). */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 pid = BPF_CORE_READ(task, tgid);
	if (!(cfg->flags & CFG_EXEC_ALL)) {
		if (!bpf_map_lookup_elem(&tracked, &pid))
			return 0;
		bpf_map_delete_elem(&tracked, &pid);
	} else if (!in_scope(cfg)) {
		return 0;
	}
	struct exit_rec r = {};
	fill_hdr(&r.hdr, KIND_EXIT, task);
	r.hdr.pid = pid;
	r.hdr.size = sizeof(r);
	/* exit_group stores the status for the whole group; a lone exit in the task */
	if (BPF_CORE_READ(task, signal, flags) & 0x4 /* SIGNAL_GROUP_EXIT */)
		r.exit_code = BPF_CORE_READ(task, signal, group_exit_code);
	else
		r.exit_code = BPF_CORE_READ(task, exit_code);
	r.start_ktime = BPF_CORE_READ(task, start_boottime);
	submit(cfg, KIND_EXIT, &r, sizeof(r), can_arm);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_tp_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return handle_exec(p, bprm, true);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(exec_raw_tp, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return handle_exec(p, bprm, false);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exit_tp_btf, struct task_struct *p)
{
	return handle_exit(p, true);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(exit_raw_tp, struct task_struct *p)
{
	return handle_exit(p, false);
}

/* ---- connect and the egress block ---- */

static __always_inline bool is_blocked(struct sensor_config *cfg)
{
	if (!(cfg->flags & CFG_BLOCKING))
		return false;
	__u64 id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&blocked_cgroups, &id))
		return true;
	/* blocking a pod's cgroup covers every container below it */
	for (int level = 1; level < 12; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			return false;
		if (bpf_map_lookup_elem(&blocked_cgroups, &id))
			return true;
	}
	return false;
}

static __always_inline int handle_connect(struct bpf_sock_addr *ctx, __u16 family)
{
	struct sensor_config *cfg = get_config();
	if (!cfg)
		return 1;
	bool blocked = is_blocked(cfg);
	__u16 dport = bpf_ntohs((__u16)ctx->user_port);

	if (!blocked) {
		if (!(cfg->flags & CFG_CONNECT) || !in_scope(cfg))
			return 1;
		if (!(cfg->flags & CFG_CONNECT_ALL) && !bpf_map_lookup_elem(&ports, &dport))
			return 1;
	}

	struct connect_rec r = {};
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	fill_hdr(&r.hdr, KIND_CONNECT, task);
	r.hdr.size = sizeof(r);
	if (blocked)
		r.hdr.flags |= HDR_BLOCKED;
	r.family = family;
	r.dport = dport;
	r.proto = ctx->protocol;
	if (r.proto == 0)
		r.proto = ctx->type == SOCK_DGRAM ? 17 : 6;
	if (family == AF_INET) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(r.daddr, &a, 4);
	} else {
		__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
		__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
		__builtin_memcpy(&r.daddr[0], &a0, 4);
		__builtin_memcpy(&r.daddr[4], &a1, 4);
		__builtin_memcpy(&r.daddr[8], &a2, 4);
		__builtin_memcpy(&r.daddr[12], &a3, 4);
	}
	submit(cfg, KIND_CONNECT, &r, sizeof(r), true);
	return blocked ? 0 : 1; /* 0 makes connect() fail with EPERM */
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return handle_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return handle_connect(ctx, AF_INET6);
}

/* ---- opens of sensitive paths ---- */

static __always_inline int handle_open(struct trace_event_raw_sys_exit *ctx)
{
	long fd = ctx->ret;
	if (fd < 0)
		return 0;
	struct sensor_config *cfg = get_config();
	if (!cfg || !(cfg->flags & CFG_FILES) || !in_scope(cfg))
		return 0;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd >= max)
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;

	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct walk *w = &s->w;
	collect_path(w, task, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt));
	if (!path_match(w))
		return 0;

	struct open_rec *r = &s->open.r;
	fill_hdr(&r->hdr, KIND_OPEN, task);
	__u32 off = build_path(s, w);
	__u32 len = copy_path(s, off, s->open.data, PB_HALF - 1);
	if (w->truncated)
		r->hdr.flags |= HDR_TRUNCATED;
	r->fflags = BPF_CORE_READ(f, f_flags);
	r->path_len = len;
	r->fd = fd;
	r->_pad = 0;
	__u64 size = sizeof(*r) + len;
	if (size > sizeof(s->open))
		size = sizeof(s->open);
	r->hdr.size = size;
	submit(cfg, KIND_OPEN, r, size, false);
	return 0;
}

/* Attached by the loader to sys_exit_openat, _open, _openat2, _creat and
 * _open_by_handle_at: every sys_exit event has the same layout. */
SEC("tracepoint/syscalls/sys_exit_openat")
int open_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return handle_open(ctx);
}

/* ---- privilege and evasion signals ---- */

#define CLONE_NEWNS 0x00020000
#define CLONE_NEWCGROUP 0x02000000
#define CLONE_NEWUTS 0x04000000
#define CLONE_NEWIPC 0x08000000
#define CLONE_NEWUSER 0x10000000
#define CLONE_NEWPID 0x20000000
#define CLONE_NEWNET 0x40000000
#define CLONE_NEWTIME 0x00000080
#define NS_FLAGS (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | \
		  CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME)

static __always_inline bool ptrace_interesting(long req)
{
	/* TRACEME, POKETEXT, POKEDATA, POKEUSER, SETREGS, ATTACH, SEIZE */
	return req == 0 || req == 4 || req == 5 || req == 6 || req == 13 || req == 16 || req == 0x4206;
}

/* nargs is the syscall's argument count: a tracepoint program may not read
 * past the event's fields, or attaching it fails with EACCES. */
static __always_inline int priv_enter(struct trace_event_raw_sys_enter *ctx, __u32 sig, int nargs)
{
	struct sensor_config *cfg = get_config();
	if (!cfg || !(cfg->signals & (1 << sig)) || !in_scope(cfg))
		return 0;
	if (sig == SIG_PTRACE && !ptrace_interesting(ctx->args[0]))
		return 0;
	if (sig == SIG_UNSHARE && !(ctx->args[0] & NS_FLAGS))
		return 0;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pending_priv p = {};
	p.signal = sig;
	p.syscall = ctx->id;
	p.args[0] = ctx->args[0];
	if (nargs > 1)
		p.args[1] = ctx->args[1];
	if (nargs > 2)
		p.args[2] = ctx->args[2];
	p.old_uid = BPF_CORE_READ(task, cred, uid.val);
	p.old_euid = BPF_CORE_READ(task, cred, euid.val);
	p.old_gid = BPF_CORE_READ(task, cred, gid.val);
	p.old_egid = BPF_CORE_READ(task, cred, egid.val);
	if (sig == SIG_MEMFD)
		bpf_probe_read_user_str(p.name, sizeof(p.name), (void *)ctx->args[0]);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending, &tid, &p, BPF_ANY);
	return 0;
}

static __always_inline int priv_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending_priv *p = bpf_map_lookup_elem(&pending, &tid);
	if (!p)
		return 0;
	struct sensor_config *cfg = get_config();
	if (!cfg) {
		bpf_map_delete_elem(&pending, &tid);
		return 0;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if ((p->signal == SIG_SETUID || p->signal == SIG_SETGID) && ctx->ret == 0) {
		/* a successful call that changed nothing (root setting root) is noise */
		if (p->old_uid == BPF_CORE_READ(task, cred, uid.val) &&
		    p->old_euid == BPF_CORE_READ(task, cred, euid.val) &&
		    p->old_gid == BPF_CORE_READ(task, cred, gid.val) &&
		    p->old_egid == BPF_CORE_READ(task, cred, egid.val)) {
			bpf_map_delete_elem(&pending, &tid);
			return 0;
		}
	}
	emit_priv(cfg, task, p->signal, p->syscall, ctx->ret, p, false);
	bpf_map_delete_elem(&pending, &tid);
	return 0;
}

#define PRIV(sc, sig, nargs)                                           \
	SEC("tracepoint/syscalls/sys_enter_" #sc)                      \
	int priv_enter_##sc(struct trace_event_raw_sys_enter *ctx)     \
	{                                                              \
		return priv_enter(ctx, sig, nargs);                    \
	}                                                              \
	SEC("tracepoint/syscalls/sys_exit_" #sc)                       \
	int priv_exit_##sc(struct trace_event_raw_sys_exit *ctx)       \
	{                                                              \
		return priv_exit(ctx);                                 \
	}

PRIV(setuid, SIG_SETUID, 1)
PRIV(setreuid, SIG_SETUID, 2)
PRIV(setresuid, SIG_SETUID, 3)
PRIV(setfsuid, SIG_SETUID, 1)
PRIV(setgid, SIG_SETGID, 1)
PRIV(setregid, SIG_SETGID, 2)
PRIV(setresgid, SIG_SETGID, 3)
PRIV(setfsgid, SIG_SETGID, 1)
PRIV(ptrace, SIG_PTRACE, 4)
PRIV(memfd_create, SIG_MEMFD, 2)
PRIV(unshare, SIG_UNSHARE, 1)
PRIV(setns, SIG_SETNS, 2)
PRIV(init_module, SIG_MODULE, 3)
PRIV(finit_module, SIG_MODULE, 3)
