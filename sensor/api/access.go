package api

// Who may call the API. Callers send a bearer token for Audience; the sensor
// reviews it (TokenReview) and asks the API server whether the caller may
// use the virtual resource sensors.parry.dev, named after the node
// (SubjectAccessReview), as the kubelet does for its own API. RBAC grants
// it like any other resource:
//
//	rules:
//	  - apiGroups: [parry.dev]
//	    resources: [sensors/block]
//	    verbs: [update]
//
// Each route needs one subresource: the one after its name below, with the
// verb VerbOf gives. /healthz needs nothing (the kubelet's probe has no
// token; it carries counters, no pod data).
const (
	// Audience is the audience of the tokens the API accepts: a token
	// for any other (the API server's, the Broker's) is refused.
	Audience = "parry-sensor"
	Group    = "parry.dev"
	Resource = "sensors"

	SubresourceBlock   = "block"   // PUT RouteBlock
	SubresourceUnblock = "unblock" // DELETE RouteBlock
	SubresourceHistory = "history" // GET RoutePods, RoutePod, RouteBinaries, RouteCgroup, RouteBlocked
	SubresourceMetrics = "metrics" // GET RouteMetrics
)

// VerbOf is the verb a subresource is authorized with: update for the
// block and its lifting, get for reading.
func VerbOf(subresource string) string {
	if subresource == SubresourceBlock || subresource == SubresourceUnblock {
		return "update"
	}
	return "get"
}
