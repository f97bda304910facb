package serviceapi

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// Policy keys of the test instance. ownerKey is the capture's key (base64 of
// "0123456789abcdef0123456789abcdef").
const (
	ownerKey     = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	ownerKey2    = "c2Vjb25kYXJ5LWtleS1zZWNvbmRhcnkta2V5LTEyMzQ="
	readerKey    = "cmVhZGVyLWtleS1yZWFkZXIta2V5LXJlYWRlci1rZXk="
	testHostName = "mydps.azure-devices-provisioning.net"
)

// now is the fixed clock of the tests; tokens expire relative to it.
var now = time.Date(2026, 11, 22, 19, 0, 0, 0, time.UTC)

// env is a service API served over real TLS on 127.0.0.1.
type env struct {
	srv *httptest.Server
	st  store.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	in := &instance.Instance{IDScope: "0ne00000001", Policies: []instance.Policy{
		{KeyName: instance.OwnerPolicy, PrimaryKey: ownerKey, SecondaryKey: ownerKey2, Rights: instance.AllRights},
		{KeyName: "enrollmentread", PrimaryKey: readerKey, SecondaryKey: readerKey, Rights: []instance.Right{instance.RightEnrollmentRead}},
	}}
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := New(st, in, Options{
		Logger:    logger,
		HostNames: []string{"127.0.0.1", "localhost:8443", "MyDPS.azure-devices-provisioning.net"},
		Now:       func() time.Time { return now },
	})
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return &env{srv: srv, st: st}
}

// ownerToken signs for the real host name the way the npm client does.
func ownerToken(t *testing.T) string {
	t.Helper()
	return token(t, testHostName, instance.OwnerPolicy, ownerKey, now.Add(time.Hour))
}

func token(t *testing.T, sr, policy, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.New(sr, policy, key, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// call is one HTTP request; the zero value of each member means "the usual".
type call struct {
	method, path string
	body         string
	auth         string // "" signs as the owner; "-" sends none
	headers      map[string]string
	noVersion    bool
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(t *testing.T, c call) response {
	t.Helper()
	u := e.srv.URL + c.path
	if !c.noVersion {
		if strings.Contains(c.path, "?") {
			u += "&api-version=2021-10-01"
		} else {
			u += "?api-version=2021-10-01"
		}
	}
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(t.Context(), c.method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.method == http.MethodPost && c.body == "" {
		// What the npm client sends on attestation lookups: Content-Length: 0
		// and no Content-Type.
		req.Body, req.ContentLength = http.NoBody, 0
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	switch c.auth {
	case "":
		req.Header.Set("Authorization", ownerToken(t))
	case "-":
	default:
		req.Header.Set("Authorization", c.auth)
	}
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// errorCode checks that r is a well-formed error response and returns its code.
func (r response) errorCode(t *testing.T) int {
	t.Helper()
	var e dps.Error
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	if e.ErrorCode/1000 != r.status {
		t.Errorf("errorCode %d does not match status %d", e.ErrorCode, r.status)
	}
	if e.TrackingID == "" || e.Message == "" || !e.TimestampUTC.Equal(now) {
		t.Errorf("error body lacks trackingId, message or timestampUtc: %s", r.body)
	}
	if got := r.header.Get("x-ms-error-code"); got != itoa(e.ErrorCode) {
		t.Errorf("x-ms-error-code = %q, want %d", got, e.ErrorCode)
	}
	if ct := r.header.Get("Content-Type"); ct != httperr.ContentTypeJSON {
		t.Errorf("error Content-Type = %q", ct)
	}
	return e.ErrorCode
}

func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != httperr.ContentTypeJSON {
		t.Errorf("Content-Type = %q, want %q", ct, httperr.ContentTypeJSON)
	}
	if err := json.NewDecoder(bytes.NewReader(r.body)).Decode(v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

const symBody = `{"registrationId":"%s","attestation":{"type":"symmetricKey"}}`

// storeCondNone writes unconditionally.
var storeCondNone = store.Condition{}

var jsonMarshal = json.Marshal

// newPEMCert returns a self-signed certificate whose subject is just CN=cn.
func newPEMCert(t *testing.T, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
