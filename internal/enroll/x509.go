package enroll

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
)

const (
	pemBegin = "-----BEGIN CERTIFICATE-----"
	pemEnd   = "-----END CERTIFICATE-----"
)

// ParseCertificate reads a certificate in any of the forms the SDKs send:
// PEM text (npm, Azure CLI), base64 DER without headers (C#), or base64 of
// PEM text (C service client). Only the first certificate of a PEM bundle is
// read. Stored enrollments keep certificates as PEM, which this also reads.
func ParseCertificate(s string) (*x509.Certificate, error) {
	der, err := certificateDER([]byte(strings.TrimSpace(s)))
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

func certificateDER(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, errors.New("certificate is empty")
	}
	if bytes.HasPrefix(b, []byte("-----")) {
		return pemBody(b)
	}
	raw, err := decodeBase64Loose(b)
	if err != nil {
		return nil, fmt.Errorf("certificate is neither PEM nor base64: %w", err)
	}
	if t := bytes.TrimSpace(raw); bytes.HasPrefix(t, []byte("-----")) {
		return pemBody(t)
	}
	return raw, nil
}

// pemBody extracts the DER between the first BEGIN/END CERTIFICATE lines.
// It does not use pem.Decode because pasted certificates often lose their
// line breaks (one long line), which pem.Decode rejects.
func pemBody(b []byte) ([]byte, error) {
	_, rest, ok := bytes.Cut(b, []byte(pemBegin))
	if !ok {
		return nil, errors.New("PEM text has no " + pemBegin + " line")
	}
	body, _, ok := bytes.Cut(rest, []byte(pemEnd))
	if !ok {
		return nil, errors.New("PEM text has no " + pemEnd + " line")
	}
	der, err := decodeBase64Loose(body)
	if err != nil {
		return nil, fmt.Errorf("PEM body is not base64: %w", err)
	}
	return der, nil
}

// decodeBase64Loose decodes standard base64 ignoring white space and, for
// hand-edited JSON, literal "\n" and "\r" escapes; padding is optional.
func decodeBase64Loose(b []byte) ([]byte, error) {
	s := strings.NewReplacer(`\n`, "", `\r`, "").Replace(string(b))
	s = strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r':
			return -1
		}
		return r
	}, s)
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// CertificatePEM renders a certificate as PEM, the stored form.
func CertificatePEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// CertificateInfo describes c the way Azure does in X509CertificateInfo:
// names in .NET X.500 style ("CN=dev1, O=Contoso, C=US"), thumbprints and
// serial number in upper-case hex, dates in UTC.
func CertificateInfo(c *x509.Certificate) *dps.X509CertificateInfo {
	s1 := sha1.Sum(c.Raw)
	s256 := sha256.Sum256(c.Raw)
	serial := "00"
	if c.SerialNumber != nil && c.SerialNumber.Sign() != 0 {
		serial = strings.ToUpper(hex.EncodeToString(c.SerialNumber.Bytes()))
	}
	return &dps.X509CertificateInfo{
		SubjectName:      FormatName(c.Subject),
		SHA1Thumbprint:   strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
		IssuerName:       FormatName(c.Issuer),
		NotBeforeUTC:     c.NotBefore.UTC(),
		NotAfterUTC:      c.NotAfter.UTC(),
		SerialNumber:     serial,
		Version:          c.Version,
	}
}

// attributeNames are the short names .NET prints for X.500 attributes.
var attributeNames = map[string]string{
	"2.5.4.3":                    "CN",
	"2.5.4.4":                    "SN",
	"2.5.4.5":                    "SERIALNUMBER",
	"2.5.4.6":                    "C",
	"2.5.4.7":                    "L",
	"2.5.4.8":                    "S",
	"2.5.4.9":                    "STREET",
	"2.5.4.10":                   "O",
	"2.5.4.11":                   "OU",
	"2.5.4.12":                   "T",
	"2.5.4.42":                   "G",
	"2.5.4.43":                   "I",
	"1.2.840.113549.1.9.1":       "E",
	"0.9.2342.19200300.100.1.25": "DC",
}

// FormatName prints a distinguished name as .NET's X500DistinguishedName
// does by default: most specific attribute first, ", " between attributes,
// " + " inside a multi-valued RDN, values with special characters in double
// quotes, unknown attributes as "OID.<dotted>".
func FormatName(n pkix.Name) string {
	seq := n.ToRDNSequence()
	var parts []string
	for i := len(seq) - 1; i >= 0; i-- {
		var atvs []string
		for _, atv := range seq[i] {
			oid := atv.Type.String()
			name, ok := attributeNames[oid]
			if !ok {
				name = "OID." + oid
			}
			atvs = append(atvs, name+"="+quoteNameValue(fmt.Sprint(atv.Value)))
		}
		parts = append(parts, strings.Join(atvs, " + "))
	}
	return strings.Join(parts, ", ")
}

func quoteNameValue(v string) string {
	if v == "" || strings.ContainsAny(v, ",=+<>#;\"\n\r") || strings.TrimSpace(v) != v {
		return `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
	}
	return v
}
