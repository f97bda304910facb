package service

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
)

const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// seen is one request as the test server received it.
type seen struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   []byte
	ContentLength          int64
}

// answer is what the test server replies.
type answer struct {
	status int
	body   string
	header map[string]string
}

// fakeService is an httptest TLS server that records requests and replies
// with a fixed answer.
type fakeService struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []seen
	ans  answer
}

func newFakeService(t *testing.T) *fakeService {
	t.Helper()
	f := &fakeService{ans: answer{status: 200, body: "{}"}}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{
			Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Header: r.Header.Clone(), Body: body, ContentLength: r.ContentLength,
		})
		a := f.ans
		f.mu.Unlock()
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		if a.body != "" {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
		}
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeService) last(t *testing.T) seen {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("no request reached the server")
	}
	return f.reqs[len(f.reqs)-1]
}

func (f *fakeService) connStr() string {
	return "HostName=" + f.srv.Listener.Addr().String() + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + testKey
}

func (f *fakeService) client(t *testing.T, opts ...Option) *Client {
	t.Helper()
	c, err := New(f.connStr(), append([]Option{WithHTTPClient(f.srv.Client())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRequests(t *testing.T) {
	ctx := context.Background()
	enr := &dps.IndividualEnrollment{
		RegistrationID: "dev:1",
		Attestation:    &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
	}
	grp := &dps.EnrollmentGroup{
		EnrollmentGroupID: "grp-1",
		ETag:              `"g-etag"`,
		Attestation:       &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
	}
	tests := []struct {
		name     string
		call     func(c *Client) error
		ans      answer
		method   string
		path     string
		ifMatch  string // "" means the header must be absent
		body     string // expected JSON body; "" means no body
		headers  map[string]string
		emptyLen bool // Content-Length: 0 on a body-less POST
	}{
		{
			name: "create enrollment",
			call: func(c *Client) error {
				got, err := c.CreateEnrollment(ctx, enr)
				if err == nil && got.RegistrationID != "dev:1" {
					t.Errorf("CreateEnrollment returned %+v", got)
				}
				return err
			},
			ans:    answer{status: 200, body: `{"registrationId":"dev:1","attestation":{"type":"symmetricKey"}}`},
			method: "PUT", path: "/enrollments/dev:1",
			body: `{"registrationId":"dev:1","attestation":{"type":"symmetricKey"}}`,
		},
		{
			name: "update enrollment without etag sends If-Match *",
			call: func(c *Client) error {
				_, err := c.UpdateEnrollment(ctx, enr)
				return err
			},
			method: "PUT", path: "/enrollments/dev:1", ifMatch: "*",
			body: `{"registrationId":"dev:1","attestation":{"type":"symmetricKey"}}`,
		},
		{
			name: "update group with etag",
			call: func(c *Client) error {
				_, err := c.UpdateEnrollmentGroup(ctx, grp)
				return err
			},
			method: "PUT", path: "/enrollmentGroups/grp-1", ifMatch: `"g-etag"`,
			body: `{"enrollmentGroupId":"grp-1","attestation":{"type":"symmetricKey"},"etag":"\"g-etag\""}`,
		},
		{
			name: "get enrollment escapes the id",
			call: func(c *Client) error {
				_, err := c.GetEnrollment(ctx, "a b/c")
				return err
			},
			method: "GET", path: "/enrollments/a%20b%2Fc",
		},
		{
			name: "get group",
			call: func(c *Client) error {
				_, err := c.GetEnrollmentGroup(ctx, "grp-1")
				return err
			},
			method: "GET", path: "/enrollmentGroups/grp-1",
		},
		{
			name:   "delete enrollment pinned",
			call:   func(c *Client) error { return c.DeleteEnrollment(ctx, "dev-1", `"e1"`) },
			ans:    answer{status: 204},
			method: "DELETE", path: "/enrollments/dev-1", ifMatch: `"e1"`,
		},
		{
			name:   "delete group unpinned",
			call:   func(c *Client) error { return c.DeleteEnrollmentGroup(ctx, "grp-1", "") },
			ans:    answer{status: 204},
			method: "DELETE", path: "/enrollmentGroups/grp-1", ifMatch: "*",
		},
		{
			name: "enrollment attestation",
			call: func(c *Client) error {
				a, err := c.GetEnrollmentAttestation(ctx, "dev-1")
				if err == nil && a.SymmetricKey.PrimaryKey != "pk" {
					t.Errorf("attestation = %+v", a)
				}
				return err
			},
			ans:    answer{status: 200, body: `{"type":"symmetricKey","symmetricKey":{"primaryKey":"pk","secondaryKey":"sk"}}`},
			method: "POST", path: "/enrollments/dev-1/attestationmechanism", emptyLen: true,
		},
		{
			name: "group attestation",
			call: func(c *Client) error {
				_, err := c.GetEnrollmentGroupAttestation(ctx, "grp-1")
				return err
			},
			ans:    answer{status: 200, body: `{"type":"symmetricKey"}`},
			method: "POST", path: "/enrollmentGroups/grp-1/attestationmechanism", emptyLen: true,
		},
		{
			name: "query enrollments with paging",
			call: func(c *Client) error {
				p, err := c.QueryEnrollments(ctx, QueryOptions{PageSize: 2, Continuation: "tok1"})
				if err == nil && (len(p.Items) != 2 || p.Continuation != "tok2") {
					t.Errorf("page = %+v", p)
				}
				return err
			},
			ans: answer{status: 200, body: `[{"registrationId":"a"},{"registrationId":"b"}]`,
				header: map[string]string{dps.HeaderContinuation: "tok2", dps.HeaderItemType: "Enrollment"}},
			method: "POST", path: "/enrollments/query", body: `{"query":"*"}`,
			headers: map[string]string{dps.HeaderMaxItemCount: "2", dps.HeaderContinuation: "tok1"},
		},
		{
			name: "query groups last page",
			call: func(c *Client) error {
				p, err := c.QueryEnrollmentGroups(ctx, QueryOptions{Query: "SELECT *"})
				if err == nil && (len(p.Items) != 0 || p.Items == nil || p.Continuation != "") {
					t.Errorf("page = %+v", p)
				}
				return err
			},
			ans:    answer{status: 200, body: `[]`},
			method: "POST", path: "/enrollmentGroups/query", body: `{"query":"SELECT *"}`,
			headers: map[string]string{dps.HeaderMaxItemCount: "", dps.HeaderContinuation: ""},
		},
		{
			name: "query registrations",
			call: func(c *Client) error {
				p, err := c.QueryRegistrations(ctx, "grp-1", QueryOptions{})
				if err == nil && (len(p.Items) != 1 || p.Items[0].Status != "assigned") {
					t.Errorf("page = %+v", p)
				}
				return err
			},
			ans:    answer{status: 200, body: `[{"registrationId":"d1","status":"assigned"}]`},
			method: "POST", path: "/registrations/grp-1/query", body: `{"query":"*"}`,
		},
		{
			name: "bulk enrollments",
			call: func(c *Client) error {
				r, err := c.BulkEnrollments(ctx, &dps.BulkEnrollmentOperation{
					Mode:        dps.BulkDelete,
					Enrollments: []dps.IndividualEnrollment{{RegistrationID: "x"}},
				})
				if err == nil && (r.IsSuccessful || len(r.Errors) != 1 || r.Errors[0].ErrorCode != 404201) {
					t.Errorf("result = %+v", r)
				}
				return err
			},
			ans:    answer{status: 200, body: `{"isSuccessful":false,"errors":[{"registrationId":"x","errorCode":404201,"errorStatus":"not found"}]}`},
			method: "POST", path: "/enrollments",
			body: `{"mode":"delete","enrollments":[{"registrationId":"x","attestation":null}]}`,
		},
		{
			name: "bulk groups",
			call: func(c *Client) error {
				_, err := c.BulkEnrollmentGroups(ctx, &dps.BulkEnrollmentGroupOperation{
					Mode: dps.BulkCreate, EnrollmentGroups: []dps.EnrollmentGroup{*grp},
				})
				return err
			},
			ans:    answer{status: 200, body: `{"isSuccessful":true,"errors":[]}`},
			method: "POST", path: "/enrollmentGroups",
			body: `{"mode":"create","enrollmentGroups":[{"enrollmentGroupId":"grp-1","attestation":{"type":"symmetricKey"},"etag":"\"g-etag\""}]}`,
		},
		{
			name: "get registration",
			call: func(c *Client) error {
				r, err := c.GetRegistration(ctx, "d1")
				if err == nil && r.AssignedHub != "hub-1" {
					t.Errorf("registration = %+v", r)
				}
				return err
			},
			ans:    answer{status: 200, body: `{"registrationId":"d1","status":"assigned","assignedHub":"hub-1"}`},
			method: "GET", path: "/registrations/d1",
		},
		{
			name:   "delete registration",
			call:   func(c *Client) error { return c.DeleteRegistration(ctx, "d1", `"r1"`) },
			ans:    answer{status: 204},
			method: "DELETE", path: "/registrations/d1", ifMatch: `"r1"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeService(t)
			if tt.ans.status != 0 {
				f.ans = tt.ans
			}
			c := f.client(t, WithUserAgent("test-agent/1"))
			if err := tt.call(c); err != nil {
				t.Fatalf("call: %v", err)
			}
			r := f.last(t)
			if r.Method != tt.method || r.Path != tt.path {
				t.Errorf("request = %s %s, want %s %s", r.Method, r.Path, tt.method, tt.path)
			}
			if r.RawQuery != "api-version=2021-10-01" {
				t.Errorf("query = %q", r.RawQuery)
			}
			if got, ok := r.Header["If-Match"]; tt.ifMatch == "" && ok {
				t.Errorf("If-Match = %q, want none", got)
			} else if tt.ifMatch != "" && r.Header.Get("If-Match") != tt.ifMatch {
				t.Errorf("If-Match = %q, want %q", r.Header.Get("If-Match"), tt.ifMatch)
			}
			if ua := r.Header.Get("User-Agent"); ua != "test-agent/1" {
				t.Errorf("User-Agent = %q", ua)
			}
			for k, want := range tt.headers {
				if got := r.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tt.body == "" {
				if len(r.Body) != 0 {
					t.Errorf("body = %s, want none", r.Body)
				}
				if ct := r.Header.Get("Content-Type"); ct != "" {
					t.Errorf("Content-Type = %q on a body-less request", ct)
				}
			} else {
				if string(r.Body) != tt.body {
					t.Errorf("body = %s\nwant   %s", r.Body, tt.body)
				}
				if ct := r.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
					t.Errorf("Content-Type = %q", ct)
				}
			}
			if tt.emptyLen && r.ContentLength != 0 {
				t.Errorf("Content-Length = %d, want 0", r.ContentLength)
			}
			checkToken(t, r.Header.Get("Authorization"), "127.0.0.1")
		})
	}
}

// checkToken verifies a request's SAS token: sr is the host without a port,
// skn the policy, valid for about an hour, signed with the policy key.
func checkToken(t *testing.T, auth, wantSr string) {
	t.Helper()
	tok, err := sas.Parse(auth)
	if err != nil {
		t.Fatalf("Authorization %q: %v", auth, err)
	}
	if tok.Resource != wantSr {
		t.Errorf("sr = %q, want %q", tok.Resource, wantSr)
	}
	if tok.KeyName != "provisioningserviceowner" {
		t.Errorf("skn = %q", tok.KeyName)
	}
	key, _ := base64.StdEncoding.DecodeString(testKey)
	if !tok.Verify(key) {
		t.Error("token signature does not verify with the policy key")
	}
	now := time.Now()
	if tok.ExpiredAt(now.Add(50*time.Minute)) || !tok.ExpiredAt(now.Add(2*time.Hour)) {
		t.Errorf("se = %d, want about now + 1 h", tok.Expiry)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name     string
		ans      answer
		wantCode int
		wantMsg  string
	}{
		{
			name:     "dps body",
			ans:      answer{status: 404, body: `{"errorCode":404201,"trackingId":"t-1","message":"Enrollment not found.","timestampUtc":"2024-01-01T00:00:00.0000000Z"}`},
			wantCode: 404201, wantMsg: "Enrollment not found.",
		},
		{
			name:     "code as string",
			ans:      answer{status: 412, body: `{"errorCode":"412001","message":"etag mismatch"}`},
			wantCode: 412001, wantMsg: "etag mismatch",
		},
		{
			name:     "gateway body",
			ans:      answer{status: 400, body: `{"Message":"ErrorCode:ArgumentInvalid;Unknown api version","ExceptionMessage":"Tracking ID:x"}`},
			wantCode: 400000, wantMsg: "ErrorCode:ArgumentInvalid;Unknown api version",
		},
		{
			name:     "empty body with header",
			ans:      answer{status: 409, header: map[string]string{dps.HeaderErrorCode: "409001"}},
			wantCode: 409001, wantMsg: "Conflict",
		},
		{
			name:     "plain text body",
			ans:      answer{status: 503, body: "overloaded"},
			wantCode: 503000, wantMsg: "overloaded",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeService(t)
			f.ans = tt.ans
			_, err := f.client(t).GetEnrollment(context.Background(), "dev-1")
			var de *dps.Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T) is not a *dps.Error", err, err)
			}
			if de.ErrorCode != tt.wantCode || de.Message != tt.wantMsg {
				t.Errorf("error = %d %q, want %d %q", de.ErrorCode, de.Message, tt.wantCode, tt.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), `get enrollment "dev-1": `) {
				t.Errorf("error %q does not name the operation", err)
			}
		})
	}
}

// TestTransportOptions connects through the client's own transport: trusting
// the server's certificate from a CA file, and dialing an address override
// while verifying TLS and signing for a host name that does not resolve.
func TestTransportOptions(t *testing.T) {
	f := newFakeService(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := f.srv.Listener.Addr().String()
	tests := []struct {
		name    string
		host    string
		opts    []Option
		wantSr  string
		wantErr bool
	}{
		{name: "ca file, host with port", host: addr, opts: []Option{WithCAFile(caFile)}, wantSr: "127.0.0.1"},
		// example.com is a SAN of the httptest certificate; it is never resolved.
		{name: "dial override", host: "example.com", opts: []Option{WithCAFile(caFile), WithDialAddr(addr)}, wantSr: "example.com"},
		{name: "dial override keeps port in Host", host: "example.com:8443", opts: []Option{WithCAFile(caFile), WithDialAddr(addr)}, wantSr: "example.com"},
		{name: "untrusted", host: addr, opts: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := "HostName=" + tt.host + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + testKey
			c, err := New(cs, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.GetRegistration(context.Background(), "d1")
			if tt.wantErr {
				if err == nil {
					t.Fatal("want a TLS error")
				}
				var de *dps.Error
				if errors.As(err, &de) {
					t.Fatalf("transport error reported as service error %v", de)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := f.last(t)
			checkToken(t, r.Header.Get("Authorization"), tt.wantSr)
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cs      string
		opts    []Option
		wantErr string
	}{
		{name: "ok", cs: "HostName=dps.example;SharedAccessKeyName=p;SharedAccessKey=" + testKey},
		{name: "device string", cs: "HostName=dps.example;DeviceId=d;SharedAccessKey=" + testKey, wantErr: "not a service connection string"},
		{name: "no policy", cs: "HostName=dps.example;SharedAccessKey=" + testKey, wantErr: "not a service connection string"},
		{name: "bad key", cs: "HostName=dps.example;SharedAccessKeyName=p;SharedAccessKey=???", wantErr: "base64"},
		{name: "url host", cs: "HostName=https://dps.example/;SharedAccessKeyName=p;SharedAccessKey=" + testKey, wantErr: "not a host name"},
		{name: "conflicting options", cs: "HostName=dps.example;SharedAccessKeyName=p;SharedAccessKey=" + testKey,
			opts: []Option{WithHTTPClient(http.DefaultClient), WithDialAddr("127.0.0.1:1")}, wantErr: "cannot be combined"},
		{name: "missing CA file", cs: "HostName=dps.example;SharedAccessKeyName=p;SharedAccessKey=" + testKey,
			opts: []Option{WithCAFile(filepath.Join(t.TempDir(), "nope.pem"))}, wantErr: "read CA file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cs, tt.opts...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestRoundTripShapes checks that what the service answers decodes into the
// shared wire types unchanged (timestamps, raw twin JSON, quoted etags).
func TestRoundTripShapes(t *testing.T) {
	f := newFakeService(t)
	f.ans = answer{status: 200, body: `{"enrollmentGroupId":"g","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"p","secondaryKey":"s"}},` +
		`"etag":"\"0a00\"","createdDateTimeUtc":"2022-07-05T21:27:16.8123235Z","initialTwin":{"tags":{"a":1},"properties":{"desired":{"b":"c"}}},` +
		`"allocationPolicy":"custom","iotHubs":["h1","h2"],"customAllocationDefinition":{"webhookUrl":"https://w/x","apiVersion":"2021-10-01"}}`}
	g, err := f.client(t).CreateEnrollmentGroup(context.Background(), &dps.EnrollmentGroup{EnrollmentGroupID: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if g.ETag != `"0a00"` || g.CreatedDateTimeUTC == nil || g.CreatedDateTimeUTC.Nanosecond() != 812323500 {
		t.Errorf("etag/created = %q %v", g.ETag, g.CreatedDateTimeUTC)
	}
	var tags map[string]int
	if err := json.Unmarshal(g.InitialTwin.Tags, &tags); err != nil || tags["a"] != 1 {
		t.Errorf("tags = %s", g.InitialTwin.Tags)
	}
	if !reflect.DeepEqual(g.IoTHubs, []string{"h1", "h2"}) || g.Attestation.SymmetricKey.PrimaryKey != "p" {
		t.Errorf("group = %+v", g)
	}
	// The request carried no If-Match: create must not overwrite.
	if _, ok := f.last(t).Header["If-Match"]; ok {
		t.Error("create sent If-Match")
	}
}
