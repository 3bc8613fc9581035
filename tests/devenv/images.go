package devenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The real node's images are assembled here from local files and pushed to
// the local registry over its HTTP API: no image is downloaded, no ko or
// docker runs at bring-up. Layers are built once and kept, compressed, in
// the registry's own blob directory under the user's cache (see imageCache),
// so a later bring-up only uploads a few small manifests.

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// imageCache is the directory of cached layers: blobs/sha256/<hex> (the
// registry serves it as its --disk) and layers/<key>.json (what a layer
// spec was built into). $PARRY_IMAGES_CACHE overrides it.
func imageCache() string {
	if d := os.Getenv("PARRY_IMAGES_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("PARRY_TOOLS_CACHE"); d != "" {
		return filepath.Join(filepath.Dir(d), "images")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "parry", "images")
}

// layerFile is one entry of a layer.
type layerFile struct {
	path    string // inside the image, without leading slash
	mode    int64
	from    string // host file to copy; empty with data or link
	data    []byte
	link    string // symlink target
	dir     bool
	uid     int
	gid     int
	comment string // only for the cache key (e.g. the busybox applet list)
}

// blobRef is a pushed blob as a descriptor needs it.
type blobRef struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	DiffID    string `json:"diffID,omitempty"`
}

// layerKey identifies a layer spec by its entries and, for copied files,
// their size and modification time (tool binaries are immutable once built:
// a rebuild is a new file in a new cache directory).
func layerKey(files []layerFile) (string, error) {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s|%o|%s|%v|%d|%d|%s|", f.path, f.mode, f.link, f.dir, f.uid, f.gid, f.comment)
		h.Write(f.data)
		if f.from != "" {
			fi, err := os.Stat(f.from)
			if err != nil {
				return "", fmt.Errorf("devenv: image file %s: %w", f.from, err)
			}
			fmt.Fprintf(h, "%s|%d|%d", f.from, fi.Size(), fi.ModTime().UnixNano())
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildLayer returns the cached layer for files, building it into the blob
// directory if needed. Entries are written in order with fixed times and
// owners, so the same spec always gives the same digest.
func buildLayer(files []layerFile) (blobRef, error) {
	cache := imageCache()
	key, err := layerKey(files)
	if err != nil {
		return blobRef{}, err
	}
	meta := filepath.Join(cache, "layers", key+".json")
	var ref blobRef
	if b, err := os.ReadFile(meta); err == nil && json.Unmarshal(b, &ref) == nil {
		if _, err := os.Stat(blobPath(cache, ref.Digest)); err == nil {
			return ref, nil
		}
	}
	for _, d := range []string{filepath.Join(cache, "layers"), filepath.Join(cache, "blobs", "sha256")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return blobRef{}, err
		}
	}
	tmp, err := os.CreateTemp(filepath.Join(cache, "blobs"), "layer-*")
	if err != nil {
		return blobRef{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	compressed, uncompressed := sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, compressed)}
	zw, _ := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	tw := tar.NewWriter(io.MultiWriter(zw, uncompressed))
	if err := writeTar(tw, files); err != nil {
		return blobRef{}, err
	}
	if err := tw.Close(); err != nil {
		return blobRef{}, err
	}
	if err := zw.Close(); err != nil {
		return blobRef{}, err
	}
	if err := tmp.Close(); err != nil {
		return blobRef{}, err
	}
	ref = blobRef{MediaType: mediaLayer, Digest: digestOf(compressed), Size: cw.n, DiffID: digestOf(uncompressed)}
	if err := os.Rename(tmp.Name(), blobPath(cache, ref.Digest)); err != nil {
		return blobRef{}, err
	}
	b, _ := json.Marshal(ref)
	return ref, os.WriteFile(meta, b, 0o644)
}

func writeTar(tw *tar.Writer, files []layerFile) error {
	epoch := time.Unix(0, 0)
	for _, f := range files {
		hdr := &tar.Header{Name: f.path, Mode: f.mode, ModTime: epoch, Uid: f.uid, Gid: f.gid, Format: tar.FormatPAX}
		switch {
		case f.dir:
			hdr.Typeflag, hdr.Name = tar.TypeDir, f.path+"/"
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.link != "":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.link
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.from != "":
			src, err := os.Open(f.from)
			if err != nil {
				return fmt.Errorf("devenv: image file: %w", err)
			}
			fi, err := src.Stat()
			if err != nil {
				src.Close()
				return err
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				src.Close()
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				return err
			}
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.data))
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := tw.Write(f.data); err != nil {
				return err
			}
		}
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func blobPath(cache, digest string) string {
	return filepath.Join(cache, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

// imageSpec is one single-platform image.
type imageSpec struct {
	arch       string
	layers     [][]layerFile
	entrypoint []string
	cmd        []string
	env        []string
	user       string
}

// registryClient pushes to the local registry (plain HTTP on loopback).
type registryClient struct {
	host string // 127.0.0.1:port
	http *http.Client
}

// pushImage builds spec's layers (or takes them from the cache), pushes the
// config and the manifest (also under tag, unless empty), and returns the
// manifest's descriptor.
func (r *registryClient) pushImage(ctx context.Context, repo, tag string, spec imageSpec) (blobRef, error) {
	var layers []blobRef
	var diffIDs []string
	for _, files := range spec.layers {
		l, err := buildLayer(files)
		if err != nil {
			return blobRef{}, fmt.Errorf("devenv: build a layer of %s: %w", repo, err)
		}
		// The registry serves the cache's blob directory: a cached layer
		// is already there. Check anyway; a fresh cache needs no upload
		// either, since buildLayer wrote into that directory.
		if err := r.ensureBlob(ctx, repo, l); err != nil {
			return blobRef{}, err
		}
		layers = append(layers, blobRef{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
		diffIDs = append(diffIDs, l.DiffID)
	}
	cfg := map[string]any{
		"architecture": spec.arch,
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config": map[string]any{
			"Entrypoint": spec.entrypoint,
			"Cmd":        spec.cmd,
			"Env":        spec.env,
			"User":       spec.user,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	cfgJSON, _ := json.Marshal(cfg)
	cfgRef, err := r.pushBlob(ctx, repo, mediaConfig, cfgJSON)
	if err != nil {
		return blobRef{}, err
	}
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        cfgRef,
		"layers":        layers,
	})
	return r.putManifest(ctx, repo, tag, mediaManifest, man)
}

// pushIndex pushes an index of per-platform manifests under tag.
func (r *registryClient) pushIndex(ctx context.Context, repo, tag string, manifests map[string]blobRef) (blobRef, error) {
	archs := make([]string, 0, len(manifests))
	for a := range manifests {
		archs = append(archs, a)
	}
	sort.Strings(archs)
	var entries []map[string]any
	for _, a := range archs {
		m := manifests[a]
		entries = append(entries, map[string]any{
			"mediaType": m.MediaType, "digest": m.Digest, "size": m.Size,
			"platform": map[string]string{"os": "linux", "architecture": a},
		})
	}
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": entries})
	return r.putManifest(ctx, repo, tag, mediaIndex, idx)
}

func (r *registryClient) ensureBlob(ctx context.Context, repo string, l blobRef) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, fmt.Sprintf("http://%s/v2/%s/blobs/%s", r.host, repo, l.Digest), nil)
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("devenv: registry %s: %w", r.host, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	f, err := os.Open(blobPath(imageCache(), l.Digest))
	if err != nil {
		return err
	}
	defer f.Close()
	return r.upload(ctx, repo, l.Digest, f, l.Size)
}

func (r *registryClient) pushBlob(ctx context.Context, repo, mediaType string, data []byte) (blobRef, error) {
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	return blobRef{MediaType: mediaType, Digest: d, Size: int64(len(data))}, r.upload(ctx, repo, d, bytes.NewReader(data), int64(len(data)))
}

// upload is the registry API's monolithic upload: POST a session, PUT the
// bytes with their digest.
func (r *registryClient) upload(ctx context.Context, repo, digest string, body io.Reader, size int64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://%s/v2/%s/blobs/uploads/", r.host, repo), nil)
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("devenv: registry %s: start upload: %w", r.host, err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		return fmt.Errorf("devenv: registry %s: start upload to %s: %s", r.host, repo, resp.Status)
	}
	if strings.HasPrefix(loc, "/") {
		loc = "http://" + r.host + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, loc+sep+"digest="+digest, body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = r.http.Do(req)
	if err != nil {
		return fmt.Errorf("devenv: registry %s: upload %s: %w", r.host, digest, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("devenv: registry %s: upload %s to %s: %s %s", r.host, digest, repo, resp.Status, msg)
	}
	return nil
}

// putManifest stores a manifest under its digest, and under tag if given.
func (r *registryClient) putManifest(ctx context.Context, repo, tag, mediaType string, body []byte) (blobRef, error) {
	sum := sha256.Sum256(body)
	ref := blobRef{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(body))}
	for _, name := range []string{ref.Digest, tag} {
		if name == "" {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://%s/v2/%s/manifests/%s", r.host, repo, name), bytes.NewReader(body))
		req.Header.Set("Content-Type", mediaType)
		resp, err := r.http.Do(req)
		if err != nil {
			return blobRef{}, fmt.Errorf("devenv: registry %s: put manifest %s:%s: %w", r.host, repo, name, err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return blobRef{}, fmt.Errorf("devenv: registry %s: put manifest %s:%s: %s %s", r.host, repo, name, resp.Status, msg)
		}
	}
	return ref, nil
}

// ImageRef is a pushed image as pods name it: registry/repo@digest.
func (r *registryClient) ref(repo string, d blobRef) string {
	return r.host + "/" + repo + "@" + d.Digest
}

var errNoBusybox = errors.New("devenv: /bin/busybox (Debian's busybox-static) is missing; run: apt-get install -y busybox-static (or bash .ci/install-deps.sh)")
