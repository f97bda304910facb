package enroll

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"strings"
	"testing"
	"time"
)

// seedCertificate makes a small self-signed certificate for the seeds.
func seedCertificate(f *testing.F) *x509.Certificate {
	f.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "fuzz-device", Organization: []string{"Contoso, Ltd"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		f.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	return c
}

// FuzzParseCertificate feeds arbitrary text to ParseCertificate, which
// reads certificates from untrusted request bodies in three encodings: it
// must never panic, and what it accepts must survive the round trip
// through the stored PEM form unchanged.
func FuzzParseCertificate(f *testing.F) {
	c := seedCertificate(f)
	pemText := CertificatePEM(c)
	for _, s := range []string{
		pemText,
		base64.StdEncoding.EncodeToString(c.Raw),
		base64.StdEncoding.EncodeToString([]byte(pemText)),
		strings.ReplaceAll(pemText, "\n", ""),
		strings.ReplaceAll(pemText, "\n", `\n`),
		base64.RawStdEncoding.EncodeToString(c.Raw),
		pemText + pemText,
		"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
		"-----BEGIN CERTIFICATE-----\nMIIB",
		"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t",
		"", " ", "====", "not a certificate",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseCertificate(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		info := CertificateInfo(got)
		again, err := ParseCertificate(CertificatePEM(got))
		if err != nil {
			t.Fatalf("stored form does not parse: %v", err)
		}
		if !again.Equal(got) || CertificateInfo(again).SHA256Thumbprint != info.SHA256Thumbprint {
			t.Fatal("stored form is another certificate")
		}
	})
}

// TestParseCertificateEncodings: the three encodings the SDKs send give
// the same certificate.
func TestParseCertificateEncodings(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "dev"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pemText := CertificatePEM(c)
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"PEM", pemText, true},
		{"base64 DER", base64.StdEncoding.EncodeToString(der), true},
		{"base64 of PEM", base64.StdEncoding.EncodeToString([]byte(pemText)), true},
		{"PEM on one line", strings.ReplaceAll(pemText, "\n", ""), true},
		{"PEM with escaped newlines", strings.ReplaceAll(pemText, "\n", `\n`), true},
		{"truncated PEM", pemText[:len(pemText)/2], false},
		{"truncated DER", base64.StdEncoding.EncodeToString(der[:len(der)/2]), false},
		{"empty", "", false},
		{"text", "hello world", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCertificate(tc.in)
			if !tc.ok {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil || !got.Equal(c) {
				t.Fatalf("ParseCertificate: %v", err)
			}
		})
	}
}
