package provision

import (
	"crypto/x509"
	"encoding/json"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

// Request is a device's register, operation-status or status-lookup request
// as a transport decoded it. Transports fill it and nothing else; all
// decisions are the engine's.
type Request struct {
	IDScope        string
	RegistrationID string
	// Payload is the device's custom payload (the "payload" member of the
	// register body), or nil.
	Payload json.RawMessage
	// SASToken is the Authorization header (HTTPS) or CONNECT password
	// (MQTT), verbatim. Empty when the device attests with a certificate.
	SASToken string
	// TPM is the endorsement and storage root keys a TPM device sent (the
	// register body's "tpm" member, or the AMQP SASL exchange); nil
	// otherwise.
	TPM *dps.TPMAttestation
	// CSR is the register body's csr (2025-07-01-preview): a certificate
	// signing request, base64 DER PKCS#10, for the certificate the device
	// wants issued; empty when it wants none.
	CSR string
	// PeerCertificates is the TLS client chain, leaf first, when given.
	PeerCertificates []*x509.Certificate
	// APIVersion is the api-version the device sent.
	APIVersion string
	// RemoteAddr is the device's network address (host:port).
	RemoteAddr string
	// Transport names the transport for logs and metrics: https, mqtt, mqtt-ws.
	Transport string
}

// Result is the engine's answer to a register or operation-status request.
type Result struct {
	Operation *dps.RegistrationOperationStatus
	// RetryAfter is how long the device should wait before polling again;
	// zero when the operation is terminal.
	RetryAfter time.Duration
}
