package https

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// fakeEngine records what the transport decoded and answers as told.
type fakeEngine struct {
	got    provision.Request
	opID   string
	result provision.Result
	err    error
}

func (f *fakeEngine) Register(_ context.Context, req provision.Request) (provision.Result, error) {
	f.got = req
	return f.result, f.err
}

func (f *fakeEngine) OperationStatus(_ context.Context, req provision.Request, op string) (provision.Result, error) {
	f.got, f.opID = req, op
	return f.result, f.err
}

func (f *fakeEngine) Status(_ context.Context, req provision.Request) (*dps.DeviceRegistrationState, error) {
	f.got = req
	if f.err != nil {
		return nil, f.err
	}
	return f.result.Operation.RegistrationState, nil
}

func TestParsePath(t *testing.T) {
	tests := []struct {
		path string
		want route
		ok   bool
	}{
		{"/0ne00ABC/registrations/dev-1/register", route{scope: "0ne00ABC", regID: "dev-1", kind: "register"}, true},
		{"/0ne00ABC/Registrations/dev-1/Register", route{scope: "0ne00ABC", regID: "dev-1", kind: "register"}, true},
		{"/0ne00ABC/registrations/dev%3A1/register", route{scope: "0ne00ABC", regID: "dev:1", kind: "register"}, true},
		{"/0ne00ABC/registrations/dev-1/operations/4.ab.cd-ef", route{scope: "0ne00ABC", regID: "dev-1", opID: "4.ab.cd-ef", kind: "operation"}, true},
		{"/0ne00ABC/registrations/dev-1", route{scope: "0ne00ABC", regID: "dev-1", kind: "status"}, true},
		{"/0ne00ABC/registrations/dev-1/", route{scope: "0ne00ABC", regID: "dev-1", kind: "status"}, true},
		{"/registrations/dev-1", route{}, false},
		{"/enrollments/dev-1/register", route{}, false},
		{"/0ne00ABC/registrations/dev-1/unknown", route{}, false},
		{"/0ne00ABC/registrations/%zz/register", route{}, false},
		{"/0ne00ABC/registrations//register", route{}, false},
	}
	for _, tc := range tests {
		got, ok := parsePath(tc.path)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parsePath(%q) = %+v, %v; want %+v, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

func TestHandler(t *testing.T) {
	assigned := provision.Result{Operation: &dps.RegistrationOperationStatus{
		OperationID: "op-1", Status: dps.StatusAssigned,
		RegistrationState: &dps.DeviceRegistrationState{RegistrationID: "dev", Status: dps.StatusAssigned, AssignedHub: "hub", DeviceID: "dev"},
	}}
	assigning := provision.Result{RetryAfter: 1500 * time.Millisecond, Operation: &dps.RegistrationOperationStatus{
		OperationID: "op-1", Status: dps.StatusAssigning,
		RegistrationState: &dps.DeviceRegistrationState{RegistrationID: "dev", Status: dps.StatusAssigning},
	}}
	readyZero := assigning
	readyZero.RetryAfter = 0

	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		result     provision.Result
		err        error
		wantStatus int
		wantRetry  string // Retry-After header, "" for none
		wantCode   int    // errorCode in the body, 0 for none
		wantPaylod string
	}{
		{"register final", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{"registrationId":"dev","payload":{"a":1}}`, assigned, nil, 202, "", 0, `{"a":1}`},
		{"register assigning", "PUT", "/sc/registrations/dev/register?api-version=2021-10-01", `{"registrationId":"dev"}`, assigning, nil, 202, "2", 0, ""},
		{"register assigning, ready", "PUT", "/sc/registrations/dev/register?api-version=2021-10-01", ``, readyZero, nil, 202, "0", 0, ""},
		{"register without body (C#)", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", ``, assigned, nil, 202, "", 0, ""},
		{"register payload null (Python)", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{"payload": null, "registrationId": "dev"}`, assigned, nil, 202, "", 0, "null"},
		{"poll assigning", "GET", "/sc/registrations/dev/operations/op-1?api-version=2019-03-31", `{}`, assigning, nil, 202, "2", 0, ""},
		{"poll done", "GET", "/sc/registrations/dev/operations/op-1?api-version=2019-03-31", ``, assigned, nil, 200, "", 0, ""},
		{"status lookup", "POST", "/sc/registrations/dev?api-version=2019-03-31", `{"registrationId":"dev"}`, assigned, nil, 200, "", 0, ""},
		{"unauthorized", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{}`, provision.Result{}, dps.Errorf(dps.CodeUnauthorized, "Unauthorized."), 401, "", dps.CodeUnauthorized, ""},
		{"throttled", "GET", "/sc/registrations/dev/operations/op-1?api-version=2019-03-31", ``, provision.Result{}, &dps.Error{ErrorCode: dps.CodeThrottled, Message: "slow", RetryAfter: 2 * time.Second}, 429, "2", dps.CodeThrottled, ""},
		{"no api-version", "PUT", "/sc/registrations/dev/register", `{}`, assigned, nil, 400, "", dps.CodeBadRequest, ""},
		{"wrong method", "POST", "/sc/registrations/dev/register?api-version=2019-03-31", `{}`, assigned, nil, 405, "", dps.CodeMethodNotAllowed, ""},
		{"body id differs", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{"registrationId":"other"}`, assigned, nil, 400, "", dps.CodeInvalidArgument, ""},
		{"body not JSON", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{"registrationId":`, assigned, nil, 400, "", dps.CodeBadRequest, ""},
		{"body too large", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{"payload":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, assigned, nil, 413, "", dps.CodeRequestEntityTooLarge, ""},
		{"internal error hides cause", "PUT", "/sc/registrations/dev/register?api-version=2019-03-31", `{}`, provision.Result{}, io.ErrUnexpectedEOF, 500, "", dps.CodeInternal, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fe := &fakeEngine{result: tc.result, err: tc.err}
			srv := httptest.NewTLSServer(New(fe, Options{}))
			defer srv.Close()
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "SharedAccessSignature sr=x&sig=y&se=1")
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.wantRetry {
				t.Errorf("Retry-After %q, want %q", got, tc.wantRetry)
			}
			var e dps.Error
			json.Unmarshal(body, &e)
			if e.ErrorCode != tc.wantCode {
				t.Errorf("errorCode %d, want %d: %s", e.ErrorCode, tc.wantCode, body)
			}
			if tc.wantCode == dps.CodeInternal && strings.Contains(string(body), "EOF") {
				t.Errorf("internal error leaked its cause: %s", body)
			}
			if tc.wantCode == 0 && tc.wantStatus < 300 {
				if fe.got.RegistrationID != "dev" || fe.got.IDScope != "sc" || fe.got.Transport != "https" || fe.got.SASToken == "" {
					t.Errorf("decoded request %+v", fe.got)
				}
				if tc.method == "GET" && fe.opID != "op-1" {
					t.Errorf("operation id %q", fe.opID)
				}
				if want := tc.wantPaylod; want != "" && want != "null" && string(fe.got.Payload) != want {
					t.Errorf("payload %s, want %s", fe.got.Payload, want)
				}
			}
		})
	}
}

func FuzzDecodeRegistration(f *testing.F) {
	for _, s := range []string{``, ` `, `null`, `{}`, `{"registrationId":"d","payload":{"a":[1,2,{"b":null}]}}`,
		`{"payload": null, "registrationId": "py"}`, `{"registrationId":"d","tpm":{"endorsementKey":"AToA"}}`, `[1]`, `{"payload":`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var reg dps.DeviceRegistration
		if err := decodeRegistration(body, &reg); err != nil {
			if de := dps.AsError(err); de.Status() != 400 {
				t.Fatalf("decode error is not a 400: %v", err)
			}
			return
		}
		if len(reg.Payload) > 0 && !json.Valid(reg.Payload) {
			t.Fatalf("accepted an invalid payload %q", reg.Payload)
		}
	})
}
