package dps

import (
	"encoding/json"
	"time"
)

// Attestation types (AttestationMechanism.Type).
const (
	AttestationNone         = "none"
	AttestationTPM          = "tpm"
	AttestationX509         = "x509"
	AttestationSymmetricKey = "symmetricKey"
)

// Provisioning statuses of enrollments and groups.
const (
	ProvisioningEnabled  = "enabled"
	ProvisioningDisabled = "disabled"
)

// Allocation policies.
const (
	AllocationHashed     = "hashed"
	AllocationGeoLatency = "geoLatency"
	AllocationStatic     = "static"
	AllocationCustom     = "custom"
)

// IndividualEnrollment is one device's enrollment (2021-10-01 schema).
type IndividualEnrollment struct {
	RegistrationID             string                      `json:"registrationId"`
	DeviceID                   string                      `json:"deviceId,omitempty"`
	RegistrationState          *DeviceRegistrationState    `json:"registrationState,omitempty"`
	OptionalDeviceInformation  json.RawMessage             `json:"optionalDeviceInformation,omitempty"`
	Attestation                *AttestationMechanism       `json:"attestation"`
	Capabilities               *DeviceCapabilities         `json:"capabilities,omitempty"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         *time.Time                  `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     *time.Time                  `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
	ClientCertIssuancePolicy   json.RawMessage             `json:"clientCertificateIssuancePolicy,omitempty"`
}

// EnrollmentGroup is a group of devices sharing one attestation (2021-10-01 schema).
type EnrollmentGroup struct {
	EnrollmentGroupID          string                      `json:"enrollmentGroupId"`
	Attestation                *AttestationMechanism       `json:"attestation"`
	Capabilities               *DeviceCapabilities         `json:"capabilities,omitempty"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         *time.Time                  `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     *time.Time                  `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
	ClientCertIssuancePolicy   json.RawMessage             `json:"clientCertificateIssuancePolicy,omitempty"`
}

// AttestationMechanism says how a device proves its identity.
type AttestationMechanism struct {
	Type         string                   `json:"type"`
	TPM          *TPMAttestation          `json:"tpm,omitempty"`
	X509         *X509Attestation         `json:"x509,omitempty"`
	SymmetricKey *SymmetricKeyAttestation `json:"symmetricKey,omitempty"`
}

// TPMAttestation carries a TPM's endorsement and storage root keys.
type TPMAttestation struct {
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey,omitempty"`
}

// SymmetricKeyAttestation carries base64 keys. Both are omitted on reads.
type SymmetricKeyAttestation struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// X509Attestation holds exactly one of its three members.
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// X509Certificates is a primary and optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CertificateWithInfo is a certificate as sent (PEM, base64 DER or base64
// of PEM) and the facts the service read from it.
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509CertificateInfo describes a certificate the way Azure prints it.
type X509CertificateInfo struct {
	SubjectName      string    `json:"subjectName"`
	SHA1Thumbprint   string    `json:"sha1Thumbprint"`
	SHA256Thumbprint string    `json:"sha256Thumbprint"`
	IssuerName       string    `json:"issuerName"`
	NotBeforeUTC     time.Time `json:"notBeforeUtc"`
	NotAfterUTC      time.Time `json:"notAfterUtc"`
	SerialNumber     string    `json:"serialNumber"`
	Version          int       `json:"version"`
}

// X509CAReferences names CA certificates registered with the service.
type X509CAReferences struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary,omitempty"`
}

// DeviceCapabilities of the device identity created in the hub.
type DeviceCapabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// ReprovisionPolicy says what happens when a registered device registers again.
type ReprovisionPolicy struct {
	UpdateHubAssignment bool `json:"updateHubAssignment"`
	MigrateDeviceData   bool `json:"migrateDeviceData"`
}

// CustomAllocationDefinition names the allocation webhook.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
}

// InitialTwin is written to the device twin when the device is assigned.
// Tags and desired properties are kept verbatim as JSON objects.
type InitialTwin struct {
	Tags       json.RawMessage        `json:"tags,omitempty"`
	Properties *InitialTwinProperties `json:"properties,omitempty"`
}

// InitialTwinProperties holds the desired properties of an initial twin.
type InitialTwinProperties struct {
	Desired json.RawMessage `json:"desired,omitempty"`
}

// ClientCertificateIssuancePolicy is the preview member
// clientCertificateIssuancePolicy of enrollments and groups: which CA
// issues certificates to the devices that send a csr.
type ClientCertificateIssuancePolicy struct {
	CertificateAuthorityName string `json:"certificateAuthorityName"`
}

// IssuingCA returns the certificateAuthorityName of an enrollment's raw
// clientCertificateIssuancePolicy, or "" when it names none.
func IssuingCA(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var p ClientCertificateIssuancePolicy
	if json.Unmarshal(raw, &p) != nil {
		return ""
	}
	return p.CertificateAuthorityName
}
