package issuer

import (
	"crypto/elliptic"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
)

// FuzzParseRequest feeds ParseRequest arbitrary csr text: it must refuse
// with a 4002xx *dps.Error or accept a request for the registration id,
// never panic.
func FuzzParseRequest(f *testing.F) {
	good := newCSR(f, "dev-1", ecKey(f, elliptic.P256()))
	der, _ := base64.StdEncoding.DecodeString(good)
	f.Add(good)
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\n" + good + "\n-----END CERTIFICATE REQUEST-----")
	f.Add(base64.StdEncoding.EncodeToString(der[:len(der)/2]))
	f.Add(base64.RawStdEncoding.EncodeToString(der))
	f.Add("")
	f.Add("-----BEGIN ")
	f.Fuzz(func(t *testing.T, csr string) {
		req, err := ParseRequest(csr, "dev-1", Policy{})
		if err != nil {
			var de *dps.Error
			if !errors.As(err, &de) || de.Status() != 400 {
				t.Fatalf("refusal %v is not a 400 *dps.Error", err)
			}
			return
		}
		if req.Subject.CommonName != "dev-1" || req.CheckSignature() != nil {
			t.Fatal("accepted a request that is not dev-1's or not signed")
		}
	})
}

// FuzzDecodeCSRBytes feeds ParseRequest arbitrary DER as base64, reaching
// the PKCS#10 parser and the key checks.
func FuzzDecodeCSRBytes(f *testing.F) {
	good := newCSR(f, "dev-1", ecKey(f, elliptic.P256()))
	der, _ := base64.StdEncoding.DecodeString(good)
	f.Add(der)
	f.Add(der[:10])
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ParseRequest(base64.StdEncoding.EncodeToString(b), "dev-1", Policy{}); err != nil {
			var de *dps.Error
			if !errors.As(err, &de) || de.Status() != 400 {
				t.Fatalf("refusal %v is not a 400 *dps.Error", err)
			}
		}
	})
}
