package labels

import (
	"strings"
	"testing"
)

func TestValue(t *testing.T) {
	for in, want := range map[string]string{
		"inc-42":                                 "inc-42",
		"-inc/../x y-":                           "inc-..-x-y",
		strings.Repeat("a", 70):                  strings.Repeat("a", 63),
		"é":                                      "",
		"inc_" + strings.Repeat("b", 58) + "-.c": "inc_" + strings.Repeat("b", 58),
	} {
		if got := Value(in); got != want {
			t.Errorf("Value(%q) = %q, want %q", in, got, want)
		}
	}
}
