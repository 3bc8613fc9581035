package journal_test

import (
	"context"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"parry.dev/parry/internal/journal"
)

// BenchmarkAppendComplete is the journal's share of one delivered event: the
// event with one delivery, then the delivery marked done, from many
// goroutines at once as the broker does.
func BenchmarkAppendComplete(b *testing.B) {
	ctx := context.Background()
	j, err := journal.Open(ctx, filepath.Join(b.TempDir(), "j.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	e := sensorEvent(b, "template")
	var n atomic.Int64
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := e.Clone()
			ev.SetID(strconv.FormatInt(n.Add(1), 10))
			r, err := journal.NewRecord("ns/b", "", ev, []string{"ns/t"})
			if err != nil {
				b.Error(err)
				return
			}
			a, err := j.Append(ctx, r)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := j.Complete(ctx, journal.Key{Seq: a.Seq, Trigger: "ns/t", Target: journal.ToSubscriber}, 1, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
