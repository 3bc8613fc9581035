package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Store keeps each bundle as one object, a gzipped tar of its files, at
// <prefix>/<incident>/<pod UID>.tar.gz in a bucket of an S3-compatible
// server. One object per bundle makes a bundle whole or absent, and lets
// one conditional write (If-None-Match: *) refuse to replace it. Put also
// checks first, so a server that ignores the condition still does not get
// an overwrite, except by two writers racing between check and write
// (Conditional reports which; CheckWrites finds out).
type S3Store struct {
	client      *minio.Client
	bucket      string
	prefix      string // "" or ending in "/"
	endpoint    string
	conditional bool
}

// bundleSuffix ends every bundle's object key.
const bundleSuffix = ".tar.gz"

// openS3 reads s3://bucket[/prefix] and the EnvS3* settings.
func openS3(spec string, getenv func(string) string) (*S3Store, error) {
	u, err := url.Parse(spec)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("evidence store %q: want s3://bucket[/prefix]", spec)
	}
	prefix := strings.Trim(u.Path, "/")
	for seg := range strings.SplitSeq(prefix, "/") {
		if prefix != "" && !validID(seg) {
			return nil, fmt.Errorf("evidence store %q: the prefix's segments must be ids (letters, digits, '.', '_', '-'), not %q", spec, seg)
		}
	}
	if prefix != "" {
		prefix += "/"
	}
	ak, sk := getenv(EnvS3AccessKey), getenv(EnvS3SecretKey)
	if ak == "" || sk == "" {
		return nil, fmt.Errorf("evidence store %s: set %s and %s (in a cluster, in the Secret %s)", spec, EnvS3AccessKey, EnvS3SecretKey, EnvSecretName)
	}
	endpoint, secure := getenv(EnvS3Endpoint), true
	switch {
	case endpoint == "":
		endpoint = "s3.amazonaws.com"
	case strings.HasPrefix(endpoint, "http://"), strings.HasPrefix(endpoint, "https://"):
		e, err := url.Parse(endpoint)
		if err != nil || e.Host == "" || (e.Path != "" && e.Path != "/") {
			return nil, fmt.Errorf("%s=%q: want host[:port] or http(s)://host[:port]", EnvS3Endpoint, endpoint)
		}
		endpoint, secure = e.Host, e.Scheme == "https"
	}
	c, err := minio.New(endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(ak, sk, getenv(EnvS3SessionToken)),
		Secure: secure,
		Region: getenv(EnvS3Region),
		// a few quick retries, so a wrong endpoint fails the start in
		// seconds; the broker retries a failed delivery anyway
		MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("evidence store %s at %s: %w", spec, endpoint, err)
	}
	scheme := "https://"
	if !secure {
		scheme = "http://"
	}
	return &S3Store{client: c, bucket: u.Host, prefix: prefix, endpoint: scheme + endpoint}, nil
}

// EnvSecretName is the Secret whose keys a cluster gives the snapshot step
// as its environment (Spec.EnvSecret): EnvStore and the S3 settings.
const EnvSecretName = "parry-evidence-store"

func (s *S3Store) key(incident, pod string) string {
	return s.prefix + incident + "/" + pod + bundleSuffix
}

// Location is the bundle's s3:// URL.
func (s *S3Store) Location(incident, pod string) string {
	switch {
	case incident == "":
		return "s3://" + s.bucket + "/" + s.prefix
	case pod == "":
		return "s3://" + s.bucket + "/" + s.prefix + incident + "/"
	}
	return "s3://" + s.bucket + "/" + s.key(incident, pod)
}

// Conditional says whether the server refuses a write of an existing key
// with If-None-Match: * (as CheckWrites found it).
func (s *S3Store) Conditional() bool { return s.conditional }

// explain turns the S3 errors a misconfiguration gives into what to fix.
func (s *S3Store) explain(what string, err error) error {
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("%s: the S3 server %s refused the credentials (%s: %s): check %s and %s", what, s.endpoint, r.Code, r.Message, EnvS3AccessKey, EnvS3SecretKey)
	case "AccessDenied":
		return fmt.Errorf("%s: the S3 server %s denied access to bucket %s (%s): the credentials need s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject there", what, s.endpoint, s.bucket, r.Message)
	case "NoSuchBucket":
		return fmt.Errorf("%s: the S3 server %s has no bucket %q: create it, or fix %s", what, s.endpoint, s.bucket, EnvStore)
	}
	if r.Code == "" {
		return fmt.Errorf("%s: the S3 server %s (%s): %w", what, s.endpoint, EnvS3Endpoint, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func notFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey"
}

// CheckWrites writes a probe object twice with If-None-Match: * and
// deletes it: it fails with what to fix when the store cannot be written
// (credentials, bucket), and records whether the server honoured the
// condition (Conditional).
func (s *S3Store) CheckWrites(ctx context.Context) error {
	key := s.prefix + ".parry-probe-" + rand.Text()
	put := func() error {
		opts := minio.PutObjectOptions{DisableMultipart: true}
		opts.SetMatchETagExcept("*")
		_, err := s.client.PutObject(ctx, s.bucket, key, bytes.NewReader([]byte("probe")), 5, opts)
		return err
	}
	if err := put(); err != nil {
		return s.explain("writing to the evidence store "+s.Location("", ""), err)
	}
	second := put()
	s.conditional = second != nil && minio.ToErrorResponse(second).StatusCode == http.StatusPreconditionFailed
	if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return s.explain("deleting from the evidence store (retention needs it)", err)
	}
	if second != nil && !s.conditional {
		return s.explain("writing to the evidence store", second)
	}
	return nil
}

func (s *S3Store) Put(ctx context.Context, incident, pod string, files map[string][]byte) error {
	if err := checkIDs(incident, pod); err != nil {
		return err
	}
	key := s.key(incident, pod)
	_, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	switch {
	case err == nil:
		return &ExistsError{Location: s.Location(incident, pod)}
	case !notFound(err):
		return s.explain("checking for "+s.Location(incident, pod), err)
	}
	data, err := pack(files, time.Now())
	if err != nil {
		return err
	}
	opts := minio.PutObjectOptions{ContentType: "application/gzip", DisableMultipart: true}
	opts.SetMatchETagExcept("*")
	_, err = s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)), opts)
	if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
		return &ExistsError{Location: s.Location(incident, pod)}
	}
	if err != nil {
		return s.explain("writing "+s.Location(incident, pod), err)
	}
	return nil
}

// open streams a bundle's object; fs.ErrNotExist when there is none.
func (s *S3Store) open(ctx context.Context, incident, pod string) (io.ReadCloser, error) {
	if err := checkIDs(incident, pod); err != nil {
		return nil, err
	}
	// GetObject is lazy: Stat makes the request, so a missing key is
	// told apart here
	o, err := s.client.GetObject(ctx, s.bucket, s.key(incident, pod), minio.GetObjectOptions{})
	if err == nil {
		_, err = o.Stat()
	}
	if err != nil {
		if o != nil {
			o.Close()
		}
		if notFound(err) {
			return nil, fmt.Errorf("no evidence bundle at %s: %w", s.Location(incident, pod), fs.ErrNotExist)
		}
		return nil, s.explain("reading "+s.Location(incident, pod), err)
	}
	return o, nil
}

func (s *S3Store) Head(ctx context.Context, incident, pod string) ([]byte, []byte, error) {
	o, err := s.open(ctx, incident, pod)
	if err != nil {
		return nil, nil, err
	}
	defer o.Close()
	var manifest, sig []byte
	err = unpack(o, func(name string, r io.Reader) error {
		var err error
		switch name {
		case ManifestFile:
			manifest, err = io.ReadAll(r)
		case SignatureFile:
			sig, err = io.ReadAll(r)
		default:
			_, err = io.Copy(io.Discard, r)
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.Location(incident, pod), err)
	}
	if manifest == nil || sig == nil {
		return nil, nil, fmt.Errorf("%s: the archive lacks %s or %s", s.Location(incident, pod), ManifestFile, SignatureFile)
	}
	return manifest, sig, nil
}

func (s *S3Store) Fetch(ctx context.Context, incident, pod, dir string) error {
	o, err := s.open(ctx, incident, pod)
	if err != nil {
		return err
	}
	defer o.Close()
	dst, err := emptyDir(dir)
	if err != nil {
		return err
	}
	defer dst.Close()
	err = unpack(o, func(name string, r io.Reader) error { return createFile(dst, name, r, 0o600) })
	if err != nil {
		return fmt.Errorf("%s: %w", s.Location(incident, pod), err)
	}
	return nil
}

// parseKey reads <prefix><incident>/<pod>.tar.gz; ok is false for any
// other key.
func (s *S3Store) parseKey(key string) (incident, pod string, ok bool) {
	rest, ok := strings.CutPrefix(key, s.prefix)
	if !ok {
		return "", "", false
	}
	rest, ok = strings.CutSuffix(rest, bundleSuffix)
	if !ok {
		return "", "", false
	}
	incident, pod, ok = strings.Cut(rest, "/")
	return incident, pod, ok && validID(incident) && validID(pod)
}

func (s *S3Store) Pods(ctx context.Context, incident string) ([]string, error) {
	if err := CheckID("incident id", incident); err != nil {
		return nil, err
	}
	var pods []string
	for o := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + incident + "/"}) {
		if o.Err != nil {
			return nil, s.explain("listing "+s.Location(incident, ""), o.Err)
		}
		if inc, pod, ok := s.parseKey(o.Key); ok && inc == incident {
			pods = append(pods, pod)
		}
	}
	slices.Sort(pods)
	return pods, nil
}

// Prune deletes the bundles whose object was last modified before cutoff
// (it is written once, so that is when it was written).
func (s *S3Store) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	pruned := 0
	var errs []error
	for o := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if o.Err != nil {
			return pruned, s.explain("listing "+s.Location("", ""), o.Err)
		}
		if _, _, ok := s.parseKey(o.Key); !ok || !o.LastModified.Before(cutoff) {
			continue
		}
		if err := s.client.RemoveObject(ctx, s.bucket, o.Key, minio.RemoveObjectOptions{}); err != nil {
			errs = append(errs, s.explain("deleting s3://"+s.bucket+"/"+o.Key, err))
			continue
		}
		pruned++
	}
	return pruned, errors.Join(errs...)
}
