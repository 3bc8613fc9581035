// Package servertest proves that a server built by httpserver does not let
// slow clients hold it open. Tests import it; no binary does.
package servertest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"parry.dev/parry/internal/httpserver"
)

// Short are limits a test can wait out.
var Short = httpserver.Limits{
	ReadHeader:     300 * time.Millisecond,
	Read:           600 * time.Millisecond,
	Write:          2 * time.Second,
	Idle:           600 * time.Millisecond,
	MaxHeaderBytes: 8 << 10,
}

// Slack is how long past its limit a connection may stay open: the
// server's timers fire on a loaded machine with two shared cores.
const Slack = 3 * time.Second

// Clients is how many connections each kind of slow client opens.
const Clients = 50

// Target is a running server under test.
type Target struct {
	Addr string
	// Get is a path answered 2xx to a GET: the positive control, and the
	// request an idle client sends before it stalls.
	Get string
	// Body is a request line whose route takes a body, e.g. "POST /":
	// the stalled-body client sends its headers and part of a body.
	Body string
}

// SlowClients opens Clients connections of each kind against t, each
// stalling where a slow-loris client would, and fails t unless the server
// closes every one within its limit (l, zero fields from
// httpserver.Defaults) plus Slack:
//
//   - half a header, then nothing (ReadHeader);
//   - the headers and part of a body, then nothing (Read);
//   - one whole request, its answer read, then nothing (Idle).
//
// A header larger than MaxHeaderBytes must be answered 431, and while all
// of them stall, and after, a normal GET must still succeed.
func SlowClients(t *testing.T, tg Target, l httpserver.Limits) {
	t.Helper()
	l = l.Or(httpserver.Defaults)
	control := func(when string) {
		t.Helper()
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + tg.Addr + tg.Get)
		if err != nil {
			t.Fatalf("positive control %s: GET %s: %v", when, tg.Get, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("positive control %s: GET %s answered %s", when, tg.Get, resp.Status)
		}
	}
	control("before the slow clients")

	type attack struct {
		name  string
		bound time.Duration
		// stall opens the connection and leaves it where the client
		// stops; it returns what is left to read.
		stall func(c net.Conn) (io.Reader, error)
	}
	attacks := []attack{
		{"half a header", l.ReadHeader, func(c net.Conn) (io.Reader, error) {
			_, err := io.WriteString(c, "GET "+tg.Get+" HTTP/1.1\r\nHost: parry\r\nX-Slow: ")
			return c, err
		}},
		{"part of a body", l.Read, func(c net.Conn) (io.Reader, error) {
			_, err := io.WriteString(c, tg.Body+" HTTP/1.1\r\nHost: parry\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"a\":")
			return c, err
		}},
		{"an idle kept-alive connection", l.Idle, func(c net.Conn) (io.Reader, error) {
			if _, err := io.WriteString(c, "GET "+tg.Get+" HTTP/1.1\r\nHost: parry\r\n\r\n"); err != nil {
				return nil, err
			}
			br := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return nil, fmt.Errorf("reading the first answer: %w", err)
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 != 2 || resp.Close {
				return nil, fmt.Errorf("first answer %s (close %v): want a 2xx kept alive", resp.Status, resp.Close)
			}
			return br, err
		}},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[string]int{}
	failed := map[string]error{}
	slowest := map[string]time.Duration{}
	stalled := make(chan struct{}, len(attacks)*Clients)
	for _, a := range attacks {
		for range Clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", tg.Addr, 5*time.Second)
				if err != nil {
					mu.Lock()
					failed[a.name] = err
					mu.Unlock()
					stalled <- struct{}{}
					return
				}
				defer c.Close()
				rest, err := a.stall(c)
				start := time.Now()
				stalled <- struct{}{}
				if err != nil {
					mu.Lock()
					failed[a.name] = err
					mu.Unlock()
					return
				}
				c.SetReadDeadline(start.Add(a.bound + Slack))
				_, err = io.Copy(io.Discard, rest)
				took := time.Since(start)
				mu.Lock()
				defer mu.Unlock()
				if errors.Is(err, os.ErrDeadlineExceeded) {
					open[a.name]++
				}
				slowest[a.name] = max(slowest[a.name], took)
			}()
		}
	}
	for range len(attacks) * Clients {
		<-stalled
	}
	control("while the slow clients stall")
	wg.Wait()
	for _, a := range attacks {
		if err := failed[a.name]; err != nil {
			t.Errorf("%s: %v", a.name, err)
		}
		if n := open[a.name]; n > 0 {
			t.Errorf("%d of %d connections holding %s were still open %s after the client stalled (limit %s + slack %s)", n, Clients, a.name, a.bound+Slack, a.bound, Slack)
		} else {
			t.Logf("%d connections holding %s: all closed by the server, the last after %s (limit %s)", Clients, a.name, slowest[a.name].Round(time.Millisecond), a.bound)
		}
	}

	c, err := net.DialTimeout("tcp", tg.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	big := "GET " + tg.Get + " HTTP/1.1\r\nHost: parry\r\nX-Big: " + strings.Repeat("a", l.MaxHeaderBytes+8<<10) + "\r\n\r\n"
	if _, err := io.WriteString(c, big); err != nil {
		t.Fatalf("sending a header of %d bytes: %v", len(big), err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a header of %d bytes over the limit of %d: %v", len(big), l.MaxHeaderBytes, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a header of %d bytes over the limit of %d: answered %s, want 431", len(big), l.MaxHeaderBytes, resp.Status)
	}
	control("after the slow clients")
}
