// Package labels is the one home of the Kubernetes labels and annotations
// parry reads and writes, and of the sanitizer that makes an arbitrary
// string (an incident id) a valid label value.
package labels

import "strings"

const (
	// PartOf marks parry's own objects (app.kubernetes.io/part-of=parry).
	PartOf      = "app.kubernetes.io/part-of"
	PartOfParry = "parry"

	// Quarantine is isolate's label on a quarantined pod; its value is the
	// incident (as Value makes it). The quarantine NetworkPolicy selects it.
	Quarantine = "parry.dev/quarantine"
	// Incident and QuarantinedAt annotate the quarantined pod.
	Incident      = "parry.dev/incident"
	QuarantinedAt = "parry.dev/quarantined-at"

	// OriginalLabels, OrphanedFrom and DeleteAfter are respawn's
	// annotations on the pod it orphaned: the selector labels it moved, the
	// controller it left, and when a kept pod may be deleted (RFC 3339).
	OriginalLabels = "parry.dev/original-labels"
	OrphanedFrom   = "parry.dev/orphaned-from"
	DeleteAfter    = "parry.dev/delete-after"
)

// Value makes s a valid label value: at most 63 characters of
// [A-Za-z0-9._-], alphanumeric at both ends.
func Value(s string) string {
	v := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '-'
	}, s)
	if len(v) > 63 {
		v = v[:63]
	}
	return strings.Trim(v, "-._")
}
