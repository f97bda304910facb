package allocate

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
)

// TestTargetsCheck decides about addresses without dialling any: the
// refused ones must never see a packet, even from a test.
func TestTargetsCheck(t *testing.T) {
	own := netip.MustParseAddrPort("127.0.14.1:8443")
	anyPort := netip.MustParseAddrPort("0.0.0.0:6060")
	tests := []struct {
		setting string
		addr    string
		refused bool
	}{
		{"", "169.254.169.254:80", true},
		{"", "[fe80::1%eth0]:80", true},
		{"", "[fd00:ec2::254]:80", true},
		{"", "100.100.100.200:80", true},
		{"", "[::ffff:169.254.169.254]:80", true},
		{"", "127.0.0.1:8090", false},
		{"", "10.1.2.3:443", false},
		{"", "192.168.1.10:443", false},
		{"", "20.50.60.70:443", false},
		{"", "127.0.14.1:8443", true},  // own HTTPS listener
		{"", "127.0.14.1:8444", false}, // same address, another port
		{"", "127.0.0.1:6060", true},   // debug listener on every address
		{"", "127.0.14.9:6060", true},
		{"local", "192.168.1.10:443", false},
		{"public", "127.0.0.1:8090", true},
		{"public", "[::1]:8090", true},
		{"public", "10.1.2.3:443", true},
		{"public", "172.20.0.1:443", true},
		{"public", "192.168.1.10:443", true},
		{"public", "100.64.1.1:443", true},
		{"public", "[fd12::1]:443", true},
		{"public", "0.0.0.0:443", true},
		{"public", "20.50.60.70:443", false},
		{"public", "169.254.169.254:80", true},
		{"10.1.0.0/16,hooks.example.com", "10.1.2.3:443", false},
		{"10.1.0.0/16,hooks.example.com", "10.2.0.1:443", true},
		{"10.1.0.0/16,hooks.example.com", "20.50.60.70:443", true},
		{"10.1.0.0/16,hooks.example.com", "127.0.0.1:8090", true},
		{"127.0.14.5", "127.0.14.5:80", false},
		{"169.254.0.0/16", "169.254.169.254:80", true}, // a range does not lift the metadata refusal
		{"169.254.10.10", "169.254.10.10:80", false},   // the exact address does
	}
	for _, tt := range tests {
		tg, err := ParseTargets(tt.setting)
		if err != nil {
			t.Fatalf("ParseTargets(%q): %v", tt.setting, err)
		}
		tg = tg.WithOwn(own, anyPort)
		err = tg.check(netip.MustParseAddrPort(tt.addr), false)
		var re *RefusedError
		if got := errors.As(err, &re); got != tt.refused {
			t.Errorf("targets %q, %s: refused = %v (%v); want %v", tt.setting, tt.addr, got, err, tt.refused)
		}
	}
	// A host name on the allow list allows what it resolves to, but not
	// the metadata addresses.
	tg, _ := ParseTargets("hooks.example.com")
	if err := tg.check(netip.MustParseAddrPort("20.50.60.70:443"), true); err != nil {
		t.Errorf("allowed host name refused: %v", err)
	}
	if err := tg.check(netip.MustParseAddrPort("169.254.169.254:80"), true); err == nil {
		t.Error("allowed host name resolving to the metadata address was allowed")
	}
}

func TestParseTargetsErrors(t *testing.T) {
	for _, s := range []string{"10.0.0.0/33", " , ", "http://x/", "a b"} {
		if _, err := ParseTargets(s); err == nil {
			t.Errorf("ParseTargets(%q) accepted", s)
		}
	}
}

// listenOn starts a webhook answering okHub on addr (127.0.14.x).
func listenOn(t *testing.T, addr, answer string) (*httptest.Server, *int) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	calls := new(int)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*calls++
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(answer))
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, calls
}

// TestWebhookTargetsDialled checks the refusal where it is made, at dial
// time after resolution, with real webhooks on loopback: the node's own
// listener, loopback under "public" (through the name localhost, resolved),
// and an allow list.
func TestWebhookTargetsDialled(t *testing.T) {
	okHub := `{"iotHubHostName":"` + hubA + `"}`
	own, ownCalls := listenOn(t, "127.0.14.20:0", okHub)
	other, otherCalls := listenOn(t, "127.0.14.21:0", okHub)
	ownAddr := netip.MustParseAddrPort(own.Listener.Addr().String())
	_, otherPort, _ := net.SplitHostPort(other.Listener.Addr().String())

	tests := []struct {
		name    string
		setting string
		url     string
		calls   *int
		refused bool
	}{
		{"own listener", "", own.URL + "/debug/pprof/cmdline", ownCalls, true},
		{"another local webhook", "", other.URL + "/api/allocate", otherCalls, false},
		{"public refuses loopback by name", "public", "http://localhost:" + otherPort + "/api", otherCalls, true},
		{"allow list allows its address", "127.0.14.21/32", other.URL + "/api", otherCalls, false},
		{"allow list refuses others", "127.0.14.99/32,hooks.example.com", other.URL + "/api", otherCalls, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg, err := ParseTargets(tt.setting)
			if err != nil {
				t.Fatal(err)
			}
			ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) { o.Targets = tg.WithOwn(ownAddr) })
			before := *tt.calls
			in := groupInput("dev-1", customGroup(tt.url, hubA))
			got, err := ts.alloc.Allocate(t.Context(), in)
			if !tt.refused {
				if err != nil || got.Hub != hubA {
					t.Fatalf("Allocate = %+v, %v; want %s", got, err, hubA)
				}
				return
			}
			if errCode(err) != dps.CodeCustomAllocationFailed || !strings.Contains(err.Error(), "not an allowed webhook target") {
				t.Fatalf("Allocate: %v; want 400207, not an allowed target", err)
			}
			if *tt.calls != before {
				t.Errorf("the refused webhook was called")
			}
			if s := ts.clock.Sleeps(); len(s) != 0 {
				t.Errorf("a refused target was retried: %v", s)
			}
			entries, _ := ts.audit.List(t.Context(), in.RegistrationID)
			if len(entries) != 1 || !strings.Contains(entries[0].Attempts[0].Error, "refused") {
				t.Errorf("the allocation log does not say why: %+v", entries)
			}
		})
	}
}

// TestWebhookRedirectToRefusedTarget: a webhook that redirects to the
// metadata address is not followed (no redirect is), so nothing is dialled
// there.
func TestWebhookRedirectToRefusedTarget(t *testing.T) {
	ws := newWebhookServer(t, func(_ int, r *http.Request) (int, string) { return 0, "" })
	ws.Config.Handler = http.RedirectHandler("http://169.254.169.254/latest/meta-data/", http.StatusTemporaryRedirect)
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, nil)
	_, err := ts.alloc.Allocate(t.Context(), groupInput("dev-1", customGroup(ws.URL, hubA)))
	if errCode(err) != dps.CodeCustomAllocationFailed || !strings.Contains(err.Error(), "307") {
		t.Fatalf("Allocate: %v; want 400207 with status 307", err)
	}
}
