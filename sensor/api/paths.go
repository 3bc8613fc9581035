package api

import (
	"net/url"
	"strconv"
)

// The HTTP API's routes, as net/http.ServeMux patterns ({uid} is a pod
// UID, {id} a decimal cgroup id). The functions below build the paths.
const (
	RoutePods    = "/v1/pods"             // GET: []PodSummary
	RoutePod     = "/v1/pods/{uid}"       // GET: PodHistory
	RouteCgroup  = "/v1/cgroups/{id}"     // GET: CgroupRecord
	RouteBlock   = "/v1/pods/{uid}/block" // PUT blocks the pod's egress, DELETE lifts it: BlockResult
	RouteBlocked = "/v1/blocked"          // GET: blocked cgroup ids, []uint64
	RouteHealth  = "/healthz"             // GET: Health
	RouteMetrics = "/metrics"             // GET: the counters in Prometheus text format

	RouteBinaries = "/v1/pods/{uid}/binaries" // GET: Binaries
)

// PodPath is the path of a pod's history.
func PodPath(uid string) string { return RoutePods + "/" + url.PathEscape(uid) }

// BlockPath is the path of a pod's egress block.
func BlockPath(uid string) string { return PodPath(uid) + "/block" }

// BinariesPath is the path of the hashes of a pod's binaries.
func BinariesPath(uid string) string { return PodPath(uid) + "/binaries" }

// CgroupPath is the path of one cgroup's history.
func CgroupPath(id uint64) string { return "/v1/cgroups/" + strconv.FormatUint(id, 10) }
