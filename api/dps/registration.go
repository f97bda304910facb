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
