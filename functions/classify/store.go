package classify

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"parry.dev/parry/internal/guard"
)

// state is what classify remembers across restarts: workload baselines,
// open incidents (for dedup), circuit breakers and sensor loss per node.
type state struct {
	Workloads map[string]*baseline      `json:"workloads"`
	Incidents map[string]*incident      `json:"incidents"`
	Breakers  map[string]*guard.Breaker `json:"breakers"`
	Loss      map[string]time.Time      `json:"loss"`
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

// incidentTTL bounds how long a closed-for-dedup incident is remembered.
const incidentTTL = 24 * time.Hour

func loadState(path string) (*state, error) {
	st := &state{}
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
	if st.Workloads == nil {
		st.Workloads = map[string]*baseline{}
	}
	if st.Incidents == nil {
		st.Incidents = map[string]*incident{}
	}
	if st.Breakers == nil {
		st.Breakers = map[string]*guard.Breaker{}
	}
	if st.Loss == nil {
		st.Loss = map[string]time.Time{}
	}
	return st, nil
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
