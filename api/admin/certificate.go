package admin

import "time"

// Certificate is a CA certificate as the API shows it, shaped like Azure's
// CertificateResponse.
type Certificate struct {
	Name       string                `json:"name"`
	ETag       string                `json:"etag,omitempty"`
	Properties CertificateProperties `json:"properties"`
}

// CertificateProperties describe a CA certificate.
type CertificateProperties struct {
	Subject          string    `json:"subject"`
	Expiry           time.Time `json:"expiry"`
	Thumbprint       string    `json:"thumbprint"` // SHA-1, upper-case hex, as Azure shows it
	SHA256Thumbprint string    `json:"thumbprintSha256"`
	IsVerified       bool      `json:"isVerified"`
	Created          time.Time `json:"created"`
	Updated          time.Time `json:"updated"`
	// Certificate is the PEM text.
	Certificate string `json:"certificate"`
	// VerificationCode is only in the answer of generateVerificationCode.
	VerificationCode string `json:"verificationCode,omitempty"`
}
