package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// Right is a permission a shared access policy grants.
type Right string

// The rights of Azure DPS shared access policies.
const (
	RightServiceConfig           Right = "ServiceConfig"
	RightEnrollmentRead          Right = "EnrollmentRead"
	RightEnrollmentWrite         Right = "EnrollmentWrite"
	RightDeviceConnect           Right = "DeviceConnect"
	RightRegistrationStatusRead  Right = "RegistrationStatusRead"
	RightRegistrationStatusWrite Right = "RegistrationStatusWrite"
)

// AllRights is what the owner policy holds.
var AllRights = []Right{
	RightServiceConfig, RightEnrollmentRead, RightEnrollmentWrite,
	RightDeviceConnect, RightRegistrationStatusRead, RightRegistrationStatusWrite,
}

// OwnerPolicy is the policy every new instance gets, as in Azure.
const OwnerPolicy = "provisioningserviceowner"

// Policy is a shared access policy.
type Policy struct {
	KeyName      string  `json:"keyName"`
	PrimaryKey   string  `json:"primaryKey"`
	SecondaryKey string  `json:"secondaryKey"`
	Rights       []Right `json:"rights"`
}

// Has reports whether the policy grants r.
func (p *Policy) Has(r Right) bool {
	for _, x := range p.Rights {
		if strings.EqualFold(string(x), string(r)) {
			return true
		}
	}
	return false
}

// Instance is the stored identity of a dpsd instance.
type Instance struct {
	IDScope  string   `json:"idScope"`
	Policies []Policy `json:"policies"`
	// DeviceKeySecret (base64, 32 bytes) derives the identity keys of TPM
	// devices (internal/tpm.IdentityKey), so that every node derives the
	// same key for a device. Instances created before it existed get one
	// on their next start.
	DeviceKeySecret string `json:"deviceKeySecret,omitempty"`
}

// Policy returns the policy named name (case-insensitive).
func (in *Instance) Policy(name string) (*Policy, bool) {
	for i := range in.Policies {
		if strings.EqualFold(in.Policies[i].KeyName, name) {
			return &in.Policies[i], true
		}
	}
	return nil, false
}

// ServiceConnectionString is the owner policy's connection string for host.
func (in *Instance) ServiceConnectionString(host string) string {
	p, ok := in.Policy(OwnerPolicy)
	if !ok {
		return ""
	}
	cs := sas.ConnectionString{HostName: host, SharedAccessKeyName: p.KeyName, SharedAccessKey: p.PrimaryKey}
	return cs.String()
}

const recordID = "instance"

// LoadOrCreate returns the instance kept in st, creating it on first start.
// When several nodes start at once, exactly one creation wins and the others
// read the winner's instance.
func LoadOrCreate(ctx context.Context, st store.Store) (*Instance, error) {
	in, err := Load(ctx, st)
	if err == nil && in.DeviceKeySecret == "" {
		return addDeviceKeySecret(ctx, st)
	}
	if err == nil || !errors.Is(err, store.ErrNotFound) {
		return in, err
	}
	in = &Instance{
		IDScope:         newIDScope(),
		DeviceKeySecret: sas.GenerateKey(32),
		Policies: []Policy{{
			KeyName:      OwnerPolicy,
			PrimaryKey:   sas.GenerateKey(32),
			SecondaryKey: sas.GenerateKey(32),
			Rights:       AllRights,
		}},
	}
	data, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	_, err = st.Put(ctx, store.Record{Kind: store.KindConfig, ID: recordID, Data: data}, store.Condition{MustNotExist: true})
	if errors.Is(err, store.ErrExists) {
		return Load(ctx, st)
	}
	if err != nil {
		return nil, fmt.Errorf("create instance: %w", err)
	}
	return in, nil
}

// addDeviceKeySecret gives an instance created before DeviceKeySecret
// existed its secret; when several nodes start at once, one write wins and
// the others read it.
func addDeviceKeySecret(ctx context.Context, st store.Store) (*Instance, error) {
	for range 5 {
		rec, err := st.Get(ctx, store.KindConfig, recordID)
		if err != nil {
			return nil, fmt.Errorf("load instance: %w", err)
		}
		var in Instance
		if err := json.Unmarshal(rec.Data, &in); err != nil {
			return nil, fmt.Errorf("load instance: %w", err)
		}
		if in.DeviceKeySecret != "" {
			return &in, nil
		}
		// Keep every member the record has, known to this version or not.
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(rec.Data, &doc); err != nil {
			return nil, fmt.Errorf("load instance: %w", err)
		}
		in.DeviceKeySecret = sas.GenerateKey(32)
		doc["deviceKeySecret"], _ = json.Marshal(in.DeviceKeySecret)
		data, err := json.Marshal(doc)
		if err != nil {
			return nil, err
		}
		_, err = st.Put(ctx, store.Record{Kind: store.KindConfig, ID: recordID, Data: data}, store.Condition{IfMatch: rec.ETag})
		if errors.Is(err, store.ErrPrecondition) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("add the device key secret to the instance: %w", err)
		}
		return &in, nil
	}
	return nil, errors.New("add the device key secret to the instance: the record keeps changing")
}

// Load reads the instance; store.ErrNotFound if it was never created.
func Load(ctx context.Context, st store.Store) (*Instance, error) {
	rec, err := st.Get(ctx, store.KindConfig, recordID)
	if err != nil {
		return nil, fmt.Errorf("load instance: %w", err)
	}
	var in Instance
	if err := json.Unmarshal(rec.Data, &in); err != nil {
		return nil, fmt.Errorf("load instance: %w", err)
	}
	return &in, nil
}

// newIDScope returns "0ne" and 8 upper-case hex digits, like Azure's scopes.
func newIDScope() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic("instance: crypto/rand failed: " + err.Error())
	}
	return "0ne" + strings.ToUpper(hex.EncodeToString(b))
}
