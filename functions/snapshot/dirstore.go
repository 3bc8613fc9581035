package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DirStore keeps each bundle as the directory <incident>/<pod UID> below
// its directory (in a cluster, a PersistentVolumeClaim). A bundle is
// written into a temporary directory beside it and renamed into place,
// which fails when a bundle is there: a bundle is whole or absent, and
// never replaced. The bundle's directory is then made read-only (0500) and
// its files are 0400. Every path goes through an os.Root at the store, so
// no id, file name or symbolic link leads outside it.
type DirStore struct{ dir string }

// NewDirStore is the directory store at dir (created on the first Put).
func NewDirStore(dir string) *DirStore { return &DirStore{dir: dir} }

// tmpPrefix starts the name of a bundle being written; no valid id starts
// with '.', so it never is a bundle's name.
const tmpPrefix = ".tmp-"

// staleTmp is the age after which a temporary directory is a crash's
// leftover (a bundle takes seconds to write).
const staleTmp = time.Hour

// Location is the bundle's directory.
func (s *DirStore) Location(incident, pod string) string { return filepath.Join(s.dir, incident, pod) }

func (s *DirStore) Put(_ context.Context, incident, pod string, files map[string][]byte) error {
	if err := checkIDs(incident, pod); err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(s.dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.MkdirAll(incident, 0o700); err != nil {
		return err
	}
	inc, err := root.OpenRoot(incident)
	if err != nil {
		return err
	}
	defer inc.Close()
	if _, err := inc.Lstat(pod); err == nil {
		return &ExistsError{Location: s.Location(incident, pod)}
	}
	tmp := tmpPrefix + pod + "-" + rand.Text()[:8]
	if err := inc.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			inc.RemoveAll(tmp)
		}
	}()
	if err := writeBundle(inc, tmp, files); err != nil {
		return err
	}
	// rename(2) of a directory onto a non-empty one fails, so of two
	// writers one wins; the loser's bundle is dropped.
	if err := inc.Rename(tmp, pod); err != nil {
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return &ExistsError{Location: s.Location(incident, pod)}
		}
		return err
	}
	done = true
	if err := inc.Chmod(pod, 0o500); err != nil {
		return err
	}
	return syncDir(inc, ".")
}

// writeBundle writes the files into the new directory dir of root, each
// synced, the manifest last.
func writeBundle(root *os.Root, dir string, files map[string][]byte) error {
	b, err := root.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer b.Close()
	names := slices.Sorted(maps.Keys(files))
	// the manifest last: a torn copy of the directory without it is
	// visibly incomplete
	names = slices.DeleteFunc(names, func(n string) bool { return n == ManifestFile })
	if _, ok := files[ManifestFile]; ok {
		names = append(names, ManifestFile)
	}
	for _, name := range names {
		if err := checkPath(name); err != nil {
			return err
		}
		if err := createFile(b, name, bytes.NewReader(files[name]), 0o400); err != nil {
			return err
		}
	}
	return syncDir(b, ".")
}

// createFile makes a new file (never an existing one) at name in root,
// with its parent directories, and syncs it.
func createFile(root *os.Root, name string, content io.Reader, mode os.FileMode) error {
	if dir := filepath.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, content); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(root *os.Root, name string) error {
	d, err := root.Open(name)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *DirStore) openBundle(incident, pod string) (*os.Root, error) {
	if err := checkIDs(incident, pod); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(s.dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	b, err := root.OpenRoot(filepath.Join(incident, pod))
	if err != nil {
		return nil, fmt.Errorf("no evidence bundle at %s: %w", s.Location(incident, pod), err)
	}
	return b, nil
}

func (s *DirStore) Head(_ context.Context, incident, pod string) ([]byte, []byte, error) {
	b, err := s.openBundle(incident, pod)
	if err != nil {
		return nil, nil, err
	}
	defer b.Close()
	m, err := b.ReadFile(ManifestFile)
	if err != nil {
		return nil, nil, err
	}
	sig, err := b.ReadFile(SignatureFile)
	if err != nil {
		return nil, nil, err
	}
	return m, sig, nil
}

func (s *DirStore) Fetch(_ context.Context, incident, pod, dir string) error {
	b, err := s.openBundle(incident, pod)
	if err != nil {
		return err
	}
	defer b.Close()
	dst, err := emptyDir(dir)
	if err != nil {
		return err
	}
	defer dst.Close()
	return fs.WalkDir(b.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case p == ".":
			return nil
		case d.IsDir():
			return dst.Mkdir(p, 0o700)
		case !d.Type().IsRegular():
			return fmt.Errorf("%s: %w (a %v in the store, not a regular file)", p, errNotBundle, d.Type())
		}
		f, err := b.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return createFile(dst, p, f, 0o600)
	})
}

// emptyDir opens dir, made when absent, for writing a fetched bundle: a
// directory with files in it would mix them into the bundle.
func emptyDir(dir string) (*os.Root, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	if len(entries) > 0 {
		return nil, fmt.Errorf("%s is not empty: fetch a bundle into a new directory", dir)
	}
	return os.OpenRoot(dir)
}

func (s *DirStore) Pods(_ context.Context, incident string) ([]string, error) {
	if err := CheckID("incident id", incident); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer root.Close()
	entries, err := fs.ReadDir(root.FS(), incident)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pods []string
	for _, e := range entries {
		if e.IsDir() && validID(e.Name()) {
			pods = append(pods, e.Name())
		}
	}
	return pods, nil
}

// Prune deletes the bundles whose manifest was written before cutoff, the
// temporary directories of writes that crashed, and incidents left empty.
func (s *DirStore) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	root, err := os.OpenRoot(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer root.Close()
	incidents, err := fs.ReadDir(root.FS(), ".")
	if err != nil {
		return 0, err
	}
	pruned := 0
	var errs []error
	for _, inc := range incidents {
		if ctx.Err() != nil {
			return pruned, ctx.Err()
		}
		if !inc.IsDir() || !validID(inc.Name()) {
			continue
		}
		entries, err := fs.ReadDir(root.FS(), inc.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		left := len(entries)
		for _, e := range entries {
			p := filepath.Join(inc.Name(), e.Name())
			var written time.Time
			switch {
			case e.IsDir() && validID(e.Name()):
				info, err := root.Lstat(filepath.Join(p, ManifestFile))
				if err != nil {
					info, err = e.Info()
				}
				if err != nil {
					errs = append(errs, err)
					continue
				}
				written = info.ModTime()
			case e.IsDir() && strings.HasPrefix(e.Name(), tmpPrefix):
				info, err := e.Info()
				if err != nil || time.Since(info.ModTime()) < staleTmp {
					continue
				}
			default:
				continue
			}
			if !written.IsZero() && !written.Before(cutoff) {
				continue
			}
			// the bundle's directory is read-only (0500)
			if err := root.Chmod(p, 0o700); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := root.RemoveAll(p); err != nil {
				errs = append(errs, err)
				continue
			}
			left--
			if !written.IsZero() {
				pruned++
			}
		}
		if left == 0 {
			root.Remove(inc.Name()) // a Put that just made it retries
		}
	}
	return pruned, errors.Join(errs...)
}
