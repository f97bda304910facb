package dps

import "encoding/json"

// AllocationRequest is the body dpsd POSTs to a custom allocation webhook.
// Exactly one of IndividualEnrollment and EnrollmentGroup is set; secrets are
// removed from it and the webhook URL's query string reads "?****".
type AllocationRequest struct {
	IndividualEnrollment *IndividualEnrollment `json:"individualEnrollment,omitempty"`
	EnrollmentGroup      *EnrollmentGroup      `json:"enrollmentGroup,omitempty"`
	DeviceRuntimeContext DeviceRuntimeContext  `json:"deviceRuntimeContext"`
	LinkedHubs           []string              `json:"linkedHubs"`
}

// DeviceRuntimeContext tells the webhook about the registering device.
type DeviceRuntimeContext struct {
	RegistrationID        string                  `json:"registrationId"`
	CurrentIoTHubHostName string                  `json:"currentIotHubHostName,omitempty"`
	CurrentDeviceID       string                  `json:"currentDeviceId,omitempty"`
	SymmetricKey          *struct{}               `json:"symmetricKey,omitempty"`
	X509                  *X509RegistrationResult `json:"x509,omitempty"`
	TPM                   *TPMAttestation         `json:"tpm,omitempty"`
	Payload               json.RawMessage         `json:"payload,omitempty"`
}

// AllocationResponse is what a custom allocation webhook answers.
type AllocationResponse struct {
	IoTHubHostName *string         `json:"iotHubHostName"`
	InitialTwin    *InitialTwin    `json:"initialTwin,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`
}
