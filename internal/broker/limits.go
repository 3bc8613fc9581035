package broker

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound what the ingress accepts, counting events and bytes, per
// sender and over all senders, so that a flood cannot grow the journal
// without end. A sender is its authenticated identity (its address when
// the ingress runs insecure). Each rate allows a burst of one second's worth. Zero
// fields take the defaults; a negative rate means no limit.
type Limits struct {
	SenderEvents, SenderBytes int // per second, per sender
	TotalEvents, TotalBytes   int // per second, all senders
}

// DefaultLimits leave room for a sensor's storm (a few thousand events a
// second) and several nodes on the embedded broker's one ingress.
func DefaultLimits() Limits {
	return Limits{SenderEvents: 5000, SenderBytes: 8 << 20, TotalEvents: 20000, TotalBytes: 32 << 20}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	for _, f := range []struct{ v, def *int }{{&l.SenderEvents, &d.SenderEvents}, {&l.SenderBytes, &d.SenderBytes}, {&l.TotalEvents, &d.TotalEvents}, {&l.TotalBytes, &d.TotalBytes}} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return l
}

// maxSenders bounds the per-sender table; the least recently seen sender
// goes first.
const maxSenders = 4096

// limiter holds the token buckets.
type limiter struct {
	limits  Limits
	total   bucketPair
	mu      sync.Mutex
	senders map[string]*senderBuckets
}

type bucketPair struct{ events, bytes *rate.Limiter }

type senderBuckets struct {
	bucketPair
	seen time.Time
}

func newLimiter(l Limits) *limiter {
	l = l.withDefaults()
	return &limiter{limits: l, total: pair(l.TotalEvents, l.TotalBytes), senders: map[string]*senderBuckets{}}
}

func pair(events, bytes int) bucketPair {
	return bucketPair{events: bucket(events), bytes: bucket(bytes)}
}

func bucket(perSecond int) *rate.Limiter {
	if perSecond < 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(perSecond, 1))
}

// admit takes one event of size bytes from sender's buckets and the
// totals. It returns 0, or how long the sender should wait before it
// tries again (nothing is taken then).
func (l *limiter) admit(sender string, size int, now time.Time) time.Duration {
	l.mu.Lock()
	s, ok := l.senders[sender]
	if !ok {
		if len(l.senders) >= maxSenders {
			l.evictOldest()
		}
		s = &senderBuckets{bucketPair: pair(l.limits.SenderEvents, l.limits.SenderBytes)}
		l.senders[sender] = s
	}
	s.seen = now
	l.mu.Unlock()

	var taken []*rate.Reservation
	var wait time.Duration
	for _, take := range []struct {
		b *rate.Limiter
		n int
	}{{s.events, 1}, {s.bytes, size}, {l.total.events, 1}, {l.total.bytes, size}} {
		r := take.b.ReserveN(now, take.n)
		if !r.OK() {
			// Larger than a whole second's worth: it can never pass.
			wait = time.Second
			break
		}
		taken = append(taken, r)
		wait = max(wait, r.DelayFrom(now))
	}
	if wait > 0 {
		for _, r := range taken {
			r.CancelAt(now)
		}
	}
	return wait
}

func (l *limiter) evictOldest() {
	oldest := ""
	for k, s := range l.senders {
		if oldest == "" || s.seen.Before(l.senders[oldest].seen) {
			oldest = k
		}
	}
	delete(l.senders, oldest)
}

// sender is r's address: who sent it when the ingress runs insecure.
func sender(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// tooMany answers 429 with Retry-After in whole seconds (at least 1).
func tooMany(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(wait, time.Second).Seconds()))))
	http.Error(w, "ingress limit reached (events or bytes per second, for this sender or in total): retry after the Retry-After seconds", http.StatusTooManyRequests)
}
