package broker_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// FuzzIngress posts arbitrary structured-mode bodies and binary-mode headers:
// the broker must answer 202, 400 or 413 and never fail otherwise.
func FuzzIngress(f *testing.F) {
	h := start(f, "", nil)
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"s","type":"t"}`), "1.0", "t")
	f.Add([]byte(`{"specversion":"0.3","id":"1","source":"s","type":"t","traceparent":"x"}`), "", "")
	f.Add([]byte(`{"specversion":"1.0","id":"","source":"%%","type":"t","Bad":1}`), "1.0", "")
	f.Add([]byte(`[]`), "2.0", "x")
	f.Fuzz(func(t *testing.T, body []byte, specversion, typ string) {
		for _, structured := range []bool{true, false} {
			req, err := http.NewRequest(http.MethodPost, h.url, bytes.NewReader(body))
			if err != nil {
				t.Skip()
			}
			if structured {
				req.Header.Set("Content-Type", "application/cloudevents+json")
			} else {
				req.Header.Set("ce-specversion", specversion)
				req.Header.Set("ce-id", "fuzz")
				req.Header.Set("ce-source", "fuzz")
				req.Header.Set("ce-type", typ)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Skip() // a header the client itself refuses to send
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusAccepted, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			default:
				t.Fatalf("structured=%v body %q: status %d", structured, body, resp.StatusCode)
			}
		}
	})
}
