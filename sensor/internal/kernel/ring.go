package kernel

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring consumes the BPF ring buffer directly from its memory mapping, as
// libbpf's ring_buffer__consume does, and waits for it in Go's netpoller.
//
// cilium/ebpf's ringbuf.Reader is correct but makes an epoll_wait system
// call on every drain; each system call after an idle spell wakes the Go
// runtime's sysmon thread, which then polls every 20µs for a millisecond.
// Under a stream of small bursts (an exec storm) that cost several times
// more CPU than reading the records. Draining here is system-call free, and
// a goroutine waiting in the netpoller holds no thread.
//
// Not safe for concurrent use; Close may be called from another goroutine
// to interrupt Wait.
type Ring struct {
	cons []byte // consumer page, read-write: the consumer position
	prod []byte // producer page, then the data pages mapped twice
	data []byte
	mask uint64

	file   *os.File        // pollable duplicate of the map's fd, nil: use poll(2)
	conn   syscall.RawConn // waits on file in the netpoller
	fd     int             // the duplicate, for poll(2)
	dl     time.Time       // current read deadline of file
	checks int             // readiness checks in the current Wait: more than one means it slept (or a stale readiness woke it: counted the same)
	ready  func(uintptr) bool
	closed atomic.Bool
}

const (
	ringBusyBit    = 1 << 31
	ringDiscardBit = 1 << 30
	ringHdrSize    = 8
)

// NewRing maps the ring buffer for reading.
func (k *Kernel) NewRing() (*Ring, error) {
	m := k.maps.Events
	size := int(m.MaxEntries())
	ps := os.Getpagesize()
	fd, err := unix.Dup(m.FD())
	if err != nil {
		return nil, fmt.Errorf("ring buffer: %w", err)
	}
	r := &Ring{fd: fd, mask: uint64(size - 1)}
	r.ready = func(uintptr) bool { r.checks++; return r.Available() > 0 }
	if r.cons, err = unix.Mmap(fd, 0, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mapping the ring buffer's consumer page: %w", err)
	}
	// The data pages follow the producer page twice, so a record that
	// wraps around the end is still contiguous in memory.
	if r.prod, err = unix.Mmap(fd, int64(ps), ps+2*size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		unix.Munmap(r.cons)
		unix.Close(fd)
		return nil, fmt.Errorf("mapping the ring buffer's data: %w", err)
	}
	r.data = r.prod[ps:]
	if err := unix.SetNonblock(fd, true); err == nil {
		f := os.NewFile(uintptr(fd), "bpf-ringbuf")
		if f.SetReadDeadline(time.Time{}) == nil { // registered with the netpoller
			if rc, err := f.SyscallConn(); err == nil {
				r.file, r.conn = f, rc
				return r, nil
			}
		}
		// os.NewFile owns fd now; keep it open for poll(2) through f
		r.file = f
	}
	return r, nil
}

func (r *Ring) consPos() *uint64 { return (*uint64)(unsafe.Pointer(&r.cons[0])) }
func (r *Ring) prodPos() *uint64 { return (*uint64)(unsafe.Pointer(&r.prod[0])) }

// Available is the number of unread bytes.
func (r *Ring) Available() uint64 {
	return atomic.LoadUint64(r.prodPos()) - atomic.LoadUint64(r.consPos())
}

// Drain hands every committed record to fn, in order, and frees its space
// once fn returns (fn must not keep the slice). It returns the number of
// records read. A record still being written stops the drain: the next
// Drain gets it.
func (r *Ring) Drain(fn func([]byte)) int {
	n := 0
	cons := atomic.LoadUint64(r.consPos())
	for {
		prod := atomic.LoadUint64(r.prodPos())
		if cons >= prod {
			return n
		}
		off := cons & r.mask
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[off])))
		if hdr&ringBusyBit != 0 {
			return n
		}
		length := uint64(hdr &^ (ringBusyBit | ringDiscardBit))
		if hdr&ringDiscardBit == 0 {
			start := off + ringHdrSize
			fn(r.data[start : start+length : start+length])
			n++
		}
		cons += (length + ringHdrSize + 7) &^ 7
		atomic.StoreUint64(r.consPos(), cons)
	}
}

// ErrRingClosed is returned by Wait after Close.
var ErrRingClosed = errors.New("ring buffer closed")

// Wait blocks until the kernel signals new records or the deadline passes
// (os.ErrDeadlineExceeded); a zero deadline waits without limit. Records
// submitted without a wake-up do not end a Wait. slept is false when
// records were already there and Wait returned at once.
func (r *Ring) Wait(deadline time.Time) (slept bool, err error) {
	if r.conn == nil {
		return r.waitPoll(deadline)
	}
	if !deadline.Equal(r.dl) {
		// resetting a runtime timer to the same time still costs a
		// netpoll wake-up: skip it
		r.file.SetReadDeadline(deadline)
		r.dl = deadline
	}
	r.checks = 0
	err = r.conn.Read(r.ready)
	slept = r.checks > 1
	switch {
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		return slept, err
	case errors.Is(err, os.ErrClosed):
		return slept, ErrRingClosed
	}
	return slept, err
}

// waitPoll is Wait for kernels whose ring buffer fd the netpoller does not
// take.
func (r *Ring) waitPoll(deadline time.Time) (slept bool, err error) {
	for ; ; slept = true {
		if r.closed.Load() {
			return slept, ErrRingClosed
		}
		if r.Available() > 0 {
			return slept, nil
		}
		timeout := -1
		if !deadline.IsZero() {
			timeout = int(time.Until(deadline).Milliseconds())
			if timeout <= 0 {
				return slept, os.ErrDeadlineExceeded
			}
			timeout = min(timeout, 100) // notice Close within 100ms
		} else {
			timeout = 100
		}
		pfd := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, timeout); err != nil && !errors.Is(err, unix.EINTR) {
			return slept, ErrRingClosed
		}
	}
}

// Close unmaps the ring and interrupts Wait.
func (r *Ring) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	if r.file != nil {
		return r.file.Close()
	}
	return unix.Close(r.fd)
}

// Unmap releases the mappings; call it after the reader stopped.
func (r *Ring) Unmap() {
	if r.prod != nil {
		unix.Munmap(r.prod)
		r.prod, r.data = nil, nil
	}
	if r.cons != nil {
		unix.Munmap(r.cons)
		r.cons = nil
	}
}
