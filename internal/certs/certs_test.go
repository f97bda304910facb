package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func code(err error) int {
	var de *dps.Error
	if errors.As(err, &de) {
		return de.ErrorCode
	}
	return 0
}

func must(t *testing.T) func(*Issued, error) *Issued {
	return func(i *Issued, err error) *Issued {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
}

func TestPutValidation(t *testing.T) {
	ctx := context.Background()
	m := must(t)
	root := m(NewRoot("Root", IssueOptions{}))
	leaf := m(root.Device("dev-1", IssueOptions{}))
	expired := m(NewRoot("Old Root", IssueOptions{NotBefore: time.Now().Add(-72 * time.Hour), Validity: time.Hour}))
	tests := []struct {
		name     string
		certName string
		cert     string
		want     int
	}{
		{"PEM", "root-pem", string(root.CertPEM()), 0},
		{"base64 DER", "root-der", base64.StdEncoding.EncodeToString(root.Cert.Raw), 0},
		{"base64 of PEM", "root-b64pem", base64.StdEncoding.EncodeToString(root.CertPEM()), 0},
		{"not a CA", "leaf", string(leaf.CertPEM()), dps.CodeInvalidArgument},
		{"expired", "old", string(expired.CertPEM()), dps.CodeInvalidArgument},
		{"garbage", "junk", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----", dps.CodeInvalidArgument},
		{"empty", "empty", "", dps.CodeInvalidArgument},
		{"bad name", "a/b", string(root.CertPEM()), dps.CodeInvalidArgument},
	}
	reg := New(newStore(t), nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := reg.Put(ctx, tc.certName, tc.cert, false, "")
			if code(err) != tc.want || (tc.want == 0 && err != nil) {
				t.Fatalf("Put: %v, want code %d", err, tc.want)
			}
			if err == nil && (c.Properties.IsVerified || c.Properties.Subject != "CN=Root" || c.ETag == "") {
				t.Errorf("Put answered %+v", c)
			}
		})
	}
	if _, err := reg.Put(ctx, "root-pem", string(root.CertPEM()), false, ""); code(err) != dps.CodeConflict {
		t.Errorf("second create: %v, want 409", err)
	}
}

func TestProofOfPossession(t *testing.T) {
	ctx := context.Background()
	m := must(t)
	root := m(NewRoot("Root", IssueOptions{}))
	other := m(NewRoot("Other", IssueOptions{}))
	reg := New(newStore(t), nil)
	if _, err := reg.Put(ctx, "ca", string(root.CertPEM()), false, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Verified(ctx, "ca"); err == nil {
		t.Fatal("an unverified certificate vouches")
	}
	if _, err := reg.Verify(ctx, "ca", "", string(m(root.Verification("X", IssueOptions{})).CertPEM())); code(err) != dps.CodeBadRequest {
		t.Fatalf("verify without a code: %v", err)
	}
	gen, err := reg.GenerateVerificationCode(ctx, "ca", "")
	if err != nil {
		t.Fatal(err)
	}
	vc := gen.Properties.VerificationCode
	if len(vc) != 48 {
		t.Fatalf("verification code %q", vc)
	}
	bad := []struct {
		name  string
		proof *Issued
		etag  string
		want  int
	}{
		{"wrong CN", m(root.Verification("not-the-code", IssueOptions{})), "", dps.CodeBadRequest},
		{"signed by another CA", m(other.Verification(vc, IssueOptions{})), "", dps.CodeBadRequest},
		{"expired proof", m(root.Verification(vc, IssueOptions{NotBefore: time.Now().Add(-3 * time.Hour), Validity: time.Hour})), "", dps.CodeBadRequest},
		{"stale etag", m(root.Verification(vc, IssueOptions{})), `"nope"`, dps.CodePreconditionFailed},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := reg.Verify(ctx, "ca", tc.etag, string(tc.proof.CertPEM())); code(err) != tc.want {
				t.Fatalf("Verify: %v, want %d", err, tc.want)
			}
		})
	}
	c, err := reg.Verify(ctx, "ca", gen.ETag, string(m(root.Verification(vc, IssueOptions{})).CertPEM()))
	if err != nil || !c.Properties.IsVerified {
		t.Fatalf("Verify: %+v, %v", c, err)
	}
	if got, err := reg.Verified(ctx, "ca"); err != nil || !got.Equal(root.Cert) {
		t.Fatalf("Verified: %v", err)
	}
	// The same certificate uploaded again stays verified; another one
	// must be verified anew.
	c, err = reg.Put(ctx, "ca", string(root.CertPEM()), false, "*")
	if err != nil || !c.Properties.IsVerified {
		t.Fatalf("replace with the same certificate: %+v %v", c, err)
	}
	c, err = reg.Put(ctx, "ca", string(other.CertPEM()), false, c.ETag)
	if err != nil || c.Properties.IsVerified {
		t.Fatalf("replace with another certificate: %+v %v", c, err)
	}
	all, err := reg.VerifiedAll(ctx)
	if err != nil || len(all) != 0 {
		t.Fatalf("VerifiedAll = %v, %v", all, err)
	}
	if err := reg.Delete(ctx, "ca", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Get(ctx, "ca"); !errors.Is(err, ErrNotFound) || code(err) != dps.CodeNotFound {
		t.Fatalf("Get after delete: %v", err)
	}
}

// TestHandler drives the HTTP API over real TLS on a loopback address.
func TestHandler(t *testing.T) {
	m := must(t)
	root := m(NewRoot("Root", IssueOptions{}))
	reg := New(newStore(t), nil)
	l, err := net.Listen("tcp", "127.0.5.1:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.5.1: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/dpsd/certificates", reg.Handler(HandlerOptions{}))
	mux.Handle("/dpsd/certificates/", reg.Handler(HandlerOptions{}))
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = l
	srv.StartTLS()
	defer srv.Close()
	hc := srv.Client()
	tc := hc.Transport.(*http.Transport).TLSClientConfig
	tc.MinVersion = tls.VersionTLS12
	// httptest's certificate names example.com and 127.0.0.1, not 127.0.5.1.
	tc.ServerName = "example.com"

	call := func(method, path string, body any, out any) int {
		t.Helper()
		var rd io.Reader = http.NoBody
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if out != nil && len(data) > 0 {
			if err := json.Unmarshal(data, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, data)
			}
		}
		return resp.StatusCode
	}
	steps := []struct {
		method, path string
		body         any
		want         int
	}{
		{http.MethodPut, "/dpsd/certificates/ca-1", Body{Certificate: string(root.CertPEM())}, http.StatusCreated},
		{http.MethodPut, "/dpsd/certificates/ca-1", Body{Certificate: string(root.CertPEM())}, http.StatusConflict},
		{http.MethodGet, "/dpsd/certificates/ca-1", nil, http.StatusOK},
		{http.MethodGet, "/dpsd/certificates/nope", nil, http.StatusNotFound},
		{http.MethodPatch, "/dpsd/certificates/ca-1", nil, http.StatusMethodNotAllowed},
		{http.MethodPost, "/dpsd/certificates/ca-1/verify", Body{Certificate: string(root.CertPEM())}, http.StatusBadRequest},
	}
	for _, s := range steps {
		if got := call(s.method, s.path, s.body, nil); got != s.want {
			t.Errorf("%s %s = %d, want %d", s.method, s.path, got, s.want)
		}
	}
	var gen Certificate
	if got := call(http.MethodPost, "/dpsd/certificates/ca-1/generateVerificationCode", nil, &gen); got != http.StatusOK || gen.Properties.VerificationCode == "" {
		t.Fatalf("generateVerificationCode = %d %+v", got, gen)
	}
	proof := m(root.Verification(gen.Properties.VerificationCode, IssueOptions{}))
	var done Certificate
	if got := call(http.MethodPost, "/dpsd/certificates/ca-1/verify", Body{Certificate: string(proof.CertPEM())}, &done); got != http.StatusOK || !done.Properties.IsVerified {
		t.Fatalf("verify = %d %+v", got, done)
	}
	var list List
	if got := call(http.MethodGet, "/dpsd/certificates", nil, &list); got != http.StatusOK || len(list.Value) != 1 || !list.Value[0].Properties.IsVerified {
		t.Fatalf("list = %d %+v", got, list)
	}
	if got := call(http.MethodDelete, "/dpsd/certificates/ca-1", nil, nil); got != http.StatusNoContent {
		t.Fatalf("delete = %d", got)
	}
}

func TestPKIFiles(t *testing.T) {
	m := must(t)
	dir := t.TempDir()
	root := m(NewRoot("Root", IssueOptions{}))
	if err := root.WriteFiles(FilesFor(filepath.Join(dir, "root"))); err != nil {
		t.Fatal(err)
	}
	loadedRoot, err := Load(FilesFor(filepath.Join(dir, "root")))
	if err != nil {
		t.Fatal(err)
	}
	inter := m(loadedRoot.Intermediate("Intermediate", IssueOptions{}))
	if err := inter.WriteFiles(FilesFor(filepath.Join(dir, "inter"))); err != nil {
		t.Fatal(err)
	}
	loadedInter, err := Load(FilesFor(filepath.Join(dir, "inter")))
	if err != nil {
		t.Fatal(err)
	}
	dev := m(loadedInter.Device("dev-1", IssueOptions{}))
	chain, err := ParseChain(dev.ChainPEM())
	if err != nil || len(chain) != 3 {
		t.Fatalf("full chain has %d certificates (%v), want 3", len(chain), err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	inters := x509.NewCertPool()
	inters.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("device chain does not verify: %v", err)
	}
	if chain[0].Subject.CommonName != "dev-1" || chain[0].IsCA {
		t.Errorf("device certificate: %v, CA %v", chain[0].Subject, chain[0].IsCA)
	}
	if _, err := dev.Intermediate("x", IssueOptions{}); err == nil {
		t.Error("a device certificate signed a certificate")
	}
}

// downStore is a store whose database cannot be reached.
type downStore struct{ store.Store }

func (downStore) List(context.Context, store.Kind, store.ListOptions) ([]store.Record, bool, error) {
	return nil, false, store.ErrUnavailable
}

func TestHandlerStoreUnavailable(t *testing.T) {
	h := New(downStore{newStore(t)}, nil).Handler(HandlerOptions{})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/dpsd/certificates", nil))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("list with the store down: %d, Retry-After %q; want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
}
