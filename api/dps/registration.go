package dps

import (
	"encoding/json"
	"time"
)

// Registration statuses, lower-case as every SDK compares them.
const (
	StatusUnassigned = "unassigned"
	StatusAssigning  = "assigning"
	StatusAssigned   = "assigned"
	StatusFailed     = "failed"
	StatusDisabled   = "disabled"
)

// Substatuses of an assigned registration.
const (
	SubstatusInitialAssignment                = "initialAssignment"
	SubstatusDeviceDataMigrated               = "deviceDataMigrated"
	SubstatusDeviceDataReset                  = "deviceDataReset"
	SubstatusReprovisionedToInitialAssignment = "reprovisionedToInitialAssignment"
)

// DeviceRegistrationState is the registration record of one device. The
// service API returns it as is; the device API returns it (with the
// attestation-specific members) inside a RegistrationOperationStatus.
type DeviceRegistrationState struct {
	RegistrationID         string                          `json:"registrationId"`
	CreatedDateTimeUTC     *time.Time                      `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string                          `json:"assignedHub,omitempty"`
	DeviceID               string                          `json:"deviceId,omitempty"`
	Status                 string                          `json:"status"`
	Substatus              string                          `json:"substatus,omitempty"`
	ErrorCode              int                             `json:"errorCode,omitempty"`
	ErrorMessage           string                          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC *time.Time                      `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string                          `json:"etag,omitempty"`
	Payload                json.RawMessage                 `json:"payload,omitempty"`
	X509                   *X509RegistrationResult         `json:"x509,omitempty"`
	SymmetricKey           *SymmetricKeyRegistrationResult `json:"symmetricKey,omitempty"`
	TPM                    *TPMRegistrationResult          `json:"tpm,omitempty"`
	// IssuedCertificateChain is the certificate issued for the csr of the
	// register request (base64 DER, leaf first, the issuing CA's chain
	// after it); only in the device API's answer to that request and its
	// polls (2025-07-01-preview).
	IssuedCertificateChain []string `json:"issuedCertificateChain,omitempty"`
	// IssuedCertificate describes the latest certificate issued to the
	// device from a csr; a dpsd addition that Azure's clients ignore.
	IssuedCertificate *IssuedCertificateInfo `json:"issuedCertificate,omitempty"`
}

// IssuedCertificateInfo describes a certificate issued to a device from its
// certificate signing request.
type IssuedCertificateInfo struct {
	// CertificateAuthorityName is the issuing CA, as the enrollment's
	// clientCertificateIssuancePolicy names it.
	CertificateAuthorityName string    `json:"certificateAuthorityName"`
	SubjectName              string    `json:"subjectName"`
	IssuerName               string    `json:"issuerName"`
	SerialNumber             string    `json:"serialNumber"`     // upper-case hex
	SHA1Thumbprint           string    `json:"sha1Thumbprint"`   // upper-case hex
	SHA256Thumbprint         string    `json:"sha256Thumbprint"` // upper-case hex
	NotBeforeUTC             time.Time `json:"notBeforeUtc"`
	NotAfterUTC              time.Time `json:"notAfterUtc"`
}

// X509RegistrationResult describes the certificates a device attested with.
type X509RegistrationResult struct {
	CertificateInfo        *X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string               `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// SymmetricKeyRegistrationResult names the group that vouched for a device.
type SymmetricKeyRegistrationResult struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// TPMRegistrationResult carries the hub key sealed for the TPM.
type TPMRegistrationResult struct {
	AuthenticationKey string `json:"authenticationKey"`
}

// DeviceRegistration is the body of a device's register request.
type DeviceRegistration struct {
	RegistrationID string          `json:"registrationId,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`
	TPM            *TPMAttestation `json:"tpm,omitempty"`
	CSR            string          `json:"csr,omitempty"`
}

// RegistrationOperationStatus is what the device API answers to register and
// operation-status requests.
type RegistrationOperationStatus struct {
	OperationID       string                   `json:"operationId"`
	Status            string                   `json:"status"`
	RegistrationState *DeviceRegistrationState `json:"registrationState,omitempty"`
}

// Terminal reports whether status ends a registration operation.
func Terminal(status string) bool {
	switch status {
	case StatusAssigned, StatusFailed, StatusDisabled:
		return true
	}
	return false
}
