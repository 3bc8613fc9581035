package filters

import (
	"slices"
	"strings"
	"testing"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if c.Scope != "pods" || !c.Exec.All || !slices.Contains(c.Files.Prefixes, "/etc/shadow") || len(c.Signals) != len(Signals) {
		t.Fatalf("unexpected default: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		"unknown field": "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nexce: {}\n",
		"bad scope":     "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: node\n",
		"bad kind":      "apiVersion: parry.dev/v1alpha1\nkind: Playbook\nscope: all\n",
		"relative path": "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nfiles: {prefixes: [etc/shadow]}\n",
		"root path":     "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nfiles: {prefixes: [/]}\n",
		"long name":     "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nexec: {names: [" + strings.Repeat("x", 40) + "]}\n",
		"bad signal":    "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nsignals: [kexec]\n",
		"port zero":     "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nconnect: {ports: [0]}\n",
		"port range":    "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nconnect: {ports: [70000]}\n",
	}
	for name, in := range cases {
		if _, err := Parse([]byte(in), "t.yaml"); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "t.yaml") {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
	_, err := Parse([]byte("apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nexce: {}\n"), "t.yaml")
	if !strings.Contains(err.Error(), "line 4") {
		t.Errorf("unknown field error has no line: %v", err)
	}
}

func TestMergeAndRoundTrip(t *testing.T) {
	a := Config{APIVersion: APIVersion, Kind: Kind, Scope: "pods", PodRoots: []string{"kubepods"},
		Exec: Exec{Names: []string{"nc"}}, Connect: Connect{Ports: []uint16{4444}}, Signals: []string{"ptrace"}}
	b := Config{APIVersion: APIVersion, Kind: Kind, Scope: "pods", PodRoots: []string{"kubepods"},
		Exec: Exec{Names: []string{"curl", "nc"}, Exits: true}, Connect: Connect{All: true},
		Files: Files{Prefixes: []string{"/etc/shadow"}}, Signals: []string{"setuid", "ptrace"}}
	m := Merge(a, b)
	if !slices.Equal(m.Exec.Names, []string{"curl", "nc"}) || !m.Exec.Exits || !m.Connect.All ||
		!slices.Equal(m.Signals, []string{"ptrace", "setuid"}) || len(m.PodRoots) != 1 {
		t.Fatalf("merge: %+v", m)
	}
	y, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(y, "merged")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Exec.Names, m.Exec.Names) || back.Connect.All != m.Connect.All {
		t.Fatalf("round trip: %+v", back)
	}
}
