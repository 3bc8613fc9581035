package snapshot

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"
)

// Limits on what is read back from a store: a bundle is a few JSON files
// and one log per container (at most 64 MiB each), so more than this is
// not a bundle but an attempt to fill the disk.
const (
	maxBundleFiles = 10_000
	maxBundleBytes = 1 << 30
	maxPathLen     = 1024
)

// checkPath refuses a file name that is not a clean relative path inside a
// bundle: absolute, "..", ".", empty or doubled slashes, backslashes, NUL,
// or longer than 1024 bytes.
func checkPath(name string) error {
	if len(name) == 0 || len(name) > maxPathLen || !fs.ValidPath(name) || name == "." ||
		strings.ContainsAny(name, "\\\x00") {
		shown := name
		if len(shown) > 80 {
			shown = shown[:80] + "..."
		}
		return fmt.Errorf("%q: %w (a clean relative path is)", shown, errNotBundle)
	}
	return nil
}

// pack is a bundle as one gzipped tar, its files in name order.
func pack(files map[string][]byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := checkPath(name); err != nil {
			return nil, err
		}
		data := files[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o400, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// unpack reads a gzipped tar bundle and hands each file to visit, which
// must consume it. It stops at the first entry that is not a regular file
// with a clean relative name, a name seen twice, or past the limits, with
// an error naming the entry.
func unpack(r io.Reader, visit func(name string, content io.Reader) error) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("not a gzipped bundle: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	seen := map[string]bool{}
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the bundle's archive: %w", err)
		}
		if err := checkPath(h.Name); err != nil {
			return err
		}
		switch {
		case h.Typeflag != tar.TypeReg:
			return fmt.Errorf("%s: %w (not a regular file: tar type %q)", h.Name, errNotBundle, h.Typeflag)
		case seen[h.Name]:
			return fmt.Errorf("%s: %w (twice in the archive)", h.Name, errNotBundle)
		case len(seen) >= maxBundleFiles:
			return fmt.Errorf("%s: %w (more than %d files)", h.Name, errNotBundle, maxBundleFiles)
		case h.Size < 0 || total+h.Size > maxBundleBytes:
			return fmt.Errorf("%s: %w (the bundle would exceed %d bytes)", h.Name, errNotBundle, maxBundleBytes)
		}
		seen[h.Name] = true
		total += h.Size
		if err := visit(h.Name, io.LimitReader(tr, h.Size)); err != nil {
			return err
		}
	}
}
