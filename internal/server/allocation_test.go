package server

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// TestWebhookNotPointedAtOwnListeners: a webhook URL naming the node's
// debug listener (pprof's cmdline, metrics) or its HTTPS listener is
// refused, nothing is read back, and the refusal is in the allocation log.
func TestWebhookNotPointedAtOwnListeners(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	const hubName = "h1.azure-devices.net"
	hubs := linkedhub.New(st)
	if _, err := hubs.Create(t.Context(), admin.LinkedHubDefinition{ConnectionString: "HostName=" + hubName + ";SharedAccessKeyName=o;SharedAccessKey=a2V5"}); err != nil {
		t.Fatal(err)
	}
	serve := func(addr string) (string, *int) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		calls := new(int)
		srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			*calls++
			io.WriteString(w, `{"iotHubHostName":"`+hubName+`"}`)
		})}}
		srv.Start()
		t.Cleanup(srv.Close)
		return l.Addr().String(), calls
	}
	debugAddr, debugCalls := serve("127.0.14.40:0")
	httpsAddr, httpsCalls := serve("127.0.14.41:0")
	otherAddr, otherCalls := serve("127.0.14.42:0")
	httpsTCP, _ := net.ResolveTCPAddr("tcp", httpsAddr)

	alog := alloclog.New(st, alloclog.Options{Logger: quiet})
	alloc, err := newAllocator(Config{DebugAddr: debugAddr}, hubs, alog, nil, nil, nil, nil, nil, quiet, []net.Addr{httpsTCP})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		url     string
		calls   *int
		refused bool
	}{
		{"http://" + debugAddr + "/debug/pprof/cmdline", debugCalls, true},
		{"http://" + httpsAddr + "/registrations", httpsCalls, true},
		{"http://" + otherAddr + "/api/allocate", otherCalls, false},
	} {
		regID := "dev-" + strings.ReplaceAll(tt.url[7:], ":", "-")
		in := &provision.AllocationInput{RegistrationID: regID, AttestationType: dps.AttestationSymmetricKey, Group: &dps.EnrollmentGroup{
			EnrollmentGroupID: "g", AllocationPolicy: dps.AllocationCustom, IoTHubs: []string{hubName},
			CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: tt.url, APIVersion: "2021-10-01"},
		}}
		got, err := alloc.Allocate(t.Context(), in)
		var de *dps.Error
		switch {
		case !tt.refused && (err != nil || got.Hub != hubName):
			t.Errorf("%s: Allocate = %+v, %v; want %s", tt.url, got, err, hubName)
		case tt.refused && (!errors.As(err, &de) || de.ErrorCode != dps.CodeCustomAllocationFailed):
			t.Errorf("%s: Allocate = %+v, %v; want 400207", tt.url, got, err)
		case tt.refused && *tt.calls != 0:
			t.Errorf("%s: called %d times", tt.url, *tt.calls)
		case tt.refused:
			entries, _ := alog.List(t.Context(), regID)
			if len(entries) != 1 || !strings.Contains(entries[0].Attempts[0].Error, "own listeners") || entries[0].Attempts[0].Body != nil {
				t.Errorf("%s: allocation log %+v; want the refusal, no body", tt.url, entries)
			}
		}
	}
}
