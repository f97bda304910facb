package enroll

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// newStore opens a real embedded store in a temporary directory.
func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// testCert is a self-signed certificate in the three forms clients send.
type testCert struct {
	cert      *x509.Certificate
	pem       string
	b64DER    string
	b64PEM    string
	subject   string
	serialHex string
}

func newTestCert(t *testing.T, cn string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(0x1A2B3C),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Contoso"}, Country: []string{"US"}},
		NotBefore:             time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2034, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := CertificatePEM(c)
	return testCert{
		cert: c, pem: p,
		b64DER:    base64.StdEncoding.EncodeToString(der),
		b64PEM:    base64.StdEncoding.EncodeToString([]byte(p)),
		subject:   "CN=" + cn + ", O=Contoso, C=US",
		serialHex: "1A2B3C",
	}
}

// errCode returns the dps error code of err, 0 for nil and -1 for an error
// that is not a *dps.Error.
func errCode(err error) int {
	if err == nil {
		return 0
	}
	var de *dps.Error
	if errors.As(err, &de) {
		return de.ErrorCode
	}
	return -1
}

func symEnrollment(id string) *dps.IndividualEnrollment {
	return &dps.IndividualEnrollment{RegistrationID: id, Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}
}

func symGroup(id string) *dps.EnrollmentGroup {
	return &dps.EnrollmentGroup{EnrollmentGroupID: id, Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}
}

// key16 and key64 are valid symmetric keys of the smallest and largest size.
var (
	key16 = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	key64 = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"))
)
