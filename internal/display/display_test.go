package display_test

import (
	"testing"

	"parry.dev/parry/internal/display"
)

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"web-1":              "web-1",
		"héllo ✓":            "héllo ✓",
		"a\x1b[2Jb":          `a\x1b[2Jb`,
		"evil\rok":           `evil\rok`,
		"abc\u202edcba":      `abc\u202edcba`,
		"\xff\xfe":           `\xff\xfe`,
		"line\u2028break":    `line\u2028break`,
		"tab\tand\x7fdelete": `tab\tand\x7fdelete`,
	} {
		if got := display.Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}
