package issuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

func newCSR(t testing.TB, cn string, key crypto.Signer) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

func ecKey(t testing.TB, c elliptic.Curve) crypto.Signer {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB, bits int) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCA(t testing.TB, cn string, parent *Authority) *Authority {
	t.Helper()
	key := ecKey(t, elliptic.P256())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	signer, signKey := tmpl, key
	var chain []*x509.Certificate
	if parent != nil {
		signer, signKey = parent.Cert, parent.Key
		chain = append([]*x509.Certificate{parent.Cert}, parent.Chain...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &Authority{Name: cn, Cert: c, Chain: chain, Key: key}
}

func TestParseRequestRefusals(t *testing.T) {
	good := newCSR(t, "dev-1", ecKey(t, elliptic.P256()))
	der, _ := base64.StdEncoding.DecodeString(good)
	tampered := append([]byte(nil), der...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	pemCSR := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	for _, tc := range []struct {
		name, csr string
		code      int
	}{
		{"ecdsa p256", good, 0},
		{"ecdsa p384", newCSR(t, "dev-1", ecKey(t, elliptic.P384())), 0},
		{"rsa 2048", newCSR(t, "dev-1", rsaKey(t, 2048)), 0},
		{"pem armour", pemCSR, 0},
		{"wrong cn", newCSR(t, "dev-2", ecKey(t, elliptic.P256())), dps.CodeCSRSubjectMismatch},
		{"weak rsa", newCSR(t, "dev-1", rsaKey(t, 1024)), dps.CodeCSRKeyNotAllowed},
		{"p224", newCSR(t, "dev-1", ecKey(t, elliptic.P224())), dps.CodeCSRKeyNotAllowed},
		{"bad signature", base64.StdEncoding.EncodeToString(tampered), dps.CodeInvalidCSR},
		{"not base64", "!!!", dps.CodeInvalidCSR},
		{"not a csr", base64.StdEncoding.EncodeToString([]byte("hello")), dps.CodeInvalidCSR},
		{"empty", " ", dps.CodeInvalidCSR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest(tc.csr, "dev-1", Policy{})
			var de *dps.Error
			switch {
			case tc.code == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.code != 0 && (!errors.As(err, &de) || de.ErrorCode != tc.code):
				t.Fatalf("got %v, want errorCode %d", err, tc.code)
			}
		})
	}
}

func TestIssueChainsToTheAuthority(t *testing.T) {
	root := newCA(t, "root", nil)
	inter := newCA(t, "inter", root)
	key := ecKey(t, elliptic.P256())
	req, err := ParseRequest(newCSR(t, "dev-1", key), "dev-1", Policy{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	iss, err := inter.Issue(req, Policy{Validity: 48 * time.Hour}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(iss.Chain) != 3 {
		t.Fatalf("chain has %d certificates, want leaf, intermediate, root", len(iss.Chain))
	}
	var certs []*x509.Certificate
	for _, b := range iss.Chain {
		der, _ := base64.StdEncoding.DecodeString(b)
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(certs[2])
	inters.AddCert(certs[1])
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
	if certs[0].Subject.CommonName != "dev-1" || !certs[0].PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("issued certificate is not for the csr's subject and key")
	}
	if got := certs[0].NotAfter.Sub(now); got > 48*time.Hour || got < 47*time.Hour {
		t.Fatalf("validity %s, want 48h", got)
	}
	if iss.Info.SerialNumber == "" || len(iss.Info.SHA256Thumbprint) != 64 {
		t.Fatalf("info %+v", iss.Info)
	}
}

func TestRegistryStoresOperatorCAs(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	local := newCA(t, "local root", nil)
	r := NewRegistry(st, local)
	root := newCA(t, "root", nil)
	inter := newCA(t, "inter", root)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(inter.Key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	certs := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Cert.Raw})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Cert.Raw}))

	if _, _, err := r.Put(ctx, "local", certs, keyPEM); err == nil {
		t.Fatal("the local CA's name was taken")
	}
	otherKey, _ := x509.MarshalPKCS8PrivateKey(ecKey(t, elliptic.P256()))
	if _, _, err := r.Put(ctx, "factory", certs, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherKey}))); err == nil {
		t.Fatal("a key that is not the certificate's was accepted")
	}
	leafOnly := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mustLeaf(t, inter).Raw}))
	if _, _, err := r.Put(ctx, "leaf", leafOnly, keyPEM); err == nil {
		t.Fatal("a certificate that is no CA was accepted")
	}
	v, created, err := r.Put(ctx, "Factory", certs, keyPEM)
	if err != nil || !created {
		t.Fatalf("Put: %v created=%v", err, created)
	}
	if v.Name != "Factory" || v.Local {
		t.Fatalf("view %+v", v)
	}
	a, err := r.Authority(ctx, "factory")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Cert.Equal(inter.Cert) || len(a.Chain) != 1 || !a.Chain[0].Equal(root.Cert) {
		t.Fatal("stored authority is not the one put")
	}
	if a, err := r.Authority(ctx, "LOCAL"); err != nil || a != local {
		t.Fatalf("local: %v", err)
	}
	list, err := r.List(ctx)
	if err != nil || len(list) != 2 || !list[0].Local {
		t.Fatalf("List: %v %+v", err, list)
	}
	if err := r.Delete(ctx, "factory"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authority(ctx, "factory"); dps.AsError(err).ErrorCode != dps.CodeCertificateIssuanceNotConfigured {
		t.Fatalf("deleted CA: %v", err)
	}
}

func mustLeaf(t testing.TB, ca *Authority) *x509.Certificate {
	req, err := ParseRequest(newCSR(t, "x", ecKey(t, elliptic.P256())), "x", Policy{})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(req, Policy{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return iss.Leaf
}
