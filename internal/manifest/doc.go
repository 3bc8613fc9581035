// Package manifest reads Knative Broker, Trigger and EventPolicy manifests
// (and Knative's feature flags, the ConfigMap knative-eventing/config-features)
// from a config directory exactly as a cluster would accept them: strict
// decoding, Knative's
// own defaulting (SetDefaults) and validation (Validate), and a check that
// every filter materialises with Knative's filter code — Knative skips a
// filter it cannot build, and a skipped filter silently widens a Trigger, so
// here it is an error instead.
//
// Every error names the file, line and column of the offending field, so the
// same directory can be applied with `ko apply -f config/` and run by the
// embedded broker, and mistakes surface before either.
package manifest
