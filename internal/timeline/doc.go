// Package timeline serves the web page on-call opens when paged: the list
// of incidents, and per incident a timeline from the first kernel event to
// the last step — classify's reasons, each step's outcome and how long it
// took, what it applied, where the evidence is, and every raw CloudEvent
// one click away.
//
// The pages are rendered on the server from a journal.Reader (the SQLite
// journal of parry run, the PostgreSQL journal of a cluster) and need
// nothing else: no script, no font, no stylesheet from elsewhere, so they
// work offline and without JavaScript. Every value on them came from
// events, which attackers shape (a process's name, a pod's name, a step's
// error): html/template escapes them for HTML, display.Printable for what
// the browser would otherwise act on (bidirectional overrides, controls),
// and the Content-Security-Policy forbids scripts, frames and every
// resource but the page's own inline style.
package timeline
