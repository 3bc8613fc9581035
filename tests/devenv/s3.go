package devenv

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// startS3 runs SeaweedFS (`weed server -s3`: master, volume server, filer
// and S3 gateway in one process) on loopback, with one admin identity from
// the AWS_* variables, data in the environment's directory. It is the
// real S3-compatible server the S3 evidence store is tested against.
func (e *Env) startS3(ctx context.Context) error {
	e.S3AccessKey, e.S3SecretKey = "parry"+randomHex(4), randomHex(20)
	data := filepath.Join(e.Dir, "s3")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	// weed derives no port from another when each is given: eight of
	// them, HTTP and gRPC for each of the four servers.
	return e.retryPorts(ctx, 8, func(p []int) (*proc, error) {
		port := func(i int) string { return strconv.Itoa(p[i]) }
		proc, err := e.startProc(procSpec{name: "seaweedfs", path: e.bins.weed, args: []string{
			"server", "-dir=" + data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
			"-master.port=" + port(0), "-master.port.grpc=" + port(1),
			"-volume.port=" + port(2), "-volume.port.grpc=" + port(3),
			"-filer", "-filer.port=" + port(4), "-filer.port.grpc=" + port(5),
			"-s3", "-s3.port=" + port(6), "-s3.port.grpc=" + port(7),
			"-s3.port.iceberg=0", "-s3.port.lance=0",
			// small volumes (the tests store kilobytes), and enough of
			// them: each bucket gets volumes of its own
			"-master.volumeSizeLimitMB=64", "-volume.max=300",
		}, env: []string{"AWS_ACCESS_KEY_ID=" + e.S3AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.S3SecretKey},
			// its graceful stop takes over five seconds, for data that
			// is thrown away
			stopSig: syscall.SIGKILL})
		if err != nil {
			return nil, err
		}
		e.S3Endpoint = "http://127.0.0.1:" + port(6)
		// the gateway answers /healthz once the filer behind it does
		return proc, waitReady(ctx, proc, e.opts.ReadyTimeout, httpOK(http.DefaultClient, e.S3Endpoint+"/healthz", ""))
	})
}
