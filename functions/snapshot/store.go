package snapshot

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Store keeps evidence bundles, each named by its incident id and pod UID.
// A bundle is immutable once written: Put never replaces one, whatever the
// caller asks. Every method refuses ids that CheckID refuses before it
// touches the store.
type Store interface {
	// Put stores a complete bundle: every file by its path in the bundle,
	// manifest.json and manifest.sig among them. When the store already
	// holds a bundle of that incident and pod it returns an *ExistsError
	// and the bundle there is left as it is.
	Put(ctx context.Context, incident, pod string, files map[string][]byte) error
	// Head returns manifest.json and manifest.sig of a stored bundle, or
	// an error that is fs.ErrNotExist when there is none.
	Head(ctx context.Context, incident, pod string) (manifest, sig []byte, err error)
	// Fetch copies every file of a stored bundle into dir, which must be
	// absent or empty. It copies what is there, also files the manifest
	// does not list, so that VerifySigned sees the bundle as stored; what
	// cannot be a bundle's file (a symbolic link, a name leaving dir) is
	// an error naming it.
	Fetch(ctx context.Context, incident, pod, dir string) error
	// Pods lists, sorted, the pod UIDs the incident has bundles of.
	Pods(ctx context.Context, incident string) ([]string, error)
	// Prune deletes the bundles written before cutoff and says how many.
	Prune(ctx context.Context, cutoff time.Time) (int, error)
	// Location names a bundle for people: a directory, an s3:// URL; with
	// pod "" the incident's bundles, with both "" the store.
	Location(incident, pod string) string
}

// ExistsError is Put's answer when the store already holds the bundle.
type ExistsError struct{ Location string }

func (e *ExistsError) Error() string {
	return "an evidence bundle is already stored at " + e.Location + ": bundles are never overwritten"
}

// maxIDLen bounds an incident id or pod UID (a pod UID is 36 bytes).
const maxIDLen = 128

// CheckID refuses an incident id or pod UID that could name anything but
// one bundle: it must be 1 to 128 letters, digits, '.', '_' or '-',
// starting with a letter or digit (so no "..", "/", absolute path or NUL).
// what names the id in the error ("incident id", "pod UID").
func CheckID(what, id string) error {
	if validID(id) {
		return nil
	}
	shown := id
	if len(shown) > 40 {
		shown = shown[:40] + "..."
	}
	return fmt.Errorf("invalid %s %q (%d bytes): an evidence bundle's id is 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", what, shown, len(id), maxIDLen)
}

func checkIDs(incident, pod string) error {
	if err := CheckID("incident id", incident); err != nil {
		return err
	}
	return CheckID("pod UID", pod)
}

// validID: an incident id or pod UID that is safe as a directory name and
// an object key's segment.
func validID(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// The settings of the evidence store, read through Deps.Getenv by the step
// and from the environment by `parry evidence get`.
const (
	// EnvStore names the store: a directory, or s3://bucket[/prefix].
	// Unset: the directory evidence/ in the step's state directory (in a
	// cluster, the PersistentVolumeClaim parry-evidence is mounted there).
	EnvStore = "PARRY_EVIDENCE_STORE"
	// EnvRetention is how long bundles are kept: a Go duration ("720h")
	// or a number of days ("90d"); "0" keeps them forever.
	EnvRetention = "PARRY_EVIDENCE_RETENTION"
	// EnvS3Endpoint is the S3 server: host[:port] (HTTPS), or a URL
	// http://host:port or https://host:port. Default: AWS S3.
	EnvS3Endpoint = "PARRY_EVIDENCE_S3_ENDPOINT"
	// The S3 credentials and region have AWS's usual names.
	EnvS3AccessKey    = "AWS_ACCESS_KEY_ID"
	EnvS3SecretKey    = "AWS_SECRET_ACCESS_KEY"
	EnvS3SessionToken = "AWS_SESSION_TOKEN"
	EnvS3Region       = "AWS_REGION"
)

// DefaultRetention is how long bundles are kept unless EnvRetention says
// otherwise: 90 days.
const DefaultRetention = 90 * 24 * time.Hour

// OpenStore opens the store that spec names: an s3:// URL (the S3 store,
// set up from getenv's EnvS3* settings), else a directory (the directory
// store). An empty spec is the directory stateDir/evidence.
func OpenStore(spec, stateDir string, getenv func(string) string) (Store, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	switch {
	case strings.HasPrefix(spec, "s3://"):
		return openS3(spec, getenv)
	case strings.Contains(spec, "://"):
		return nil, fmt.Errorf("evidence store %q: want a directory or s3://bucket[/prefix]", spec)
	case spec == "":
		return NewDirStore(filepath.Join(stateDir, "evidence")), nil
	}
	return NewDirStore(spec), nil
}

// ParseRetention reads EnvRetention's value: "" is DefaultRetention, "0"
// keeps bundles forever (0), "90d" is days, anything else a Go duration.
func ParseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return DefaultRetention, nil
	case s == "0":
		return 0, nil
	case strings.HasSuffix(s, "d"):
		days, err := strconv.Atoi(strings.TrimSuffix(s, "d"))
		if err == nil && days > 0 && days < 100*365 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	default:
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			return d, nil
		}
	}
	return 0, fmt.Errorf("%s=%q: want a positive duration (720h) or days (90d), or 0 to keep bundles forever", EnvRetention, s)
}

// errNotBundle is wrapped by the errors that name a file a bundle cannot
// have.
var errNotBundle = errors.New("not a file of an evidence bundle")
