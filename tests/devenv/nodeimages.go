package devenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Images the real node runs, all assembled from files on this machine.
const (
	// StaticBaseTag is a distroless-static-nonroot look-alike (CA
	// certificates from Debian, passwd/group with nonroot 65532, /tmp),
	// for linux/amd64 and linux/arm64: ko's base for parry's images.
	StaticBaseTag = "static:nonroot"
	pauseTag      = "pause:3.10.1"
)

// knativeCommands are Knative Eventing's commands the install YAML names
// (ko://knative.dev/eventing/cmd/<path>) plus event_display, a sink for
// tests; tools/eventing builds them as knative-<base name>.
var knativeCommands = []string{
	"controller", "webhook", "apiserver_receive_adapter", "auth_proxy",
	"broker/filter", "broker/ingress", "mtchannel_broker",
	"in_memory/channel_controller", "in_memory/channel_dispatcher",
	"jobsink", "mtping", "requestreply", "event_display",
}

func baseLayer() []layerFile {
	passwd := "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group := "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
	return []layerFile{
		{path: "etc", dir: true, mode: 0o755},
		{path: "etc/ssl", dir: true, mode: 0o755},
		{path: "etc/ssl/certs", dir: true, mode: 0o755},
		{path: "etc/ssl/certs/ca-certificates.crt", from: "/etc/ssl/certs/ca-certificates.crt", mode: 0o644},
		{path: "etc/passwd", data: []byte(passwd), mode: 0o644},
		{path: "etc/group", data: []byte(group), mode: 0o644},
		{path: "home", dir: true, mode: 0o755},
		{path: "home/nonroot", dir: true, mode: 0o700, uid: 65532, gid: 65532},
		{path: "root", dir: true, mode: 0o700},
		{path: "tmp", dir: true, mode: 0o1777},
	}
}

// busyboxLayer is Debian's static busybox with a symlink per applet.
func busyboxLayer() ([]layerFile, error) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return nil, errNoBusybox
	}
	out, err := exec.Command("/bin/busybox", "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("devenv: /bin/busybox --list-full: %w", err)
	}
	files := []layerFile{
		{path: "bin", dir: true, mode: 0o755}, {path: "sbin", dir: true, mode: 0o755},
		{path: "usr", dir: true, mode: 0o755}, {path: "usr/bin", dir: true, mode: 0o755}, {path: "usr/sbin", dir: true, mode: 0o755},
		{path: "bin/busybox", from: "/bin/busybox", mode: 0o755},
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	for _, a := range applets {
		if a == "bin/busybox" {
			continue
		}
		files = append(files, layerFile{path: a, link: "/bin/busybox", mode: 0o777})
	}
	return files, nil
}

func binaryLayer(dir, name, from string) []layerFile {
	return []layerFile{{path: dir, dir: true, mode: 0o755}, {path: dir + "/" + name, from: from, mode: 0o755}}
}

// pushImages builds and pushes every image the cluster runs and records
// their references in e.Images.
func (e *Env) pushImages(ctx context.Context) error {
	began := time.Now()
	r := &registryClient{host: e.RegistryHost, http: &http.Client{Timeout: 5 * time.Minute}}
	images := map[string]string{}
	base := baseLayer()
	static := map[string]blobRef{}
	for _, arch := range []string{"amd64", "arm64"} {
		m, err := r.pushImage(ctx, "static", "", imageSpec{arch: arch, layers: [][]layerFile{base}, user: "65532",
			env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}})
		if err != nil {
			return err
		}
		static[arch] = m
	}
	if _, err := r.pushIndex(ctx, "static", "nonroot", static); err != nil {
		return err
	}
	images["static"] = e.RegistryHost + "/" + StaticBaseTag

	// containerd names the sandbox image by tag.
	if _, err := r.pushImage(ctx, "pause", "3.10.1", imageSpec{arch: "amd64", layers: [][]layerFile{{{path: "pause", from: e.bins.pause, mode: 0o755}}},
		entrypoint: []string{"/pause"}, user: "65535"}); err != nil {
		return err
	}
	images["pause"] = e.RegistryHost + "/" + pauseTag

	bb, err := busyboxLayer()
	if err != nil {
		return err
	}
	busybox, err := r.pushImage(ctx, "busybox", "", imageSpec{arch: "amd64", layers: [][]layerFile{base, bb}, cmd: []string{"sh"},
		env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}})
	if err != nil {
		return err
	}
	images["busybox"] = r.ref("busybox", busybox)

	coredns, err := r.pushImage(ctx, "coredns", "", imageSpec{arch: "amd64", layers: [][]layerFile{base, binaryLayer("usr/bin", "coredns", e.bins.coredns)},
		entrypoint: []string{"/usr/bin/coredns"}, user: "0"})
	if err != nil {
		return err
	}
	images["coredns"] = r.ref("coredns", coredns)

	if e.has(Knative) {
		for _, c := range knativeCommands {
			name := filepath.Base(c)
			m, err := r.pushImage(ctx, "knative/"+name, "", imageSpec{arch: "amd64",
				layers:     [][]layerFile{base, binaryLayer("ko-app", name, e.bins.knative[name])},
				entrypoint: []string{"/ko-app/" + name}, user: "65532",
				// What ko sets for the images it builds.
				env: []string{"PATH=/usr/local/bin:/usr/bin:/bin:/ko-app", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "KO_DATA_PATH=/var/run/ko"}})
			if err != nil {
				return err
			}
			images["knative/"+name] = r.ref("knative/"+name, m)
		}
	}
	e.Images = images
	e.logf("devenv: %d images in the local registry %s in %s", len(images), e.RegistryHost, time.Since(began).Round(10*time.Millisecond))
	return nil
}
