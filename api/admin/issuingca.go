package admin

import "time"

// IssuingCA is an issuing CA as GET /dpsd/issuingCAs shows it: a CA that
// signs the certificates devices ask for with a csr, named by enrollments'
// clientCertificateIssuancePolicy.certificateAuthorityName. Its private key
// is never shown.
type IssuingCA struct {
	Name string `json:"name"`
	// Local is set for "local", the node's own CA, which is always there
	// and cannot be changed through the API.
	Local            bool      `json:"local,omitempty"`
	Subject          string    `json:"subject"`
	Issuer           string    `json:"issuer"`
	SHA256Thumbprint string    `json:"sha256Thumbprint"`
	NotAfterUTC      time.Time `json:"notAfterUtc"`
	// Certificates is the CA certificate and its chain above it (PEM), as
	// devices receive them after their own certificate.
	Certificates string     `json:"certificates"`
	ETag         string     `json:"etag,omitempty"`
	CreatedUTC   *time.Time `json:"createdUtc,omitempty"`
}

// IssuingCAPut is the body of PUT /dpsd/issuingCAs/{name}: the CA
// certificate first, then any certificates above it (PEM), and its private
// key (PEM, PKCS#8, PKCS#1 or SEC 1).
type IssuingCAPut struct {
	Certificates string `json:"certificates"`
	PrivateKey   string `json:"privateKey"`
}
