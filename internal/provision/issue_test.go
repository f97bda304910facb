package provision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/issuer"
)

// oneCA is an Authorities with a single CA, "local".
type oneCA struct{ ca *issuer.Authority }

func (o oneCA) Authority(_ context.Context, name string) (*issuer.Authority, error) {
	if name != issuer.LocalName {
		return nil, dps.Errorf(dps.CodeCertificateIssuanceNotConfigured, "no CA %q", name)
	}
	return o.ca, nil
}

func testCA(t *testing.T) *issuer.Authority {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour * 365),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &issuer.Authority{Name: issuer.LocalName, Cert: c, Key: key}
}

func csrFor(t *testing.T, cn string) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

func TestCSRIssuance(t *testing.T) {
	ctx := context.Background()
	ca := testCA(t)
	f := newFixture(t, Options{Authorities: oneCA{ca}, Issuance: issuer.Policy{Validity: 72 * time.Hour}})
	key := f.individual("dev-csr", "hub1", "")
	plainKey := f.individual("dev-plain", "hub1", "")
	e, err := enroll.GetEnrollment(ctx, f.st, "dev-csr")
	if err != nil {
		t.Fatal(err)
	}
	e.ClientCertIssuancePolicy = json.RawMessage(`{"certificateAuthorityName":"local"}`)
	if _, err := enroll.PutEnrollment(ctx, f.st, "dev-csr", e, "*"); err != nil {
		t.Fatal(err)
	}

	// Refusals change nothing and are answered at once.
	for _, tc := range []struct {
		regID, key, csr string
		code            int
	}{
		{"dev-csr", key, csrFor(t, "someone-else"), dps.CodeCSRSubjectMismatch},
		{"dev-csr", key, "bm90IGEgY3Ny", dps.CodeInvalidCSR},
		{"dev-plain", plainKey, csrFor(t, "dev-plain"), dps.CodeCertificateIssuanceNotConfigured},
	} {
		req := f.request(tc.regID, tc.key)
		req.CSR = tc.csr
		if _, err := f.eng.Register(ctx, req); code(err) != tc.code {
			t.Fatalf("%s: got %v, want %d", tc.regID, err, tc.code)
		}
	}
	if f.reg.count() != 0 {
		t.Fatal("a refused csr touched a hub")
	}

	req := f.request("dev-csr", key)
	req.CSR = csrFor(t, "dev-csr")
	res, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	st := res.Operation.RegistrationState
	if res.Operation.Status != dps.StatusAssigned || len(st.IssuedCertificateChain) != 2 {
		t.Fatalf("answer %+v", res.Operation)
	}
	der, _ := base64.StdEncoding.DecodeString(st.IssuedCertificateChain[0])
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil || leaf.Subject.CommonName != "dev-csr" {
		t.Fatalf("leaf %s not issued by the CA: %v", leaf.Subject, err)
	}
	first := st.IssuedCertificate
	if first == nil || first.SerialNumber == "" || first.CertificateAuthorityName != "local" {
		t.Fatalf("issued certificate not recorded: %+v", first)
	}
	// The hub authenticates the device by the CA, no longer by its keys.
	dev := f.reg.calls[len(f.reg.calls)-1]
	if dev.PrimaryKey != "" || dev.X509 == nil || len(dev.X509.CACertificates) != 1 {
		t.Fatalf("hub write %+v", dev)
	}
	// The status lookup and the stored record carry the info, not the chain.
	rec, err := enroll.GetRegistration(ctx, f.st, "dev-csr")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State.IssuedCertificate == nil || len(rec.State.IssuedCertificateChain) != 0 {
		t.Fatalf("record state %+v", rec.State)
	}
	// A poll of the same operation returns the chain again.
	poll, err := f.eng.OperationStatus(ctx, f.request("dev-csr", key), res.Operation.OperationID)
	if err != nil || len(poll.Operation.RegistrationState.IssuedCertificateChain) != 2 {
		t.Fatalf("poll: %v %+v", err, poll.Operation)
	}

	// Re-registering with a new csr renews; without one the device keeps
	// its certificate (and its hub keeps accepting it) but gets no chain.
	f.now = f.now.Add(time.Second)
	req = f.request("dev-csr", key)
	req.CSR = csrFor(t, "dev-csr")
	res, err = f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Operation.RegistrationState.IssuedCertificate; got == nil || got.SerialNumber == first.SerialNumber {
		t.Fatalf("not renewed: %+v", got)
	}
	res, err = f.eng.Register(ctx, f.request("dev-csr", key))
	if err != nil {
		t.Fatal(err)
	}
	if st := res.Operation.RegistrationState; len(st.IssuedCertificateChain) != 0 || st.IssuedCertificate == nil {
		t.Fatalf("re-registration without csr: %+v", st)
	}
	if dev := f.reg.calls[len(f.reg.calls)-1]; dev.X509 == nil || dev.PrimaryKey != "" {
		t.Fatalf("the hub stopped accepting the issued certificate: %+v", dev)
	}
}
