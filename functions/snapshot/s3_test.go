package snapshot_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/rs/zerolog"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/tests/devenv"
)

// s3Settings are the evidence store settings for a new bucket of the
// devenv's S3 server (SeaweedFS), and a client of that server as an
// attacker with the store's credentials would use it, bypassing the store.
func s3Settings(t *testing.T, prefix string) (map[string]string, *minio.Client, string) {
	t.Helper()
	env := devenv.RequireS3(t)
	raw, err := minio.New(strings.TrimPrefix(env.S3Endpoint, "http://"), &minio.Options{Creds: credentials.NewStaticV4(env.S3AccessKey, env.S3SecretKey, "")})
	must(t, err)
	bucket := "parry-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(bucket) > 50 {
		bucket = bucket[:50]
	}
	bucket += "-" + strings.ToLower(newKeyID(t))
	must(t, raw.MakeBucket(t.Context(), bucket, minio.MakeBucketOptions{}))
	settings := map[string]string{
		snapshot.EnvStore:       "s3://" + bucket + "/" + prefix,
		snapshot.EnvS3Endpoint:  env.S3Endpoint,
		snapshot.EnvS3AccessKey: env.S3AccessKey,
		snapshot.EnvS3SecretKey: env.S3SecretKey,
	}
	return settings, raw, bucket
}

func newKeyID(t *testing.T) string {
	return hex.EncodeToString(newKey(t).Public().(ed25519.PublicKey))[:8]
}

func openS3(t *testing.T, settings map[string]string) *snapshot.S3Store {
	t.Helper()
	store, err := snapshot.OpenStore(settings[snapshot.EnvStore], t.TempDir(), func(k string) string { return settings[k] })
	must(t, err)
	s3, ok := store.(*snapshot.S3Store)
	if !ok {
		t.Fatalf("OpenStore(%s) is a %T", settings[snapshot.EnvStore], store)
	}
	return s3
}

// TestS3Store: the S3 store keeps the Store contract against a real
// S3-compatible server: stored once, never replaced (also by racing
// writers), fetched whole and verified, missing and extra files named;
// and the server honours If-None-Match, which CheckWrites finds.
func TestS3Store(t *testing.T) {
	settings, raw, bucket := s3Settings(t, "evidence/cluster-1")
	store := openS3(t, settings)
	must(t, store.CheckWrites(t.Context()))
	if !store.Conditional() {
		t.Error("CheckWrites: SeaweedFS honours If-None-Match: *, the store says it does not")
	}
	storeContract(t, store)

	// the bundle is one object under the prefix; a raw conditional write
	// of its key is refused by the server itself
	key := "evidence/cluster-1/inc-1/pod-a.tar.gz"
	if store.Location("inc-1", "pod-a") != "s3://"+bucket+"/"+key {
		t.Fatalf("Location %s", store.Location("inc-1", "pod-a"))
	}
	opts := minio.PutObjectOptions{DisableMultipart: true}
	opts.SetMatchETagExcept("*")
	_, err := raw.PutObject(t.Context(), bucket, key, strings.NewReader("x"), 1, opts)
	if minio.ToErrorResponse(err).StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("conditional overwrite of a bundle: %v, want 412", err)
	}

	// pruning: nothing is older than an hour ago (the control), every
	// bundle is older than an hour from now
	n, err := store.Prune(t.Context(), time.Now().Add(-time.Hour))
	if err != nil || n != 0 {
		t.Fatalf("Prune of nothing old: %d %v", n, err)
	}
	n, err = store.Prune(t.Context(), time.Now().Add(time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("Prune of every bundle: %d %v, want the contract's 4", n, err)
	}
	if pods, err := store.Pods(t.Context(), "inc-1"); err != nil || len(pods) != 0 {
		t.Fatalf("after pruning: %q %v", pods, err)
	}
}

func TestS3StoreRefusesHostileIDs(t *testing.T) {
	settings, raw, bucket := s3Settings(t, "p")
	store := openS3(t, settings)
	storeRefusesHostileIDs(t, store, func() []string {
		var keys []string
		for o := range raw.ListObjectsIter(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
			must(t, o.Err)
			keys = append(keys, o.Key)
		}
		return keys
	})
}

// TestS3StepStoresVerifiableBundles: the step configured for S3 stores its
// bundle there, replies with its s3:// location, and a second snapshot
// keeps the first bundle; a bundle changed in the bucket behind the store's
// back fails verification naming the file, and an archive crafted to write
// outside the directory it is fetched into is refused, naming the entry.
func TestS3StepStoresVerifiableBundles(t *testing.T) {
	settings, raw, bucket := s3Settings(t, "")
	state := t.TempDir()
	h, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: state,
		Sensors: fakeSensor(t, api.PodHistory{PodUID: "0000-s3"}), Getenv: func(k string) string { return settings[k] }, Log: zerolog.Nop()})
	must(t, err)
	handle := steptest.Sealed(h)
	reply, res := snap(t, handle, "inc-s3", "0000-s3")
	if reply.Type() != events.StepDone(snapshot.Name) || res.Bundle != "s3://"+bucket+"/inc-s3/0000-s3.tar.gz" {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	if entries, _ := os.ReadDir(filepath.Join(state, "evidence")); len(entries) != 0 {
		t.Fatalf("the S3-configured step wrote to its state directory: %v", entries)
	}
	store := openS3(t, settings)
	pub, err := base64.StdEncoding.DecodeString(res.PublicKey)
	must(t, err)
	dir := filepath.Join(t.TempDir(), "b")
	must(t, store.Fetch(t.Context(), "inc-s3", "0000-s3", dir))
	if c, err := snapshot.VerifySigned(dir, pub); err != nil || c.ManifestSHA256 != res.ManifestSHA256 {
		t.Fatalf("fetched from S3: %+v %v", c, err)
	}
	_, again := snap(t, handle, "inc-s3", "0000-s3")
	if again.ManifestSHA256 != res.ManifestSHA256 {
		t.Fatalf("second snapshot replaced the bundle: %+v", again)
	}

	// replace the object behind the store: a changed file, then entries
	// that would leave the directory
	key := "inc-s3/0000-s3.tar.gz"
	replace := func(entries []tar.Header, contents []string) {
		t.Helper()
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for i, h := range entries {
			if h.Typeflag != tar.TypeReg {
				contents[i] = "" // a link has no content
			}
			h.Size = int64(len(contents[i]))
			h.Mode = 0o600
			must(t, tw.WriteHeader(&h))
			_, err := tw.Write([]byte(contents[i]))
			must(t, err)
		}
		must(t, tw.Close())
		must(t, zw.Close())
		must(t, raw.RemoveObject(t.Context(), bucket, key, minio.RemoveObjectOptions{}))
		_, err := raw.PutObject(t.Context(), bucket, key, bytes.NewReader(buf.Bytes()), int64(buf.Len()), minio.PutObjectOptions{DisableMultipart: true})
		must(t, err)
	}
	var entries []tar.Header
	var contents []string
	must(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if rel == "flight-recorder.json" {
			data = []byte(`{"cgroups": []}`)
		}
		entries = append(entries, tar.Header{Typeflag: tar.TypeReg, Name: rel})
		contents = append(contents, string(data))
		return err
	}))
	replace(entries, contents)
	tampered := filepath.Join(t.TempDir(), "t")
	must(t, store.Fetch(t.Context(), "inc-s3", "0000-s3", tampered))
	if _, err := snapshot.VerifySigned(tampered, pub); err == nil || !strings.Contains(err.Error(), "flight-recorder.json: SHA-256") {
		t.Fatalf("tampered object: %v", err)
	}

	top := t.TempDir()
	for _, evil := range []tar.Header{
		{Typeflag: tar.TypeReg, Name: "../escaped"},
		{Typeflag: tar.TypeReg, Name: "/etc/escaped"},
		{Typeflag: tar.TypeSymlink, Name: "logs", Linkname: "/etc"},
		{Typeflag: tar.TypeReg, Name: "logs//x"},
		{Typeflag: tar.TypeReg, Name: "logs\\..\\..\\x"},
		{Typeflag: tar.TypeDir, Name: "logs/"},
		{Typeflag: tar.TypeReg, Name: strings.Repeat("d/", 600) + "f"},
	} {
		replace([]tar.Header{{Typeflag: tar.TypeReg, Name: "pod.json"}, evil}, []string{"{}", "pwned"})
		out := filepath.Join(top, "out")
		os.RemoveAll(out)
		err := store.Fetch(t.Context(), "inc-s3", "0000-s3", out)
		shown := evil.Name
		if len(shown) > 40 {
			shown = shown[:40]
		}
		if err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(strings.ReplaceAll(shown, `\`, `\\`), "/")) {
			t.Errorf("archive entry %q: %v, want refused naming it", evil.Name, err)
		}
	}
	for _, f := range filesUnder(t, top) {
		if !strings.HasSuffix(f, "pod.json") {
			t.Errorf("written by a hostile archive: %s", f)
		}
	}
	// a duplicate entry would let a second copy hide behind the first
	replace([]tar.Header{{Typeflag: tar.TypeReg, Name: "pod.json"}, {Typeflag: tar.TypeReg, Name: "pod.json"}}, []string{"{}", "{}"})
	if err := store.Fetch(t.Context(), "inc-s3", "0000-s3", filepath.Join(t.TempDir(), "d")); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate entry: %v", err)
	}
}

// TestS3MisconfigurationIsClear: wrong credentials, a missing bucket, a
// missing secret and an unreachable server each stop the step at start
// with an error that says what to fix.
func TestS3MisconfigurationIsClear(t *testing.T) {
	settings, _, _ := s3Settings(t, "p")
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range settings {
			m[a] = b
		}
		m[k] = v
		return m
	}
	for name, c := range map[string]struct {
		settings map[string]string
		want     []string
	}{
		"wrong secret":   {with(snapshot.EnvS3SecretKey, "not-the-secret"), []string{"refused the credentials", snapshot.EnvS3AccessKey, snapshot.EnvS3SecretKey}},
		"unknown key":    {with(snapshot.EnvS3AccessKey, "nobody"), []string{"refused the credentials"}},
		"missing bucket": {with(snapshot.EnvStore, "s3://no-such-bucket-parry/p"), []string{`no bucket "no-such-bucket-parry"`}},
		"no secret":      {with(snapshot.EnvS3SecretKey, ""), []string{"set " + snapshot.EnvS3AccessKey + " and " + snapshot.EnvS3SecretKey, snapshot.EnvSecretName}},
		"no server":      {with(snapshot.EnvS3Endpoint, "http://127.0.0.1:1"), []string{"127.0.0.1:1", snapshot.EnvS3Endpoint}},
		"bad prefix":     {with(snapshot.EnvStore, "s3://bucket/../x"), []string{"prefix"}},
		"bad endpoint":   {with(snapshot.EnvS3Endpoint, "http://host/path"), []string{snapshot.EnvS3Endpoint}},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		_, err := step.Build(ctx, snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: t.TempDir(),
			Getenv: func(k string) string { return c.settings[k] }, Log: zerolog.Nop()})
		cancel()
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want %q", name, err, w)
			}
		}
		if err != nil && strings.Contains(err.Error(), settings[snapshot.EnvS3SecretKey]) {
			t.Errorf("%s: the error shows the secret: %v", name, err)
		}
	}
	// the control: the right settings start
	_, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: t.TempDir(),
		Getenv: func(k string) string { return settings[k] }, Log: zerolog.Nop()})
	must(t, err)
}
