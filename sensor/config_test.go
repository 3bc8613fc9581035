package sensor

import (
	"flag"
	"testing"
	"time"
)

// TestFlagsMoveDerivedDefaults: --node given on the command line still
// moves the source.
func TestFlagsMoveDerivedDefaults(t *testing.T) {
	cfg := DefaultConfig()
	env := map[string]string{"K_SINK": "http://sink.example/", "NODE_NAME": "node-from-env", "K_CE_OVERRIDES": `{"extensions":{"cluster":"c1"}}`}
	cfg.FromEnvironment(func(k string) string { return env[k] })
	if cfg.Node != "node-from-env" || cfg.CEOverrides == "" {
		t.Fatalf("the environment was not taken: %+v", cfg)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--node", "node-7", "--wakeup-interval", "50ms", "--disable-hooks", "exec/tp_btf,priv.*"}); err != nil {
		t.Fatal(err)
	}
	cfg.applyDefaults()
	cfg.derive()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Source != "parry://sensor/node-7" || cfg.WakeupInterval != 50*time.Millisecond || cfg.Sink != "http://sink.example/" {
		t.Fatalf("%+v", cfg)
	}
	if len(cfg.DisableHooks) != 2 {
		t.Fatalf("disable-hooks %v", cfg.DisableHooks)
	}
	bad := DefaultConfig()
	bad.RingBufferSize = 3000
	bad.CgroupMode = "v3"
	bad.WakeupInterval = time.Microsecond
	bad.derive()
	if err := bad.validate(); err == nil {
		t.Fatal("bad config accepted")
	}
}
