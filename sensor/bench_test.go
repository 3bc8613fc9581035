package sensor

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/sensor/internal/emit"
	"parry.dev/parry/sensor/internal/wire"
)

// benchPipeline is the reader's hot path without a kernel, emitting into
// an emitter whose sink is never reached (its queue holds everything).
func benchPipeline(b *testing.B, coalesce time.Duration) *pipeline {
	em, err := emit.New(emit.Options{Sink: "http://127.0.0.1:1/", QueueLen: 1 << 30, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	return testPipeline(Config{CoalesceWindow: coalesce}, nil, em)
}

func rawRecord(kind wire.Kind, size int) []byte {
	b := make([]byte, size)
	b[0], b[1] = byte(kind), wire.Version
	binary.LittleEndian.PutUint32(b[4:], uint32(size))
	binary.LittleEndian.PutUint64(b[16:], 7)
	binary.LittleEndian.PutUint32(b[32:], 100)
	copy(b[64:], "storm\x00")
	return b
}

func execRaw(pid uint32, ktime uint64) []byte {
	exe, args, cg := "/usr/bin/true", "true\x00", "cri-containerd-x.scope\x00kubepods-pod.slice\x00"
	b := rawRecord(wire.KindExec, wire.ExecFixedSize+len(exe)+len(args)+len(cg))
	binary.LittleEndian.PutUint64(b[8:], ktime)
	binary.LittleEndian.PutUint32(b[32:], pid)
	binary.LittleEndian.PutUint32(b[80:], uint32(len(exe)))
	binary.LittleEndian.PutUint32(b[84:], uint32(len(args)))
	binary.LittleEndian.PutUint32(b[88:], uint32(len(cg)))
	copy(b[wire.ExecFixedSize:], exe+args+cg)
	return b
}

func exitRaw(pid uint32, ktime uint64) []byte {
	b := rawRecord(wire.KindExit, wire.ExitSize)
	binary.LittleEndian.PutUint64(b[8:], ktime)
	binary.LittleEndian.PutUint32(b[32:], pid)
	return b
}

func connectRaw(ktime uint64) []byte {
	b := rawRecord(wire.KindConnect, wire.ConnectSize)
	binary.LittleEndian.PutUint64(b[8:], ktime)
	binary.LittleEndian.PutUint16(b[80:], 2)
	binary.LittleEndian.PutUint16(b[82:], 9)
	b[84] = 17
	copy(b[88:], []byte{127, 0, 0, 1})
	return b
}

// BenchmarkHandleExecExit is the userspace cost of an exec storm's records
// (one exec and one exit per process), with the default coalescing.
func BenchmarkHandleExecExit(b *testing.B) {
	p := benchPipeline(b, time.Second)
	recs := make([][]byte, 0, 2048)
	for i := range 1024 {
		recs = append(recs, execRaw(uint32(1000+i), uint64(i)*1000), exitRaw(uint32(1000+i), uint64(i)*1000+500))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.handle(recs[i%len(recs)])
		i++
	}
}

// BenchmarkHandleConnect is the userspace cost of a connect storm's records.
func BenchmarkHandleConnect(b *testing.B) {
	p := benchPipeline(b, time.Second)
	rec := connectRaw(1)
	b.ReportAllocs()
	for b.Loop() {
		p.handle(rec)
	}
}

// BenchmarkHandleEveryEvent: coalescing off, every record becomes a
// CloudEvent (built and queued; delivery is the emitter's).
func BenchmarkHandleEveryEvent(b *testing.B) {
	p := benchPipeline(b, -1)
	rec := connectRaw(1)
	b.ReportAllocs()
	for b.Loop() {
		p.handle(rec)
	}
}
