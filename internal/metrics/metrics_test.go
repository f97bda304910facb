package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/transport/https"
	"github.com/dpsd/dpsd/internal/transport/mqtt"
)

// The decorator must fit wherever the engine goes.
var (
	_ https.Provisioner = (*Provisioner)(nil)
	_ mqtt.Provisioner  = (*Provisioner)(nil)
)

// fakeEngine answers every call with the status or error it is given.
type fakeEngine struct {
	status string
	err    error
}

func (f fakeEngine) result() (provision.Result, error) {
	if f.err != nil {
		return provision.Result{}, f.err
	}
	return provision.Result{Operation: &dps.RegistrationOperationStatus{OperationID: "op", Status: f.status}}, nil
}

func (f fakeEngine) Register(context.Context, provision.Request) (provision.Result, error) {
	return f.result()
}

func (f fakeEngine) OperationStatus(context.Context, provision.Request, string) (provision.Result, error) {
	return f.result()
}

func (f fakeEngine) Status(context.Context, provision.Request) (*dps.DeviceRegistrationState, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &dps.DeviceRegistrationState{RegistrationID: "dev", Status: f.status}, nil
}

func TestProvisionerCountsOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		transport string
		op        string
		engine    fakeEngine
		// want is the single device-request series expected, as
		// transport, operation, outcome.
		wantTransport, wantOutcome string
		// wantRegistration is the dpsd_registrations_total status
		// expected to count one, or "" for none.
		wantRegistration string
	}{
		{"register assigned at once", "mqtt", OpRegister, fakeEngine{status: dps.StatusAssigned}, "mqtt", "assigned", "assigned"},
		{"register assigning", "https", OpRegister, fakeEngine{status: dps.StatusAssigning}, "https", "assigning", ""},
		{"register disabled", "mqtt-ws", OpRegister, fakeEngine{status: dps.StatusDisabled}, "mqtt-ws", "disabled", "disabled"},
		{"register unauthorized", "https", OpRegister, fakeEngine{err: dps.Errorf(dps.CodeUnauthorized, "no")}, "https", OutcomeError4xx, ""},
		{"register throttled", "mqtt", OpRegister, fakeEngine{err: &dps.Error{ErrorCode: dps.CodeThrottled}}, "mqtt", OutcomeError4xx, ""},
		{"register store down", "mqtt", OpRegister, fakeEngine{err: dps.Errorf(dps.CodeServiceUnavailable, "down")}, "mqtt", OutcomeError5xx, ""},
		{"poll still assigning", "https", OpOperationStatus, fakeEngine{status: dps.StatusAssigning}, "https", "assigning", ""},
		{"poll assigned", "https", OpOperationStatus, fakeEngine{status: dps.StatusAssigned}, "https", "assigned", "assigned"},
		{"poll failed", "mqtt-ws", OpOperationStatus, fakeEngine{status: dps.StatusFailed}, "mqtt-ws", "failed", "failed"},
		{"poll unknown operation", "mqtt", OpOperationStatus, fakeEngine{err: dps.Errorf(dps.CodeOperationNotFound, "gone")}, "mqtt", OutcomeError4xx, ""},
		{"poll plain error is internal", "mqtt", OpOperationStatus, fakeEngine{err: errors.New("boom")}, "mqtt", OutcomeError5xx, ""},
		{"lookup assigned ends nothing", "https", OpStatusLookup, fakeEngine{status: dps.StatusAssigned}, "https", "assigned", ""},
		{"lookup unassigned", "https", OpStatusLookup, fakeEngine{status: dps.StatusUnassigned}, "https", "unassigned", ""},
		{"lookup not found", "https", OpStatusLookup, fakeEngine{err: dps.Errorf(dps.CodeRegistrationNotFound, "none")}, "https", OutcomeError4xx, ""},
		{"status nobody knows", "https", OpRegister, fakeEngine{status: "sideways"}, "https", OutcomeUnknown, ""},
		{"no transport named", "", OpRegister, fakeEngine{status: dps.StatusAssigning}, "unknown", "assigning", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New()
			p := m.Provisioner(tc.engine)
			req := provision.Request{IDScope: "0ne00000001", RegistrationID: "dev", Transport: tc.transport}
			var err error
			switch tc.op {
			case OpRegister:
				var res provision.Result
				res, err = p.Register(context.Background(), req)
				checkResult(t, res, err, tc.engine)
			case OpOperationStatus:
				var res provision.Result
				res, err = p.OperationStatus(context.Background(), req, "op")
				checkResult(t, res, err, tc.engine)
			case OpStatusLookup:
				var st *dps.DeviceRegistrationState
				st, err = p.Status(context.Background(), req)
				if (st == nil) != (tc.engine.err != nil) || (st != nil && st.Status != tc.engine.status) {
					t.Errorf("Status = %+v; the engine's answer was not passed through", st)
				}
			}
			if err != tc.engine.err {
				t.Errorf("err = %v, want the engine's %v unchanged", err, tc.engine.err)
			}

			if n := testutil.CollectAndCount(m.deviceRequests); n != 1 {
				t.Errorf("%d device request series, want 1", n)
			}
			if got := testutil.ToFloat64(m.deviceRequests.WithLabelValues(tc.wantTransport, tc.op, tc.wantOutcome)); got != 1 {
				t.Errorf("%s{transport=%q,operation=%q,outcome=%q} = %v, want 1", DeviceRequestsTotal, tc.wantTransport, tc.op, tc.wantOutcome, got)
			}
			if n := testutil.CollectAndCount(m.deviceDuration); n != 1 {
				t.Errorf("%d duration series, want 1", n)
			}
			// The terminal statuses are all exposed from the start.
			for _, st := range []string{dps.StatusAssigned, dps.StatusFailed, dps.StatusDisabled} {
				want := 0.0
				if st == tc.wantRegistration {
					want = 1
				}
				if got := testutil.ToFloat64(m.registrations.WithLabelValues(st)); got != want {
					t.Errorf("%s{status=%q} = %v, want %v", RegistrationsTotal, st, got, want)
				}
			}
			if n := testutil.CollectAndCount(m.registrations); n != 3 {
				t.Errorf("%d registration series, want 3", n)
			}
		})
	}
}

func checkResult(t *testing.T, res provision.Result, err error, f fakeEngine) {
	t.Helper()
	if f.err != nil {
		if res.Operation != nil {
			t.Errorf("result %+v with an error", res)
		}
		return
	}
	if err != nil || res.Operation == nil || res.Operation.Status != f.status {
		t.Errorf("result %+v, %v; the engine's answer was not passed through", res, err)
	}
}

func TestInstrumentServiceCountsByMethodAndCode(t *testing.T) {
	m := New()
	h := m.InstrumentService(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/missing":
			http.NotFound(w, r)
		case "/created":
			w.WriteHeader(http.StatusCreated)
		default:
			io.WriteString(w, "ok") // an implicit 200
		}
	}))
	requests := []struct{ method, path string }{
		{"GET", "/enrollments/a"},
		{"GET", "/enrollments/b"},
		{"PUT", "/created"},
		{"DELETE", "/missing"},
		{"BREW", "/enrollments/a"},
	}
	for _, r := range requests {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(r.method, r.path, nil))
	}
	tests := []struct {
		method, code string
		want         float64
	}{
		{"get", "200", 2},
		{"put", "201", 1},
		{"delete", "404", 1},
		// Methods outside HTTP's set share one series, so clients
		// cannot grow the series without bound.
		{"unknown", "200", 1},
	}
	for _, tc := range tests {
		if got := testutil.ToFloat64(m.serviceRequests.WithLabelValues(tc.method, tc.code)); got != tc.want {
			t.Errorf("%s{method=%q,code=%q} = %v, want %v", ServiceRequestsTotal, tc.method, tc.code, got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.serviceRequests); n != len(tests) {
		t.Errorf("%d service series, want %d", n, len(tests))
	}
	if n := testutil.CollectAndCount(m.serviceDuration); n != 4 {
		t.Errorf("%d service duration series, want one per method (4)", n)
	}
}

func TestHandlerExposesNames(t *testing.T) {
	m := New()
	p := m.Provisioner(fakeEngine{status: dps.StatusAssigned})
	if _, err := p.Register(context.Background(), provision.Request{Transport: "mqtt"}); err != nil {
		t.Fatal(err)
	}
	m.InstrumentService(http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{
		DeviceRequestsTotal + `{operation="register",outcome="assigned",transport="mqtt"} 1`,
		DeviceRequestDuration + `_bucket{operation="register",transport="mqtt",le="+Inf"} 1`,
		RegistrationsTotal + `{status="assigned"} 1`,
		ServiceRequestsTotal + `{code="404",method="get"} 1`,
		ServiceRequestDuration + `_count{method="get"} 1`,
		"go_goroutines",
		"go_build_info",
		"promhttp_metric_handler_requests_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}
