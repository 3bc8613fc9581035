package e2e

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/timeline"
	"parry.dev/parry/tests/devenv"
	"parry.dev/parry/tests/podcgroup"
)

// chromium is the path of Debian's headless-capable Chromium; without it
// the test skips, or fails under CI=true.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Chromium on PATH: .ci/install-deps.sh installs Debian's chromium")
	}
	t.Skip("no Chromium on PATH: apt-get install chromium")
	return ""
}

// TestTimelineRendersTheIncidentInChromium contains a miner end to end,
// then opens the web timeline in a real headless Chromium as on-call
// would: the incident list, a click on the incident, its timeline. It
// asserts the steps and the timings the page shows against the journal,
// and saves a screenshot ($PARRY_ARTIFACTS or the temp dir,
// parry-timeline.png).
func TestTimelineRendersTheIncidentInChromium(t *testing.T) {
	browser := chromium(t)
	w := start(t)
	podcgroup.Listen(t, "127.0.0.1:3333")
	podcgroup.Listen(t, "127.0.0.1:18080")
	ns := "shop-timeline"
	pods := devenv.WebDeployment(t, w.kube, ns, 2)
	w.contain(t, ns, pods[0], pods[1], false)

	ctx := context.Background()
	list, err := w.stack.Journal.Incidents(ctx, journal.IncidentFilter{Namespace: ns})
	if err != nil || len(list) != 1 {
		t.Fatalf("incidents in %s: %v %v", ns, list, err)
	}
	inc := list[0]
	trees, err := w.stack.Journal.Incident(ctx, inc.ID)
	if err != nil {
		t.Fatal(err)
	}
	// What the page must say each step took: from its cause's arrival to
	// its reply's, as the journal recorded them.
	took := map[string]string{}
	received := map[string]time.Time{}
	var visit func(n *journal.Node)
	visit = func(n *journal.Node) {
		received[n.ID] = n.Received
		if step := events.String(n.Event, events.ExtStep); step != "" && n.Type == events.StepDone(step) {
			took[step] = fmt.Sprintf("%.1f ms", float64(n.Received.Sub(received[n.Causation]).Microseconds())/1000)
		}
		for _, c := range n.Children {
			visit(c)
		}
	}
	visit(trees[0])

	srv := httptest.NewServer((&timeline.Server{Journal: w.stack.Journal, Log: zerolog.Nop()}).Handler())
	defer srv.Close()

	alloc, cancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1000),
		chromedp.UserDataDir(t.TempDir()))...)
	defer cancel()
	tab, cancel := chromedp.NewContext(alloc)
	defer cancel()
	tab, cancel = context.WithTimeout(tab, 60*time.Second)
	defer cancel()

	browse := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("Chromium: %s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(tab, chromedp.Text(chromedp.CSS(sel)))
		browse("reading "+sel, err)
		return s
	}
	browse("opening the incident list", chromedp.Do(tab, chromedp.Navigate(srv.URL+"/?namespace="+ns), chromedp.WaitVisible(chromedp.CSS("#incidents"))))
	listText := text("#incidents")
	resp, err := chromedp.RunResponse(tab, chromedp.Click(chromedp.CSS(`#incidents a[href^="/incidents/"]`)))
	browse("clicking the incident", err)
	if resp.Status != 200 {
		t.Fatalf("the incident page answered %d", resp.Status)
	}
	browse("waiting for the timeline", chromedp.Do(tab, chromedp.WaitVisible(chromedp.CSS("#timeline"))))
	timelineText, summaryText, evidenceText := text("#timeline tbody"), text("#summary"), text("#evidence")
	screenshot, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	browse("taking the screenshot", err)
	dir := os.Getenv("PARRY_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	shot := filepath.Join(dir, "parry-timeline.png")
	if err := os.WriteFile(shot, screenshot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of incident %s: %s (%d bytes)", inc.ID, shot, len(screenshot))

	for _, want := range []string{inc.ID, "crypto-miner", "isolate done", "snapshot done", "respawn done"} {
		if !strings.Contains(listText, want) {
			t.Errorf("the incident list lacks %q:\n%s", want, listText)
		}
	}
	for _, want := range []string{"network connect", "incident opened", "isolate done", "snapshot done", "respawn done", "+0.0 ms", "in-kernel egress block", "raw CloudEvent"} {
		if !strings.Contains(timelineText, want) {
			t.Errorf("the timeline lacks %q:\n%s", want, timelineText)
		}
	}
	for step, d := range took {
		// The row of each step shows what it took, as the journal says.
		i := strings.Index(timelineText, step+" done")
		if i < 0 || !strings.Contains(timelineText[i:], d) {
			t.Errorf("the timeline shows no %s for %s", d, step)
		}
	}
	if len(took) < 3 {
		t.Errorf("timings checked for %v only", took)
	}
	if !strings.Contains(summaryText, inc.Pod) || !strings.Contains(summaryText, "First event → last step") {
		t.Errorf("summary:\n%s", summaryText)
	}
	if !strings.Contains(evidenceText, "manifest sha256:") {
		t.Errorf("evidence:\n%s", evidenceText)
	}
}
