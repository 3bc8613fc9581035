package classify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"parry.dev/parry/internal/guard"
)

// store keeps classify's state: the file store under parry run, PostgreSQL
// in a cluster. Both run the one decision of classify.go.
type store interface {
	// update runs decide on the entries of scope (and no others) and saves
	// what decide added or changed (it removes nothing), atomically with
	// respect to every other update of those entries: in this process,
	// and for PostgreSQL in every replica. Nothing is saved when decide
	// fails.
	update(ctx context.Context, s scope, decide func(st *state) error) error
}

// scope names the entries one event may read and change.
type scope struct {
	now time.Time
	// workload is the baseline's key; "" for none.
	workload string
	// pod and playbook name the open incident and playbook the breaker;
	// playbook "" for none.
	pod, playbook string
	// node is the sensor whose loss is read or recorded.
	node string
}

// state is what classify remembers across restarts: workload baselines,
// open incidents (for dedup), circuit breakers and sensor loss per node.
// The file store holds all of it; the PostgreSQL store hands decide only
// the entries of one scope.
type state struct {
	Workloads map[string]*baseline      `json:"workloads"`
	Incidents map[string]*incident      `json:"incidents"`
	Breakers  map[string]*guard.Breaker `json:"breakers"`
	Loss      map[string]time.Time      `json:"loss"`
}

func newState() *state {
	return &state{Workloads: map[string]*baseline{}, Incidents: map[string]*incident{}, Breakers: map[string]*guard.Breaker{}, Loss: map[string]time.Time{}}
}

// incidentKey is the key of a pod's open incident of a playbook in
// state.Incidents (and classify.json). Playbook names hold no "|" (the
// compiler allows DNS labels only), so no two pairs share a key.
func incidentKey(pod, playbook string) string { return pod + "|" + playbook }

// entries are the JSON encodings of one scope's entries, "" for absent
// ones: comparing them before and after decide tells what to save.
type entries struct{ workload, incident, breaker, loss string }

func (st *state) entries(s scope) (entries, error) {
	var e entries
	var errs []error
	enc := func(dst *string, v any, ok bool) {
		if !ok {
			return
		}
		b, err := json.Marshal(v)
		errs = append(errs, err)
		*dst = string(b)
	}
	b, ok := st.Workloads[s.workload]
	enc(&e.workload, b, ok)
	inc, ok := st.Incidents[incidentKey(s.pod, s.playbook)]
	enc(&e.incident, inc, ok)
	br, ok := st.Breakers[s.playbook]
	enc(&e.breaker, br, ok)
	t, ok := st.Loss[s.node]
	enc(&e.loss, t, ok)
	if err := errors.Join(errs...); err != nil {
		return e, fmt.Errorf("classify state: %w", err)
	}
	return e, nil
}

type set map[string]bool

type baseline struct {
	Since time.Time `json:"since"`
	Exes  set       `json:"exes"`
	Dests set       `json:"dests"`
	Ports set       `json:"ports"`
}

type incident struct {
	ID       string    `json:"id"`
	Playbook string    `json:"playbook"`
	Pod      string    `json:"pod"`
	Workload string    `json:"workload"`
	First    string    `json:"first"`
	Opened   time.Time `json:"opened"`
	Last     time.Time `json:"last"`
	Events   int       `json:"events"`
	Score    int       `json:"score"`
	Response string    `json:"response"`
	Reasons  []string  `json:"reasons"`
}

// maxWorkloads bounds the baselines kept: short-lived pods without an owner
// each get one, and the store must not grow without end.
const maxWorkloads = 10000

// incidentTTL bounds how long a closed-for-dedup incident is remembered.
const incidentTTL = 24 * time.Hour

// fileStore keeps the whole state in memory and in one JSON file, written
// after each change; one lock serializes the decisions.
type fileStore struct {
	path string
	mu   sync.Mutex
	st   *state
}

// loadFileStore reads path; "" keeps the state in memory only.
func loadFileStore(path string) (*fileStore, error) {
	st := newState()
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("classify store: %w", err)
		default:
			if err := json.Unmarshal(b, st); err != nil {
				return nil, fmt.Errorf("classify store %s is corrupt: %w (move it aside to start with empty baselines)", path, err)
			}
		}
	}
	fresh := newState()
	if st.Workloads == nil {
		st.Workloads = fresh.Workloads
	}
	if st.Incidents == nil {
		st.Incidents = fresh.Incidents
	}
	if st.Breakers == nil {
		st.Breakers = fresh.Breakers
	}
	if st.Loss == nil {
		st.Loss = fresh.Loss
	}
	return &fileStore{path: path, st: st}, nil
}

func (f *fileStore) update(_ context.Context, s scope, decide func(*state) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	before, err := f.st.entries(s)
	if err != nil {
		return err
	}
	if err := decide(f.st); err != nil {
		return err
	}
	after, err := f.st.entries(s)
	if err != nil || after == before {
		return err
	}
	f.st.evictWorkloads(maxWorkloads)
	f.st.expire(s.now)
	return f.st.save(f.path)
}

// evictWorkloads drops the oldest baselines until at most n remain.
func (st *state) evictWorkloads(n int) {
	for len(st.Workloads) > n {
		oldest := ""
		for k, b := range st.Workloads {
			if oldest == "" || b.Since.Before(st.Workloads[oldest].Since) {
				oldest = k
			}
		}
		delete(st.Workloads, oldest)
	}
}

func (st *state) expire(now time.Time) {
	for k, inc := range st.Incidents {
		if now.Sub(inc.Last) > incidentTTL {
			delete(st.Incidents, k)
		}
	}
}

// save writes the state atomically (write and rename), so a crash leaves
// the old or the new file, never half of one.
func (st *state) save(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("classify store: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("classify store: %w", err)
	}
	return os.Rename(tmp, path)
}
