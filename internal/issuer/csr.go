package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

// MaxCSRBytes bounds the DER size of a csr: an RSA-8192 request with a few
// extensions stays well under it.
const MaxCSRBytes = 8 << 10

// Policy is what dpsd accepts in a csr and how long what it issues lasts.
type Policy struct {
	// Validity is how long an issued certificate is valid. Default 30 days.
	Validity time.Duration
	// MinRSABits is the smallest RSA key accepted. Default 2048.
	MinRSABits int
	// MaxRSABits is the largest RSA key accepted. Default 8192: a bigger
	// key costs the service time to verify and the device's TLS peers
	// more at every handshake.
	MaxRSABits int
}

// DefaultValidity is how long an issued certificate lasts unless configured.
const DefaultValidity = 30 * 24 * time.Hour

func (p Policy) withDefaults() Policy {
	if p.Validity <= 0 {
		p.Validity = DefaultValidity
	}
	if p.MinRSABits <= 0 {
		p.MinRSABits = 2048
	}
	if p.MaxRSABits <= 0 {
		p.MaxRSABits = 8192
	}
	return p
}

// ParseRequest decodes a register request's csr (base64 DER PKCS#10; PEM
// armour is tolerated, as some devices send it) and checks it: its subject
// common name is the registration id, its key is RSA of an allowed size or
// ECDSA on P-256, P-384 or P-521, and its signature verifies. A refusal is
// a *dps.Error in the 4002xx range.
func ParseRequest(csr, registrationID string, p Policy) (*x509.CertificateRequest, error) {
	p = p.withDefaults()
	der, err := decodeCSR(csr)
	if err != nil {
		return nil, err
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidCSR, "The csr is not a PKCS#10 certificate signing request: %v", err)
	}
	if err := checkKey(req, p); err != nil {
		return nil, err
	}
	if err := req.CheckSignature(); err != nil {
		return nil, dps.Errorf(dps.CodeInvalidCSR, "The csr's signature does not verify: %v", err)
	}
	if req.Subject.CommonName != registrationID {
		return nil, dps.Errorf(dps.CodeCSRSubjectMismatch, "The csr's subject common name %q must be the registration id %q.", req.Subject.CommonName, registrationID)
	}
	return req, nil
}

func decodeCSR(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "-----BEGIN "); ok {
		// PEM: keep the base64 between the armour lines.
		_, body, _ := strings.Cut(rest, "-----")
		body, _, _ = strings.Cut(body, "-----END")
		s = body
	}
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, s)
	if s == "" {
		return nil, dps.Errorf(dps.CodeInvalidCSR, "The csr is empty.")
	}
	if base64.StdEncoding.DecodedLen(len(s)) > MaxCSRBytes {
		return nil, dps.Errorf(dps.CodeInvalidCSR, "The csr is larger than %d bytes.", MaxCSRBytes)
	}
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Some encoders drop the padding.
		if der, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "=")); err != nil {
			return nil, dps.Errorf(dps.CodeInvalidCSR, "The csr is not base64: %v", err)
		}
	}
	return der, nil
}

func checkKey(req *x509.CertificateRequest, p Policy) error {
	switch k := req.PublicKey.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < p.MinRSABits || n > p.MaxRSABits {
			return dps.Errorf(dps.CodeCSRKeyNotAllowed, "The csr's RSA key has %d bits; %d to %d are accepted.", n, p.MinRSABits, p.MaxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return dps.Errorf(dps.CodeCSRKeyNotAllowed, "The csr's ECDSA curve is not accepted; use P-256, P-384 or P-521.")
	case nil:
		return dps.Errorf(dps.CodeCSRKeyNotAllowed, "The csr's key algorithm is not supported; use RSA or ECDSA.")
	}
	return dps.Errorf(dps.CodeCSRKeyNotAllowed, "The csr's key type %s is not accepted; use RSA or ECDSA.", req.PublicKeyAlgorithm)
}
