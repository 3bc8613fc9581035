package sensor

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"strings"
	"testing"

	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/internal/wire"
)

// execArgsRaw is an exec record of pid with the given argv.
func execArgsRaw(pid uint32, ktime uint64, argv ...string) []byte {
	exe, args, cg := "/usr/bin/app", strings.Join(argv, "\x00")+"\x00", "cri-containerd-x.scope\x00kubepods-pod.slice\x00"
	b := rawRecord(wire.KindExec, wire.ExecFixedSize+len(exe)+len(args)+len(cg))
	binary.LittleEndian.PutUint64(b[8:], ktime)
	binary.LittleEndian.PutUint32(b[32:], pid)
	binary.LittleEndian.PutUint32(b[80:], uint32(len(exe)))
	binary.LittleEndian.PutUint32(b[84:], uint32(len(args)))
	binary.LittleEndian.PutUint32(b[88:], uint32(len(cg)))
	copy(b[wire.ExecFixedSize:], exe+args+cg)
	return b
}

// TestExecSecretsAreRedacted: a token and a URL's password in argv reach
// neither the flight recorder's pod history nor the emitted event; the
// same token in two processes hashes the same.
func TestExecSecretsAreRedacted(t *testing.T) {
	sink := &sinkRecorder{}
	p := testPipeline(Config{CoalesceWindow: -1}, nil, sink)
	p.handle(execArgsRaw(100, 1000, "app", "--token=s3cr3t", "https://u:hunter2@h"))
	p.handle(execArgsRaw(101, 2000, "app", "--token", "s3cr3t"))

	hist, ok := p.rec.Pod(testPodUID)
	if !ok {
		t.Fatal("no pod history")
	}
	recorded, err := json.Marshal(hist)
	if err != nil {
		t.Fatal(err)
	}
	evs := sink.all()
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2", len(evs))
	}
	hash := redact.Value("s3cr3t")
	for what, text := range map[string]string{"pod history": string(recorded), "event 1": string(evs[0].Data()), "event 2": string(evs[1].Data())} {
		if strings.Contains(text, "s3cr3t") || strings.Contains(text, "hunter2") {
			t.Errorf("%s keeps a secret: %s", what, text)
		}
		if !strings.Contains(text, hash) {
			t.Errorf("%s lacks the token's hash %s: %s", what, hash, text)
		}
	}
	d := dataOf(t, evs[0])
	if len(d.Args) != 3 || d.Args[0] != "app" || d.Args[1] != "--token="+hash || d.Args[2] != "https://u:"+redact.Value("hunter2")+"@h" {
		t.Fatalf("event args %q", d.Args)
	}
	if d2 := dataOf(t, evs[1]); len(d2.Args) != 3 || d2.Args[2] != hash {
		t.Fatalf("the same token hashed differently: %q", d2.Args)
	}
}

// TestRedactNamesFlag: --redact-names extends the built-in names.
func TestRedactNamesFlag(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("sensor", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--redact-names", "dsn, pin"}); err != nil {
		t.Fatal(err)
	}
	r := redact.New(c.RedactNames...)
	if got := r.Args([]string{"app", "--dsn=x", "--pin", "1234"}); got[1] != "--dsn="+redact.Value("x") || got[3] != redact.Value("1234") {
		t.Fatalf("%q", got)
	}
}
