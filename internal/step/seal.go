package step

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
)

// IncidentKeySecret is the Secret (in parry-system) holding the key that
// seals incidents in a cluster, mounted into classify and every step that
// acts on an incident; under parry run the key is <state dir>/incident.key.
const IncidentKeySecret = "parry-incident-key"

// IncidentKeyBytes is the length of a generated incident key.
const IncidentKeyBytes = 32

// Seal binds an incident to the playbook and the pod classify opened it
// for: an HMAC-SHA256, under the key parry's steps share, of the incident,
// playbook, pod UID, namespace and name. classify sets it as the
// incidentseal extension, which every reply inherits; a step refuses an
// event whose seal does not verify, so an incident that classify never
// opened, or an incident id reused for another pod, is refused, whoever
// sent it.
func Seal(key []byte, incident, playbook, podUID, namespace, name string) string {
	m := hmac.New(sha256.New, key)
	for _, s := range []string{"parry-incident-v1", incident, playbook, podUID, namespace, name} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// SealEvent sets e's incidentseal from its incident, playbook and pod
// extensions. Tests use it to build events classify would have sealed.
func SealEvent(key []byte, e *cloudevents.Event) {
	e.SetExtension(events.ExtIncidentSeal, sealOf(key, *e))
}

func sealOf(key []byte, e cloudevents.Event) string {
	return Seal(key, events.String(e, events.ExtIncident), events.String(e, events.ExtPlaybook), events.String(e, events.ExtPodUID),
		events.String(e, events.ExtPodNamespace), events.String(e, events.ExtPodName))
}

// verifySeal checks e's incidentseal. It returns a reason to refuse, or "".
func verifySeal(key []byte, e cloudevents.Event) string {
	if len(key) == 0 {
		return "no incident key is configured, so the incident cannot be verified (mount the Secret " + IncidentKeySecret + ")"
	}
	got, err := base64.RawURLEncoding.DecodeString(events.String(e, events.ExtIncidentSeal))
	if err != nil || len(got) == 0 {
		return "the event carries no valid incident seal: classify did not open this incident"
	}
	want, _ := base64.RawURLEncoding.DecodeString(sealOf(key, e))
	if !hmac.Equal(got, want) {
		return "the incident seal does not match the event's incident, playbook and pod: classify did not open this incident for this pod"
	}
	return ""
}

// LoadIncidentKey reads the incident key at path (at least 32 bytes;
// surrounding whitespace is not part of it). With create, a missing file
// is made with a fresh random key, mode 0600: what parry run does in its
// state directory. In a cluster the file is the mounted Secret's, and a
// missing one is an error naming the command that creates it.
func LoadIncidentKey(path string, create bool) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		raw := make([]byte, IncidentKeyBytes)
		if _, err := rand.Read(raw); err != nil {
			return nil, err
		}
		b = []byte(hex.EncodeToString(raw) + "\n")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("incident key: %w", err)
		}
	} else if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("incident key %s is missing: create the Secret once, before the steps start:\n  kubectl -n parry-system create secret generic %s --from-literal=key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')", path, IncidentKeySecret)
	} else if err != nil {
		return nil, fmt.Errorf("incident key: %w", err)
	}
	key := bytes.TrimSpace(b)
	if len(key) < IncidentKeyBytes {
		return nil, fmt.Errorf("incident key %s holds %d bytes; it must hold at least %d (a random hex string of 64 characters)", path, len(key), IncidentKeyBytes)
	}
	return key, nil
}
