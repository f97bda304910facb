package console

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
	"github.com/dpsd/dpsd/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, "console") }

// Addresses: this suite's servers live in 127.0.11.0/24, on ports that
// need no privileges.
const (
	prefix    = "127.0.11"
	readerKey = "cmVhZGVyLWtleS1yZWFkZXIta2V5LXJlYWRlci1rZXk="
)

// chromium finds Debian's Chromium, which scripts/install-test-deps.sh
// installs; nothing downloads a browser.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("DPSD_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Missing(t, "chromium not found (run scripts/install-test-deps.sh)")
	return ""
}

var (
	ipMu   sync.Mutex
	nextIP = 1
)

// freeIP returns an address of 127.0.11.0/24 where ports are free.
func freeIP(t *testing.T, ports ...string) string {
	t.Helper()
	ipMu.Lock()
	defer ipMu.Unlock()
	for ; nextIP < 255; nextIP++ {
		ip := fmt.Sprintf("%s.%d", prefix, nextIP)
		free := true
		for _, port := range ports {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			nextIP++
			return ip
		}
	}
	t.Fatalf("no free address in %s.0/24", prefix)
	return ""
}

// node is a dpsd serve with a linked built-in hub and, besides the owner, a
// "reader" policy that may read enrollments only.
type node struct {
	*testenv.Node
	hub   string
	hubCS string // the built-in hub's iothubowner connection string
	roots *x509.CertPool
}

// startNode starts the node with HTTPS on port 443 when sdk is set (the
// npm device client dials 443 of the host name; run such tests as the SDK
// tests are run), on 18443 otherwise.
func startNode(t *testing.T, sdk bool) *node {
	t.Helper()
	httpsPort := "18443"
	if sdk {
		httpsPort = "443"
	}
	ip := freeIP(t, httpsPort, "18883", "15671")
	dir := testenv.Dir(t, "node-")
	seedReaderPolicy(t, dir)
	n, err := testenv.StartNode(t, testenv.NodeOptions{
		IP:      ip,
		DataDir: dir,
		Args: []string{
			"--hostname", ip,
			"--https-addr", net.JoinHostPort(ip, httpsPort),
			"--mqtt-addr", net.JoinHostPort(ip, "18883"),
			"--amqp-addr", net.JoinHostPort(ip, "15671"),
			// Linked hubs show their health soon after they are linked.
			"--hub-health-interval", "200ms",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	n.StopOnCleanup(t, 100)
	bin := testenv.Binary(t)
	run := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append(args, "--data-dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	var h struct {
		HostName         string `json:"hostName"`
		ConnectionString string `json:"connectionString"`
	}
	if err := json.Unmarshal(run("hub", "create", "console-hub", "--address", freeIP(t, "443", "8883", "5671"), "-o", "json"), &h); err != nil {
		t.Fatal(err)
	}
	run("linked-hub", "create", "--connection-string", h.ConnectionString)
	ca, err := os.ReadFile(n.Info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	return &node{Node: n, hub: h.HostName, hubCS: h.ConnectionString, roots: roots}
}

// seedReaderPolicy creates the instance in dir's store with a second
// policy, as an operator would add one; dpsd has no command for it yet.
func seedReaderPolicy(t *testing.T, dir string) {
	t.Helper()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := instance.LoadOrCreate(ctx, st); err != nil {
		t.Fatal(err)
	}
	rec, err := st.Get(ctx, store.KindConfig, "instance")
	if err != nil {
		t.Fatal(err)
	}
	var in instance.Instance
	if err := json.Unmarshal(rec.Data, &in); err != nil {
		t.Fatal(err)
	}
	in.Policies = append(in.Policies, instance.Policy{KeyName: "reader", PrimaryKey: readerKey, SecondaryKey: readerKey, Rights: []instance.Right{instance.RightEnrollmentRead}})
	rec.Data, _ = json.Marshal(&in)
	if _, err := st.Put(ctx, rec, store.Condition{IfMatch: rec.ETag}); err != nil {
		t.Fatal(err)
	}
}

// browser is a headless Chromium tab that records every request it makes
// and every console error, script exception and CSP report.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	requests []string
	problems []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		// The node's certificate comes from its local CA, which this
		// throwaway profile does not trust.
		chromedp.IgnoreCertErrors,
		chromedp.UserDataDir(testenv.Dir(t, "chromium-")),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	b := &browser{}
	ctx, cancel2 := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	t.Cleanup(cancel2)
	b.ctx = ctx
	if err := chromedp.Do(ctx); err != nil {
		testenv.Missing(t, "cannot start chromium: %v", err)
	}
	return b
}

// listen runs in the tab's event loop: it only records.
func (b *browser) listen(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		b.requests = append(b.requests, ev.Request.URL)
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError || strings.Contains(ev.Entry.Text, "Content Security Policy") {
			b.problems = append(b.problems, "log: "+ev.Entry.Text)
		}
	case *runtime.EventExceptionThrown:
		b.problems = append(b.problems, "exception: "+ev.ExceptionDetails.Text)
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError {
			b.problems = append(b.problems, "console.error")
		}
	}
}

// bounded returns a context for one step.
func (b *browser) bounded() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, 30*time.Second)
}

// run runs steps with a bound, failing the test with what was going on.
func (b *browser) run(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := b.bounded()
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fail(t, what, err)
	}
}

func (b *browser) fail(t *testing.T, what string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main")))
	t.Fatalf("%s: %v\nat %s\n%s", what, err, loc, html)
}

// value runs one action that returns a value.
func value[T any](t *testing.T, b *browser, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := b.bounded()
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.fail(t, what, err)
	}
	return v
}

func (b *browser) text(t *testing.T, sel string) string {
	t.Helper()
	b.run(t, "wait for "+sel, chromedp.WaitVisible(chromedp.CSS(sel)))
	return strings.TrimSpace(value(t, b, "read "+sel, chromedp.Text(chromedp.CSS(sel))))
}

// waitText waits until sel's text contains want.
func (b *browser) waitText(t *testing.T, sel, want string) {
	t.Helper()
	value(t, b, fmt.Sprintf("wait for %q in %s", want, sel), chromedp.Poll[bool](
		fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.includes(%q); })()`, sel, want),
		chromedp.WithPollingInterval(100*time.Millisecond)))
}

// eval evaluates js in the page, awaiting a promise it returns.
func eval[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	return value(t, b, "evaluate "+js, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
}

func (b *browser) screenshot(t *testing.T, name string) {
	t.Helper()
	dir := os.Getenv("DPSD_CONSOLE_SCREENSHOTS")
	if dir == "" {
		return
	}
	// Quality 100 makes a PNG; less would be a JPEG.
	b.run(t, "settle", chromedp.Sleep(200*time.Millisecond))
	png := value(t, b, "screenshot", chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConsole walks the console as an operator would: sign in, create a
// group, let a device provision, find it and its timeline, be refused a
// stale edit, sign out; a read-only policy is refused a change. Throughout,
// the browser makes no request to another origin and reports no CSP
// violation or script error.
func TestConsole(t *testing.T) {
	n := startNode(t, true)
	b := newBrowser(t)
	origin := n.Info.HTTPSEndpoint
	ownerCS := n.Info.ServiceConnectionString

	// Sign-in page, reached from "/", and reachable by keyboard.
	b.run(t, "open the console", chromedp.Navigate(origin+"/"), chromedp.WaitVisible(chromedp.CSS("#signin-form")))
	b.screenshot(t, "signin")
	reached := tabThrough(t, b, 8)
	for _, want := range []string{"#connection-string", "#policy", "#key", "#sign-in"} {
		if !strings.Contains(reached, want) {
			t.Errorf("Tab does not reach %s on the sign-in page (reached %s)", want, reached)
		}
	}

	b.run(t, "sign in",
		chromedp.SendKeys(chromedp.CSS("#connection-string"), ownerCS),
		chromedp.Click(chromedp.CSS("#sign-in")),
		chromedp.WaitVisible(chromedp.CSS("#id-scope")))
	if got := b.text(t, "#id-scope"); got != n.Info.IDScope {
		t.Errorf("overview ID scope %q, want %q", got, n.Info.IDScope)
	}
	if got := b.text(t, "#policy-name"); got != instance.OwnerPolicy {
		t.Errorf("signed in as %q", got)
	}
	b.run(t, "reveal the connection string", chromedp.Click(chromedp.CSS("#reveal-connection-string")), chromedp.WaitVisible(chromedp.CSS("#connection-string-value")))
	if got := b.text(t, "#connection-string-value"); got != ownerCS {
		t.Errorf("revealed %q, want %q", got, ownerCS)
	}
	b.waitText(t, "main", n.hub)
	b.screenshot(t, "overview")
	reached = tabThrough(t, b, 14)
	for _, want := range []string{" #main", "#/groups", "#/registrations", "#/linkedhubs", "#sign-out", "#hide-connection-string"} {
		if !strings.Contains(reached, want) {
			t.Errorf("Tab does not reach %s on the overview (reached %s)", want, reached)
		}
	}

	// Create a symmetric-key group with generated keys and an initial twin.
	b.run(t, "open the new group form",
		chromedp.Navigate(origin+"/console/#/groups"), chromedp.WaitVisible(chromedp.CSS("#create")),
		chromedp.Click(chromedp.CSS("#create")), chromedp.WaitVisible(chromedp.CSS("#enrollment-form")))
	b.run(t, "reject a twin that is not JSON",
		chromedp.SendKeys(chromedp.CSS("#id"), "console-group"),
		chromedp.SendKeys(chromedp.CSS("#initial-twin"), `{"tags": {`),
		chromedp.Click(chromedp.CSS("#save")))
	b.waitText(t, "#form-message", "not valid JSON")
	b.run(t, "create the group",
		chromedp.SetValue(chromedp.CSS("#initial-twin"), `{"tags":{"site":"console"}}`),
		chromedp.Click(chromedp.CSS("#save")),
		chromedp.WaitVisible(chromedp.CSS("#show-keys")))
	b.screenshot(t, "group")
	b.run(t, "show keys", chromedp.Click(chromedp.CSS("#show-keys")), chromedp.WaitVisible(chromedp.CSS("#primary-key")))
	groupKey := b.text(t, "#primary-key")
	b.run(t, "derive a device key",
		chromedp.SendKeys(chromedp.CSS("#derive-registration-id"), "console-dev-1"),
		chromedp.Click(chromedp.CSS("#derive")),
		chromedp.WaitVisible(chromedp.CSS("#derived-key")))
	want, _ := sas.DeriveDeviceKey(groupKey, "console-dev-1")
	if got := b.text(t, "#derived-key"); got != want {
		t.Errorf("derived key %q, want %q", got, want)
	}

	// A device provisions with the derived key, with the official SDK.
	state := sdkRegister(t, n, "console-dev-1", want)
	if state.AssignedHub != n.hub {
		t.Fatalf("device assigned to %q, want %q", state.AssignedHub, n.hub)
	}

	// It shows in the registrations list with its hub, and has a timeline.
	b.run(t, "open registrations", chromedp.Navigate(origin+"/console/#/registrations?group=console-group"))
	b.waitText(t, "#results", "console-dev-1")
	b.waitText(t, "#results", n.hub)
	b.screenshot(t, "registrations")
	b.run(t, "open the registration", chromedp.Click(chromedp.CSS(`a[href="#/registrations/console-dev-1"]`)), chromedp.WaitVisible(chromedp.CSS("#timeline")))
	if got := b.text(t, "#reg-hub"); got != n.hub {
		t.Errorf("registration page hub %q, want %q", got, n.hub)
	}
	b.waitText(t, "#timeline", "assigned")
	b.screenshot(t, "registration")

	// A group with custom allocation: its webhook fails once, then
	// answers. The device's timeline shows both attempts.
	hook := startWebhook(t, n.hub)
	b.run(t, "create a custom allocation group",
		chromedp.Navigate(origin+"/console/#/groups/new"),
		chromedp.WaitVisible(chromedp.CSS("#enrollment-form")),
		chromedp.SendKeys(chromedp.CSS("#id"), "custom-group"),
		chromedp.SetValue(chromedp.CSS("#allocation-policy"), "custom"))
	eval[bool](t, b, `document.querySelector('#allocation-policy').dispatchEvent(new Event('change'))`)
	b.run(t, "give the webhook",
		chromedp.WaitVisible(chromedp.CSS("#webhook-url")),
		chromedp.SendKeys(chromedp.CSS("#webhook-url"), hook.URL+"/allocate"),
		chromedp.Click(chromedp.CSS("#save")),
		chromedp.WaitVisible(chromedp.CSS("#show-keys")))
	b.run(t, "show keys", chromedp.Click(chromedp.CSS("#show-keys")), chromedp.WaitVisible(chromedp.CSS("#primary-key")))
	customKey, _ := sas.DeriveDeviceKey(b.text(t, "#primary-key"), "console-dev-2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, port, _ := net.SplitHostPort(n.Info.MQTTAddr)
	state2, err := device.Register(ctx, device.Config{
		ProvisioningHost: net.JoinHostPort(n.IP, port),
		IDScope:          n.Info.IDScope,
		RegistrationID:   "console-dev-2",
		SymmetricKey:     customKey,
		Transport:        device.TransportMQTT,
		RootCAs:          n.roots,
	})
	if err != nil {
		t.Fatalf("custom allocation device: %v", err)
	}
	if state2.AssignedHub != n.hub {
		t.Fatalf("custom allocation assigned %q, want %q", state2.AssignedHub, n.hub)
	}
	b.run(t, "open the custom registration", chromedp.Navigate(origin+"/console/#/registrations/console-dev-2"), chromedp.WaitVisible(chromedp.CSS("#timeline")))
	for _, want := range []string{"Custom allocation", hook.URL + "/allocate", "Attempt 1", "HTTP 503", "Attempt 2", "HTTP 200", "Retries"} {
		b.waitText(t, "#timeline", want)
	}
	b.screenshot(t, "timeline")

	// A stale edit is refused: someone else changes the group while the
	// form is open.
	b.run(t, "open the edit form", chromedp.Navigate(origin+"/console/#/groups/console-group/edit"), chromedp.WaitVisible(chromedp.CSS("#save")))
	changeGroupBehindTheBrowser(t, n)
	b.run(t, "save the stale edit", chromedp.SetValue(chromedp.CSS("#hubs"), n.hub), chromedp.Click(chromedp.CSS("#save")), chromedp.WaitVisible(chromedp.CSS("#stale")))
	b.screenshot(t, "stale-edit")

	// The other pages draw.
	for _, p := range []struct{ hash, sel string }{{"#/enrollments", "#results"}, {"#/linkedhubs", "#linked-hubs"}, {"#/hubs", "main table"}, {"#/certificates", "#cert-message"}} {
		b.run(t, "open "+p.hash, chromedp.Navigate(origin+"/console/"+p.hash), chromedp.WaitReady(chromedp.CSS(p.sel)))
		b.screenshot(t, strings.TrimPrefix(p.hash, "#/"))
	}

	// Phone width: nothing overflows sideways.
	b.run(t, "phone width", chromedp.EmulateViewport(375, 812, chromedp.EmulateScale(2)))
	for _, hash := range []string{"#/overview", "#/groups", "#/registrations", "#/registrations/console-dev-1", "#/groups/console-group"} {
		b.run(t, "open "+hash, chromedp.Navigate(origin+"/console/"+hash), chromedp.WaitVisible(chromedp.CSS("main h1")), chromedp.Sleep(300*time.Millisecond))
		if eval[bool](t, b, `document.documentElement.scrollWidth > window.innerWidth + 1`) {
			t.Errorf("%s overflows a 375 px wide screen", hash)
		}
	}
	b.run(t, "open registrations at phone width", chromedp.Navigate(origin+"/console/#/registrations"))
	b.waitText(t, "#results", "console-dev-1")
	b.screenshot(t, "phone-registrations")
	b.run(t, "desktop width", chromedp.EmulateViewport(1280, 900))

	// Until here the pages reported nothing but the refused stale edit's
	// 412.
	checkProblems(t, b, "status of 412")

	// The CSP is in force: an injected inline script does not run, and
	// the browser reports the violation.
	ran := eval[bool](t, b, `(() => { const s = document.createElement('script'); s.textContent = 'window.__inline = true'; document.body.appendChild(s); return window.__inline === true; })()`)
	if ran {
		t.Error("an inline script ran: the CSP is not in force")
	}
	b.mu.Lock()
	reported := slices.ContainsFunc(b.problems, func(p string) bool { return strings.Contains(p, "Content Security Policy") })
	b.problems = nil
	b.mu.Unlock()
	if !reported {
		t.Error("the browser reported no CSP violation for an inline script")
	}

	// Sign out.
	b.run(t, "sign out", chromedp.Click(chromedp.CSS("#sign-out")), chromedp.WaitVisible(chromedp.CSS("#signin-form")))
	if eval[bool](t, b, `fetch('/console/api/session').then(r => r.json()).then(s => s.signedIn)`) {
		t.Error("still signed in after signing out")
	}
	var status int

	// A read-only policy sees no create button and is refused a change.
	b.run(t, "sign in as reader",
		chromedp.Navigate(origin+"/console/"),
		chromedp.WaitVisible(chromedp.CSS("#signin-form")),
		chromedp.SendKeys(chromedp.CSS("#policy"), "reader"),
		chromedp.SendKeys(chromedp.CSS("#key"), readerKey),
		chromedp.Click(chromedp.CSS("#sign-in")),
		chromedp.WaitVisible(chromedp.CSS("#id-scope")),
		chromedp.Navigate(origin+"/console/#/groups"))
	b.waitText(t, "#results", "console-group")
	create := eval[int](t, b, `document.querySelectorAll('#create').length`)
	if create != 0 {
		t.Error("a read-only policy is offered to create a group")
	}
	status = eval[int](t, b, `(async () => {
		const s = await (await fetch('/console/api/session')).json();
		const r = await fetch('/console/api/enrollmentGroups/not-allowed', {method: 'PUT', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrfToken},
			body: JSON.stringify({enrollmentGroupId: 'not-allowed', attestation: {type: 'symmetricKey'}})});
		return r.status; })()`)
	if status != http.StatusUnauthorized {
		t.Errorf("a read-only policy creating a group got %d, want 401", status)
	}

	// Nothing left the node's origin; nothing broke.
	b.mu.Lock()
	for _, u := range b.requests {
		if !strings.HasPrefix(u, origin+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the browser requested %s, outside %s", u, origin)
		}
	}
	if len(b.requests) == 0 {
		t.Error("no request was recorded")
	}
	b.mu.Unlock()
	// The reader's refused change logs its 401.
	checkProblems(t, b, "status of 401")
}

// checkProblems fails the test for each problem the browser reported
// (but those containing one of expected) and forgets them.
func checkProblems(t *testing.T, b *browser, expected ...string) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		if !slices.ContainsFunc(expected, func(e string) bool { return strings.Contains(p, e) }) {
			t.Errorf("browser reported: %s", p)
		}
	}
	b.problems = nil
}

// sdkRegister registers a device with the official Node SDK over HTTPS
// (test/sdk/console-register.js) and returns its registration state.
func sdkRegister(t *testing.T, n *node, registrationID, key string) *dps.DeviceRegistrationState {
	t.Helper()
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		testenv.Missing(t, "node not found on PATH (run scripts/install-test-deps.sh)")
	}
	sdk := filepath.Join(testenv.RepoRoot(t), "test", "sdk")
	if _, err := os.Stat(filepath.Join(sdk, "node_modules", "azure-iot-provisioning-device-http")); err != nil {
		testenv.Missing(t, "test/sdk packages not installed (run scripts/install-test-deps.sh): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, "console-register.js", registrationID, key)
	cmd.Dir = sdk
	cmd.Env = append(os.Environ(), "DPSD_INFO="+filepath.Join(n.DataDir, "info.json"), "NODE_EXTRA_CA_CERTS="+n.Info.CACertFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node console-register.js: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "RESULT "); ok {
			var st dps.DeviceRegistrationState
			if err := json.Unmarshal([]byte(rest), &st); err != nil {
				t.Fatal(err)
			}
			return &st
		}
	}
	t.Fatalf("node console-register.js printed no result:\n%s", out)
	return nil
}

// startWebhook serves a custom allocation webhook on an address of this
// suite's range: it answers its first call with 503 and later ones with
// hub.
func startWebhook(t *testing.T, hub string) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(freeIP(t, "0"), "0"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			http.Error(w, `{"message":"cold start"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"iotHubHostName":%q,"initialTwin":{"tags":{"allocatedBy":"webhook"}}}`, hub)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// tabThrough presses Tab n times from the top of the page and returns the
// ids and link targets that got focus.
func tabThrough(t *testing.T, b *browser, n int) string {
	t.Helper()
	eval[bool](t, b, `(document.activeElement && document.activeElement.blur(), true)`)
	var seen []string
	for range n {
		b.run(t, "press Tab", chromedp.KeyEvent(kb.Tab))
		id := eval[string](t, b, `(() => { const e = document.activeElement; return e ? '#' + (e.id || '') + ' ' + (e.getAttribute('href') || '') : ''; })()`)
		seen = append(seen, id)
	}
	return strings.Join(seen, " ")
}

// changeGroupBehindTheBrowser updates the group through the service API,
// as another operator would, so the etag the open form holds is stale.
func changeGroupBehindTheBrowser(t *testing.T, n *node) {
	t.Helper()
	service(t, n, "PUT", "/enrollmentGroups/console-group", `{"enrollmentGroupId":"console-group","attestation":{"type":"symmetricKey"},"provisioningStatus":"enabled","initialTwin":{"tags":{"site":"elsewhere"}}}`,
		http.StatusOK, "If-Match", "*")
}

// service calls the service API as the owner and checks the status.
func service(t *testing.T, n *node, method, path, body string, want int, headers ...string) {
	t.Helper()
	cs, err := sas.ParseConnectionString(n.Info.ServiceConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.New(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(n)}}
	req, err := http.NewRequest(method, n.Info.HTTPSEndpoint+path+"?api-version=2021-10-01", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatal(errors.New(method + " " + path + ": " + resp.Status))
	}
}

func tlsConfig(n *node) *tls.Config {
	return &tls.Config{RootCAs: n.roots, ServerName: n.IP}
}
