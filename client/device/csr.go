package device

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/dpsd/dpsd/api/dps"
)

// NewCSR returns a certificate signing request (DER PKCS#10) for
// registrationID, signed by key, as Config.CSR wants it.
func NewCSR(registrationID string, key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: registrationID}}, key)
	if err != nil {
		return nil, fmt.Errorf("device: create csr: %w", err)
	}
	return der, nil
}

// IssuedCertificate returns the certificate the service issued for the
// csr of a registration (state.IssuedCertificateChain) as a TLS client
// certificate with key, the csr's key: the leaf first, then the CA
// certificates, as a hub wants them presented.
func IssuedCertificate(state *dps.DeviceRegistrationState, key crypto.Signer) (*tls.Certificate, error) {
	if state == nil || len(state.IssuedCertificateChain) == 0 {
		return nil, errors.New("device: the registration state has no issuedCertificateChain")
	}
	c := &tls.Certificate{PrivateKey: key}
	for i, b := range state.IssuedCertificateChain {
		der, err := base64.StdEncoding.DecodeString(b)
		if err != nil {
			return nil, fmt.Errorf("device: issuedCertificateChain[%d]: %w", i, err)
		}
		c.Certificate = append(c.Certificate, der)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("device: issued certificate: %w", err)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("device: the issued certificate is not for the key")
	}
	c.Leaf = leaf
	return c, nil
}
