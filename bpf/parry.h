/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Record layout shared by the BPF programs (sensor.bpf.c) and the Go parser
 * (sensor/internal/wire). Every record starts with struct rec_hdr; hdr.size is
 * the number of bytes the program meant to submit, so userspace can reject a
 * record whose length disagrees with its own header. Changing a layout means
 * bumping RECORD_VERSION and the Go parser in the same commit; the Go tests
 * compare these structs with the Go offsets through the bpf2go-generated types.
 * The enums reach Go the same way (bpf2go -type, sensor/internal/kernel/abi.go):
 * Go has no copy of their values. A new enum Go needs goes into gen.go and
 * gets an unused pointer in sensor.bpf.c, or bpf2go cannot see it.
 */
#ifndef PARRY_H
#define PARRY_H

#define RECORD_VERSION 1

enum rec_kind {
	KIND_EXEC = 1,
	KIND_EXIT = 2,
	KIND_CONNECT = 3,
	KIND_OPEN = 4,
	KIND_PRIV = 5,
	KIND_MAX = 6, /* counters are indexed [kind], 0 is unused */
};

/* Counter slots per kind, in the per-CPU counters map at kind*CNT_STRIDE. */
enum counter_slot {
	CNT_SEEN = 0,    /* events that passed the in-kernel filters */
	CNT_DROPPED = 1, /* of those, the ones the ring buffer had no room for */
	CNT_STRIDE = 2,
};

/* Privilege and evasion signals; bit (1 << sig) in config.signals enables one. */
enum priv_signal {
	SIG_SETUID = 1,     /* setuid, setreuid, setresuid, setfsuid */
	SIG_SETGID = 2,     /* setgid, setregid, setresgid, setfsgid */
	SIG_PTRACE = 3,     /* attach, seize, traceme, poke, setregs */
	SIG_MEMFD = 4,      /* memfd_create */
	SIG_EXEC_MEMFD = 5, /* exec of a file without a name on disk (memfd, deleted) */
	SIG_UNSHARE = 6,    /* unshare with namespace flags */
	SIG_SETNS = 7,      /* setns */
	SIG_MODULE = 8,     /* init_module, finit_module */
	SIG_MAX = 9,
};

/* config.flags */
enum config_flag {
	CFG_EXEC = 1 << 0,        /* exec events on */
	CFG_EXEC_ALL = 1 << 1,    /* every exec, not only exe_names */
	CFG_EXIT = 1 << 2,        /* exit of processes whose exec was reported */
	CFG_CONNECT = 1 << 3,     /* connect events on */
	CFG_CONNECT_ALL = 1 << 4, /* every port, not only ports */
	CFG_FILES = 1 << 5,       /* opens matching path_trie */
	CFG_SCOPE = 1 << 6,       /* only cgroups below scope_roots */
	CFG_CGROUP_V1 = 1 << 7,   /* attribute by the v1 memory cgroup names */
	CFG_BLOCKING = 1 << 8,    /* blocked_cgroups is not empty */
};

/* hdr.flags */
enum hdr_flag {
	HDR_TRUNCATED = 1 << 0, /* a path or argv did not fit and was cut */
	HDR_BLOCKED = 1 << 1,   /* connect: refused by the egress block */
	HDR_FILELESS = 1 << 2,  /* exec: the file has no link on disk (memfd, deleted) */
};

struct sensor_config {
	__u32 flags;
	__u32 signals;
	__u64 wakeup_bytes; /* force a wake-up once this much is unread (see also wakeup_ns) */
};

struct rec_hdr {
	__u8 kind;
	__u8 version;
	__u16 flags;
	__u32 size; /* bytes of the whole record, header included */
	__u64 ktime; /* CLOCK_BOOTTIME ns */
	__u64 cgroup_id; /* cgroup v2 id (= inode of the cgroup2 directory) */
	__u64 memcg_id;  /* v1 memory controller cgroup id, 0 without one */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 egid;
	__u32 _pad;
	char comm[16];
};

#define EXE_MAX 2047  /* path bytes kept for exe and file paths */
#define ARGS_MAX 1023 /* argv bytes kept, NUL-separated */
#define CGNAME_MAX 127

/* Followed by exe (exe_len), argv (args_len), cgroup leaf NUL parent NUL (cg_len). */
struct exec_rec {
	struct rec_hdr hdr;
	__u32 exe_len;
	__u32 args_len;
	__u32 cg_len;
	__u32 _pad;
};

struct exit_rec {
	struct rec_hdr hdr;
	__s32 exit_code; /* wait status: code << 8 | signal */
	__u32 _pad;
	__u64 start_ktime; /* CLOCK_BOOTTIME ns the process started */
};

struct connect_rec {
	struct rec_hdr hdr;
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 dport;  /* host byte order */
	__u8 proto;   /* IPPROTO_TCP, IPPROTO_UDP, ... */
	__u8 _pad[3];
	__u8 daddr[16]; /* v4 in the first 4 bytes */
};

/* Followed by path (path_len). */
struct open_rec {
	struct rec_hdr hdr;
	__u32 fflags; /* file->f_flags */
	__u32 path_len;
	__s32 fd;
	__u32 _pad;
};

struct priv_rec {
	struct rec_hdr hdr;
	__u32 signal;
	__s32 syscall; /* syscall number, -1 for the exec signal */
	__s64 ret;
	__u64 args[3];
	__u32 old_uid;
	__u32 old_euid;
	__u32 old_gid;
	__u32 old_egid;
	char name[64]; /* memfd name, or the exe's basename for SIG_EXEC_MEMFD */
};

/* path_trie: one node per path component; node 0 is "/". */
#define TRIE_NAME_MAX 64 /* names of 64 bytes or more never match */
struct trie_key {
	__u32 parent;
	__u32 len;
	char name[TRIE_NAME_MAX];
};

struct trie_val {
	__u32 node;
	__u32 terminal; /* a configured prefix ends here */
};

#define EXE_NAME_MAX 32
struct exe_key {
	char name[EXE_NAME_MAX];
};

#endif
