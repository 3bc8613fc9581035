// Package httpclient is parry's one HTTP client factory. Every component that
// sends events (the broker's dispatcher, the sensor's emitter, functions)
// takes its client from here, so connection reuse is tuned in one place.
package httpclient

import (
	"net"
	"net/http"
	"time"
)

// New returns a client whose transport keeps enough idle connections per
// host for a busy broker: net/http's default of 2 makes every burst above two
// concurrent requests open and close sockets, which under load exhausts
// ephemeral ports and doubles latency. timeout bounds one whole request; zero
// means none (callers then bound requests with their context).
func New(timeout time.Duration) *http.Client {
	return &http.Client{Transport: NewTransport(), Timeout: timeout}
}

// NewTransport returns the tuned transport behind New.
func NewTransport() *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
}
