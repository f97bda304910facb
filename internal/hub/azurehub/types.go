package azurehub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
)

// APIVersion is the api-version every request carries.
const APIVersion = "2021-04-12"

// Authentication types of a device identity.
const (
	AuthSAS                  = "sas"
	AuthSelfSigned           = "selfSigned"
	AuthCertificateAuthority = "certificateAuthority"
	AuthNone                 = "none"
)

// Device statuses.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"
)

// Connection states.
const (
	Connected    = "Connected"
	Disconnected = "Disconnected"
)

// Device is a device identity as the registry API sends and accepts it.
// Field names are exactly those on the wire.
type Device struct {
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId,omitempty"`
	ETag                       string          `json:"etag,omitempty"`
	ConnectionState            string          `json:"connectionState,omitempty"`
	Status                     string          `json:"status,omitempty"`
	StatusReason               *string         `json:"statusReason,omitempty"`
	ConnectionStateUpdatedTime string          `json:"connectionStateUpdatedTime,omitempty"`
	StatusUpdatedTime          string          `json:"statusUpdatedTime,omitempty"`
	LastActivityTime           string          `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount  int64           `json:"cloudToDeviceMessageCount"`
	Authentication             *Authentication `json:"authentication,omitempty"`
	Capabilities               *Capabilities   `json:"capabilities,omitempty"`
	DeviceScope                string          `json:"deviceScope,omitempty"`
	ParentScopes               []string        `json:"parentScopes,omitempty"`
}

// Authentication says how a device authenticates to the hub.
type Authentication struct {
	Type           string          `json:"type,omitempty"`
	SymmetricKey   *SymmetricKey   `json:"symmetricKey,omitempty"`
	X509Thumbprint *X509Thumbprint `json:"x509Thumbprint,omitempty"`
}

// SymmetricKey holds a device's two SAS keys (base64).
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds the thumbprints of a self-signed device's
// certificates. Azure sends null for absent ones.
type X509Thumbprint struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

// Capabilities of a device.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// Twin is a device twin in the service view. As a request body of an
// update only Tags and Properties.Desired matter; a nil value in their maps
// deletes the key.
type Twin struct {
	DeviceID                  string          `json:"deviceId,omitempty"`
	ModuleID                  string          `json:"moduleId,omitempty"`
	ETag                      string          `json:"etag,omitempty"`
	DeviceETag                string          `json:"deviceEtag,omitempty"`
	Status                    string          `json:"status,omitempty"`
	StatusReason              *string         `json:"statusReason,omitempty"`
	StatusUpdateTime          string          `json:"statusUpdateTime,omitempty"`
	ConnectionState           string          `json:"connectionState,omitempty"`
	LastActivityTime          string          `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount int64           `json:"cloudToDeviceMessageCount,omitempty"`
	AuthenticationType        string          `json:"authenticationType,omitempty"`
	X509Thumbprint            *X509Thumbprint `json:"x509Thumbprint,omitempty"`
	ModelID                   *string         `json:"modelId,omitempty"`
	Version                   int64           `json:"version,omitempty"`
	Tags                      map[string]any  `json:"tags"`
	Properties                *TwinProperties `json:"properties,omitempty"`
	Capabilities              *Capabilities   `json:"capabilities,omitempty"`
	DeviceScope               string          `json:"deviceScope,omitempty"`
	ParentScopes              []string        `json:"parentScopes,omitempty"`
}

// TwinProperties are the desired and reported property sets of a twin. In
// responses each carries "$version" and "$metadata".
type TwinProperties struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
	// DesiredNull is set when a decoded body said "desired": null, which
	// in a twin patch clears every desired property (a nil Desired alone
	// cannot tell that from no "desired" at all).
	DesiredNull bool `json:"-"`
}

// UnmarshalJSON decodes the property sets, numbers kept exact, and notes
// an explicit "desired": null.
func (p *TwinProperties) UnmarshalJSON(data []byte) error {
	var raw struct {
		Desired  json.RawMessage `json:"desired"`
		Reported json.RawMessage `json:"reported"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	*p = TwinProperties{}
	decode := func(b json.RawMessage, dst *map[string]any) error {
		if len(b) == 0 || bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
			return nil
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		return dec.Decode(dst)
	}
	p.DesiredNull = bytes.Equal(bytes.TrimSpace(raw.Desired), []byte("null"))
	if err := decode(raw.Desired, &p.Desired); err != nil {
		return fmt.Errorf("properties.desired: %w", err)
	}
	if err := decode(raw.Reported, &p.Reported); err != nil {
		return fmt.Errorf("properties.reported: %w", err)
	}
	return nil
}

// Registry is what registering a device needs from a hub. The REST Client
// implements it for any hub; dpsd's built-in hubs implement it in process
// with the same semantics, errors included (*Error with the HTTP status the
// REST API would answer).
//
// etag arguments follow If-Match: "" means none (create: the device must
// not exist), "*" means any existing record, anything else must equal the
// record's etag.
type Registry interface {
	// CreateDevice creates a device; *Error 409 DeviceAlreadyExists if it
	// exists. Empty symmetric keys make the hub generate them.
	CreateDevice(ctx context.Context, d *Device) (*Device, error)
	// UpdateDevice replaces an existing device; 404 if absent, 412 if etag
	// does not match.
	UpdateDevice(ctx context.Context, d *Device, etag string) (*Device, error)
	// GetDevice returns a device; 404 DeviceNotFound if absent.
	GetDevice(ctx context.Context, id string) (*Device, error)
	// DeleteDevice deletes a device and its twin; 404 if absent.
	DeleteDevice(ctx context.Context, id, etag string) error
	// GetTwin returns a device's twin.
	GetTwin(ctx context.Context, id string) (*Twin, error)
	// UpdateTwin merges patch's tags and desired properties into the twin.
	UpdateTwin(ctx context.Context, id string, patch *Twin, etag string) (*Twin, error)
	// ReplaceTwin replaces the twin's tags and desired properties.
	ReplaceTwin(ctx context.Context, id string, twin *Twin, etag string) (*Twin, error)
}

// ReportedImporter is implemented by registries that can also set a twin's
// reported properties from the service side, which the Azure REST API
// cannot. Built-in hubs implement it so that migrating a device between
// them keeps its reported state, as Azure DPS does.
type ReportedImporter interface {
	ImportReported(ctx context.Context, id string, reported map[string]any) error
}

// DeviceCAs is implemented by registries that can be told which CA
// certificates vouched for a certificateAuthority device at provisioning.
// Built-in hubs implement it and let that device (only) connect through
// them; on an Azure hub the operator uploads and verifies the CA
// certificate instead, as with Azure DPS.
type DeviceCAs interface {
	// TrustDeviceCAs records certPEMs for the existing device id,
	// replacing what was recorded before.
	TrustDeviceCAs(ctx context.Context, id string, certPEMs []string) error
}

// DeviceLister is implemented by registries that can list their device
// identities, in device-id order. Built-in hubs implement it; dpsd doctor
// needs it to find identities that no registration record names.
type DeviceLister interface {
	ListDevices(ctx context.Context, after string, limit int) ([]*Device, bool, error)
}

// Module is a module identity of a device as the registry API sends and
// accepts it.
type Module struct {
	ModuleID                   string          `json:"moduleId"`
	ManagedBy                  string          `json:"managedBy,omitempty"`
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId,omitempty"`
	ETag                       string          `json:"etag,omitempty"`
	ConnectionState            string          `json:"connectionState,omitempty"`
	ConnectionStateUpdatedTime string          `json:"connectionStateUpdatedTime,omitempty"`
	LastActivityTime           string          `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount  int64           `json:"cloudToDeviceMessageCount"`
	Authentication             *Authentication `json:"authentication,omitempty"`
}
