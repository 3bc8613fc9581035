package function

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"
	rbacv1 "k8s.io/api/rbac/v1"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
)

// Handler handles one event and replies with one event or none. An error is
// a failed attempt: the broker retries it per the Trigger's delivery spec. A
// step that gives up for good replies dev.parry.step.<name>.failed.v1 with
// the reason instead of returning an error.
type Handler func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error)

// ParamType is the type of a step parameter.
type ParamType string

const (
	String     ParamType = "string"
	Int        ParamType = "int"
	Bool       ParamType = "bool"
	Duration   ParamType = "duration"
	StringList ParamType = "[]string"
)

// Param declares one parameter of a step.
type Param struct {
	Name        string
	Type        ParamType
	Required    bool
	Default     string
	Enum        []string
	Description string
}

// Spec declares a step: its name (the Knative Service name and the <name>
// in dev.parry.step.<name>.done.v1), what it does, its parameters, the RBAC
// rules it needs in a cluster and an example playbook step.
type Spec struct {
	Name        string
	Description string
	Params      []Param
	// ClusterRules are the Kubernetes permissions of the step's own
	// ServiceAccount: exactly the verbs it uses, nothing more.
	ClusterRules []rbacv1.PolicyRule
	Example      string
}

// Params are the validated parameters one playbook gives one step.
type Params map[string]string

// String returns the parameter's value ("" when unset and without default).
func (p Params) String(name string) string { return p[name] }

// Int returns an int parameter; Validate has checked it parses.
func (p Params) Int(name string) int { n, _ := strconv.Atoi(p[name]); return n }

// Bool returns a bool parameter.
func (p Params) Bool(name string) bool { b, _ := strconv.ParseBool(p[name]); return b }

// Duration returns a duration parameter.
func (p Params) Duration(name string) time.Duration { d, _ := time.ParseDuration(p[name]); return d }

// List returns a []string parameter, stored comma-separated.
func (p Params) List(name string) []string {
	if p[name] == "" {
		return nil
	}
	return strings.Split(p[name], ",")
}

// Validate checks raw parameters (as decoded from a playbook's YAML) against
// the spec and returns them typed, with defaults applied. Every problem is
// reported, each naming the parameter.
func (s Spec) Validate(raw map[string]any) (Params, error) {
	out := Params{}
	var errs []error
	for name := range raw {
		if !slices.ContainsFunc(s.Params, func(p Param) bool { return p.Name == name }) {
			errs = append(errs, fmt.Errorf("step %s has no parameter %q (it takes: %s)", s.Name, name, s.paramNames()))
		}
	}
	for _, p := range s.Params {
		v, ok := raw[p.Name]
		if !ok {
			if p.Required {
				errs = append(errs, fmt.Errorf("step %s: parameter %q is required: %s", s.Name, p.Name, p.Description))
			} else if p.Default != "" {
				out[p.Name] = p.Default
			}
			continue
		}
		text, err := p.text(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("step %s: parameter %q: %w", s.Name, p.Name, err))
			continue
		}
		out[p.Name] = text
	}
	return out, errors.Join(errs...)
}

func (s Spec) paramNames() string {
	if len(s.Params) == 0 {
		return "none"
	}
	names := make([]string, len(s.Params))
	for i, p := range s.Params {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}

func (p Param) text(v any) (string, error) {
	switch p.Type {
	case StringList:
		items, ok := v.([]any)
		if !ok {
			return "", fmt.Errorf("want a list of strings, got %T", v)
		}
		parts := make([]string, len(items))
		for i, it := range items {
			s, ok := it.(string)
			if !ok || strings.Contains(s, ",") {
				return "", fmt.Errorf("item %d: want a string without commas, got %v", i, it)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	case Int:
		switch n := v.(type) {
		case int:
			return strconv.Itoa(n), nil
		case int64:
			return strconv.FormatInt(n, 10), nil
		case uint64:
			return strconv.FormatUint(n, 10), nil
		}
		return "", fmt.Errorf("want an integer, got %v", v)
	case Bool:
		if b, ok := v.(bool); ok {
			return strconv.FormatBool(b), nil
		}
		return "", fmt.Errorf("want true or false, got %v", v)
	case Duration:
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("want a duration such as 30s or 5m, got %v", v)
		}
		if _, err := time.ParseDuration(s); err != nil {
			return "", fmt.Errorf("want a duration such as 30s or 5m: %w", err)
		}
		return s, nil
	default:
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("want a string, got %v", v)
		}
		if len(p.Enum) > 0 && !slices.Contains(p.Enum, s) {
			return "", fmt.Errorf("%q is not one of %s", s, strings.Join(p.Enum, ", "))
		}
		return s, nil
	}
}

// Serve runs h as a Knative Service does: CloudEvents over HTTP on addr (a
// Knative Service gets it from $PORT), the reply in the response. A handler
// error answers 500, so the broker retries per the delivery spec.
func Serve(ctx context.Context, addr string, h Handler, log zerolog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, "malformed CloudEvent: "+err.Error(), http.StatusBadRequest)
			return
		}
		reply, err := h(r.Context(), *e)
		if err != nil {
			log.Error().Err(err).Str("event_id", e.ID()).Str("event_type", e.Type()).Msg("handler failed; the broker will retry")
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if reply == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(reply), http.StatusOK, w); err != nil {
			log.Error().Err(err).Str("event_id", e.ID()).Msg("writing the reply")
		}
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving CloudEvents")
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// StepConfig is what one playbook asks of one step: its parameters, whether
// to only record the intended change, and its guardrails.
type StepConfig struct {
	Params Params
	DryRun bool
	Guard  guard.Rules
}

// Playbooks finds what a playbook asks of a step. The compiled playbooks
// implement it (from config/ under parry run, from a mounted ConfigMap in a
// cluster).
type Playbooks interface {
	StepConfig(playbook, step string) (StepConfig, error)
}

// Done is a step's reply when it succeeded: dev.parry.step.<step>.done.v1
// from parry://function/<step>, carrying the step extension and data. Its id
// derives from the cause and the step, so a redelivered cause gets the same
// reply.
func Done(cause cloudevents.Event, step string, data any) (*cloudevents.Event, error) {
	return reply(cause, events.StepDone(step), step, data)
}

// Failed is a step's reply when it gave up or refused:
// dev.parry.step.<step>.failed.v1 with {"reason": reason}.
func Failed(cause cloudevents.Event, step, reason string) (*cloudevents.Event, error) {
	return reply(cause, events.StepFailed(step), step, map[string]string{"reason": reason})
}

func reply(cause cloudevents.Event, typ, step string, data any) (*cloudevents.Event, error) {
	r, err := events.Reply(cause, events.Spec{Type: typ, Source: "parry://function/" + step, Key: step,
		Extensions: map[string]string{events.ExtStep: step}, Data: data})
	if err != nil {
		return nil, fmt.Errorf("%s: building the reply: %w", step, err)
	}
	return &r, nil
}
