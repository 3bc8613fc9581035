package api

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestPathsMatchRoutes: every path the builders make is routed by its
// pattern, with the value the server reads back.
func TestPathsMatchRoutes(t *testing.T) {
	for _, c := range []struct {
		method, route, path, name, want string
	}{
		{"GET", RoutePod, PodPath("0d1e-2f/x"), "uid", "0d1e-2f/x"},
		{"PUT", RouteBlock, BlockPath("0d1e-2f"), "uid", "0d1e-2f"},
		{"DELETE", RouteBlock, BlockPath("a b"), "uid", "a b"},
		{"GET", RouteBinaries, BinariesPath("0d1e-2f/x"), "uid", "0d1e-2f/x"},
		{"GET", RouteCgroup, CgroupPath(4242), "id", "4242"},
	} {
		var got string
		mux := http.NewServeMux()
		mux.HandleFunc(c.method+" "+c.route, func(w http.ResponseWriter, r *http.Request) { got = r.PathValue(c.name) })
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if rec.Code != 200 || got != c.want {
			t.Errorf("%s %s via %s: status %d, %s=%q, want %q", c.method, c.path, c.route, rec.Code, c.name, got, c.want)
		}
	}
}
