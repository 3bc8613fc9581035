module parry.dev/parry

go 1.26

require (
	github.com/cilium/ebpf v0.22.0
	github.com/cloudevents/sdk-go/v2 v2.16.2
	github.com/hashicorp/vault/api v1.22.0
	github.com/rs/zerolog v1.34.0
	knative.dev/eventing v0.50.0
	modernc.org/sqlite v1.40.1
)
