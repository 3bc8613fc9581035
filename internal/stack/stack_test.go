package stack_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"parry.dev/parry/internal/httpserver/servertest"
	"parry.dev/parry/internal/stack"
)

// A client that sends half a request, or nothing after its first, cannot
// hold the broker's ingress open past its limits.
func TestIngressClosesSlowClients(t *testing.T) {
	dir := t.TempDir()
	broker := "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: parry, namespace: parry-system}\n"
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(broker), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := stack.Start(context.Background(), stack.Options{ConfigDir: dir, JournalPath: filepath.Join(dir, "j.db"),
		Listen: "127.0.0.1:0", Log: zerolog.Nop(), HTTP: servertest.Short})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	servertest.SlowClients(t, servertest.Target{Addr: s.Addr, Get: "/healthz", Body: "POST /" + stack.DefaultBroker}, servertest.Short)
}
