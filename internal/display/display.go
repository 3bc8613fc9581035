package display

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Printable escapes what a terminal or a page would act on rather than
// show, so that values an attacker chose cannot move the cursor, clear the
// screen, retitle the window or hide or reorder text: C0 and C1 controls
// (ESC sequences, \r, \b), DEL, Unicode line separators and bidirectional
// overrides print as Go escapes (\x1b, \r, \u202e) and bytes that are not
// UTF-8 as \xNN. HTML escaping is still the page's job (html/template);
// JSON needs none of this, its encoder escapes controls itself.
func Printable(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r):
			q := strconv.QuoteRuneToASCII(r) // '\x1b', '\r', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size <= 1) || unsafeRune(r) {
			return true
		}
		i += size
	}
	return false
}

func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f: // C0, DEL, C1
		return true
	case r >= 0x200e && r <= 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069: // bidi marks, embeddings, overrides, isolates
		return true
	case r == 0x2028 || r == 0x2029 || r == 0x061c: // line and paragraph separators, Arabic letter mark
		return true
	}
	return false
}
