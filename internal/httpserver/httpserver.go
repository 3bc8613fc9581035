// Package httpserver builds parry's HTTP servers — the broker's ingress,
// the sensor's API and a step's Serve — with the limits that keep a client
// from holding one open: a deadline for the request's headers, one for the
// whole request, one for the response, one for an idle kept-alive
// connection, and a cap on the headers' size. Without them a client that
// sends half a request, or nothing after its first one, keeps a goroutine
// and a file descriptor forever. Request bodies are bounded by each
// handler, which knows what it accepts (the ingress and Serve: 1 MiB).
package httpserver

import (
	"net/http"
	"time"
)

// Limits of one server. A zero field takes the value of Defaults.
type Limits struct {
	// ReadHeader bounds reading the request line and headers.
	ReadHeader time.Duration
	// Read bounds reading the whole request, body included.
	Read time.Duration
	// Write bounds the time from the end of the request's headers to the
	// end of the response: the handler's work and the answer.
	Write time.Duration
	// Idle bounds the wait for the next request on a kept-alive
	// connection.
	Idle time.Duration
	// MaxHeaderBytes caps the request line and headers (Go allows 4 KiB
	// over it); more is answered 431.
	MaxHeaderBytes int
}

// Defaults suit small CloudEvents and JSON answers on a cluster network.
// Idle is longer than the idle timeout of parry's clients
// (internal/httpclient, 90 s), so a client never reuses a connection the
// server is closing.
var Defaults = Limits{
	ReadHeader:     5 * time.Second,
	Read:           30 * time.Second,
	Write:          30 * time.Second,
	Idle:           120 * time.Second,
	MaxHeaderBytes: 64 << 10,
}

// Or returns l with its zero fields taken from d.
func (l Limits) Or(d Limits) Limits {
	if l.ReadHeader <= 0 {
		l.ReadHeader = d.ReadHeader
	}
	if l.Read <= 0 {
		l.Read = d.Read
	}
	if l.Write <= 0 {
		l.Write = d.Write
	}
	if l.Idle <= 0 {
		l.Idle = d.Idle
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	return l
}

// New returns a server for h with l (zero fields from Defaults).
func New(h http.Handler, l Limits) *http.Server {
	l = l.Or(Defaults)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeader,
		ReadTimeout:       l.Read,
		WriteTimeout:      l.Write,
		IdleTimeout:       l.Idle,
		MaxHeaderBytes:    l.MaxHeaderBytes,
	}
}
