package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/sas"
)

// Credentials finds the service connection string of a hub by its host
// name, e.g. from the linked hubs of the instance.
type Credentials interface {
	HubConnectionString(ctx context.Context, hostName string) (*sas.ConnectionString, error)
}

// Local finds hubs that run in this process (dpsd's built-in hubs), which
// the registrar calls directly instead of over REST.
type Local interface {
	Registry(hostName string) (Registry, bool)
}

// RegistrarOptions configure a Registrar.
type RegistrarOptions struct {
	// Credentials locate remote hubs; required unless every hub is Local.
	Credentials Credentials
	// Local hubs are tried first; may be nil.
	Local Local
	// ClientOptions apply to the REST clients of remote hubs (for example
	// WithRootCAs for hubs with private certificates).
	ClientOptions []ClientOption
	Logger        *slog.Logger
}

// Registrar implements provision.Registrar: it creates or updates the
// device identity in the assigned hub, applies the initial twin, and when a
// device moves between hubs migrates or resets its twin and deletes it
// from the hub it left. Every step is idempotent, so the engine may repeat
// a registration after a crash or a race.
type Registrar struct {
	opt RegistrarOptions
	log *slog.Logger

	mu      sync.Mutex
	clients map[string]*cachedClient // by lower-cased host name
}

type cachedClient struct {
	cs     string // the connection string the client was built from
	client *Client
}

var _ provision.Registrar = (*Registrar)(nil)

// NewRegistrar returns a Registrar.
func NewRegistrar(opt RegistrarOptions) *Registrar {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &Registrar{opt: opt, log: opt.Logger, clients: make(map[string]*cachedClient)}
}

// RegisterDevice puts dev into its hub. See Registrar.
func (r *Registrar) RegisterDevice(ctx context.Context, dev *provision.HubDevice) error {
	if dev.Hub == "" || dev.DeviceID == "" {
		return errors.New("hub: device without hub or device id")
	}
	initial, err := initialTwin(dev.InitialTwin)
	if err != nil {
		return err
	}
	to, err := r.registry(ctx, dev.Hub)
	if err != nil {
		return err
	}

	moving := dev.PreviousHub != "" && !strings.EqualFold(dev.PreviousHub, dev.Hub)
	var from Registry
	var carried *Twin
	// movedBefore: an earlier attempt of this move got as far as removing
	// the old identity, so the device's data already is in the new hub.
	movedBefore := false
	if moving {
		from, err = r.registry(ctx, dev.PreviousHub)
		if err != nil {
			// The old hub was unlinked or its credentials are gone: the
			// device can still be provisioned, just without its old data.
			r.log.Warn("previous hub unreachable; not migrating or removing the device there",
				"deviceId", dev.DeviceID, "previousHub", dev.PreviousHub, "err", err)
			from = nil
		} else {
			t, err := from.GetTwin(ctx, dev.DeviceID)
			switch {
			case err == nil:
				if dev.MigrateDeviceData {
					carried = t
				}
			case errors.Is(err, ErrNotFound):
				movedBefore = true
			default:
				return fmt.Errorf("read the twin in the previous hub %s: %w", dev.PreviousHub, err)
			}
		}
	}

	if err := trustCAs(ctx, to, dev); err != nil {
		return fmt.Errorf("CA certificates for hub %s: %w", dev.Hub, err)
	}
	created, err := ensureIdentity(ctx, to, dev)
	if err != nil {
		return fmt.Errorf("device identity in hub %s: %w", dev.Hub, err)
	}
	if created {
		movedBefore = false
	}

	switch {
	case carried != nil:
		if err := migrateTwin(ctx, to, dev.DeviceID, carried); err != nil {
			return fmt.Errorf("migrate twin to hub %s: %w", dev.Hub, err)
		}
	case created || (dev.ResetTwin || moving) && !movedBefore:
		// A fresh identity, a factory reset or a move without migration:
		// the twin becomes the initial twin (or empty).
		if initial != nil || !created {
			if initial == nil {
				initial = &Twin{}
			}
			if _, err := to.ReplaceTwin(ctx, dev.DeviceID, initial, "*"); err != nil {
				return fmt.Errorf("initial twin in hub %s: %w", dev.Hub, err)
			}
		}
	case initial != nil:
		// The device existed and keeps its twin data. A twin that is still
		// empty most likely means an earlier attempt created the identity
		// but stopped before writing the initial twin.
		t, err := to.GetTwin(ctx, dev.DeviceID)
		if err != nil {
			return fmt.Errorf("read twin in hub %s: %w", dev.Hub, err)
		}
		if pristine(t) {
			if _, err := to.UpdateTwin(ctx, dev.DeviceID, initial, t.ETag); err != nil {
				return fmt.Errorf("initial twin in hub %s: %w", dev.Hub, err)
			}
		}
	}

	if moving && from != nil && !movedBefore {
		err := from.DeleteDevice(ctx, dev.DeviceID, "*")
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("remove the device from the previous hub %s: %w", dev.PreviousHub, err)
		}
	}
	return nil
}

// registry returns the hub with host name host: in process if it is a
// built-in hub, otherwise a REST client with its credentials.
func (r *Registrar) registry(ctx context.Context, host string) (Registry, error) {
	if r.opt.Local != nil {
		if reg, ok := r.opt.Local.Registry(host); ok {
			return reg, nil
		}
	}
	if r.opt.Credentials == nil {
		return nil, fmt.Errorf("hub %s: unknown hub and no credentials source", host)
	}
	cs, err := r.opt.Credentials.HubConnectionString(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("hub %s: credentials: %w", host, err)
	}
	key := strings.ToLower(host)
	s := cs.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[key]; ok && c.cs == s {
		return c.client, nil
	}
	c, err := NewClient(cs, r.opt.ClientOptions...)
	if err != nil {
		return nil, fmt.Errorf("hub %s: %w", host, err)
	}
	r.clients[key] = &cachedClient{cs: s, client: c}
	return c, nil
}

// maxIdentityAttempts bounds the create/read/update loop against a hub
// where someone else keeps changing the device.
const maxIdentityAttempts = 4

// ensureIdentity creates the device, or updates an existing one so it has
// the enrollment's keys and capabilities. It reports whether it created it.
func ensureIdentity(ctx context.Context, reg Registry, dev *provision.HubDevice) (bool, error) {
	want := &Device{
		DeviceID:       dev.DeviceID,
		Status:         StatusEnabled,
		Authentication: authentication(dev),
		Capabilities:   &Capabilities{IoTEdge: dev.IoTEdge},
	}
	for range maxIdentityAttempts {
		_, err := reg.CreateDevice(ctx, want)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, ErrExists) {
			return false, err
		}
		cur, err := reg.GetDevice(ctx, dev.DeviceID)
		if errors.Is(err, ErrNotFound) {
			continue // deleted in between; create again
		}
		if err != nil {
			return false, err
		}
		if sameIdentity(cur, want) {
			return false, nil
		}
		// Keep what the hub's operators set (status, scopes); change what
		// the enrollment decides.
		upd := *cur
		upd.Authentication = want.Authentication
		upd.Capabilities = want.Capabilities
		_, err = reg.UpdateDevice(ctx, &upd, cur.ETag)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, ErrPrecondition) && !errors.Is(err, ErrNotFound) {
			return false, err
		}
	}
	return false, fmt.Errorf("device %q kept changing while being registered", dev.DeviceID)
}

// authentication is the identity's authentication: the device's own SAS
// keys; for a device that attested with an individual enrollment's
// certificates, those certificates' thumbprints ("selfSigned"); for one a
// CA vouched for (a group, or caReferences), any certificate with its
// device id that the hub's CA certificates vouch for.
func authentication(dev *provision.HubDevice) *Authentication {
	if x := dev.X509; x != nil && x.PrimaryThumbprint != "" {
		t := &X509Thumbprint{PrimaryThumbprint: &x.PrimaryThumbprint}
		if x.SecondaryThumbprint != "" {
			t.SecondaryThumbprint = &x.SecondaryThumbprint
		}
		return &Authentication{Type: AuthSelfSigned, X509Thumbprint: t}
	}
	if dev.X509 != nil || (dev.PrimaryKey == "" && dev.SecondaryKey == "") {
		return &Authentication{Type: AuthCertificateAuthority}
	}
	return &Authentication{Type: AuthSAS, SymmetricKey: &SymmetricKey{PrimaryKey: dev.PrimaryKey, SecondaryKey: dev.SecondaryKey}}
}

// trustCAs gives a hub that can take them (a built-in hub) the CA
// certificates that vouched for a certificateAuthority device, so the
// device can connect with its certificate. On an Azure hub the operator
// uploads and verifies the CA certificate instead, as with Azure DPS.
func trustCAs(ctx context.Context, reg Registry, dev *provision.HubDevice) error {
	if dev.X509 == nil || len(dev.X509.CACertificates) == 0 {
		return nil
	}
	ct, ok := reg.(CertificateAuthorities)
	if !ok {
		return nil
	}
	for _, pem := range dev.X509.CACertificates {
		if err := ct.AddCertificateAuthority(ctx, pem); err != nil {
			return err
		}
	}
	return nil
}

func sameIdentity(cur, want *Device) bool {
	a, b := cur.Authentication, want.Authentication
	if a == nil || !strings.EqualFold(a.Type, b.Type) {
		return false
	}
	if b.SymmetricKey != nil {
		if a.SymmetricKey == nil || *a.SymmetricKey != *b.SymmetricKey {
			return false
		}
	}
	if t := b.X509Thumbprint; t != nil {
		if a.X509Thumbprint == nil || !sameThumbprint(a.X509Thumbprint.PrimaryThumbprint, t.PrimaryThumbprint) ||
			!sameThumbprint(a.X509Thumbprint.SecondaryThumbprint, t.SecondaryThumbprint) {
			return false
		}
	}
	iotEdge := cur.Capabilities != nil && cur.Capabilities.IoTEdge
	return iotEdge == want.Capabilities.IoTEdge
}

// migrateTwin gives the twin in to the tags and properties of carried.
func migrateTwin(ctx context.Context, to Registry, id string, carried *Twin) error {
	t := &Twin{Tags: carried.Tags, Properties: &TwinProperties{}}
	var reported map[string]any
	if p := carried.Properties; p != nil {
		t.Properties.Desired = StripMeta(p.Desired)
		reported = StripMeta(p.Reported)
	}
	if _, err := to.ReplaceTwin(ctx, id, t, "*"); err != nil {
		return err
	}
	// Reported properties belong to the device; only a hub that offers it
	// can take them from the service side.
	if imp, ok := to.(ReportedImporter); ok && len(reported) > 0 {
		return imp.ImportReported(ctx, id, reported)
	}
	return nil
}

// StripMeta returns m without the "$version", "$metadata" and other '$'
// keys that twin responses add and clients echo back. It returns an empty
// map, not nil, for a nil m.
func StripMeta(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}

// pristine reports whether a twin has no tags and no desired properties.
func pristine(t *Twin) bool {
	if len(t.Tags) > 0 {
		return false
	}
	return t.Properties == nil || len(StripMeta(t.Properties.Desired)) == 0
}

// initialTwin turns an enrollment's initial twin into a twin write, or nil.
func initialTwin(it *dps.InitialTwin) (*Twin, error) {
	if it == nil {
		return nil, nil
	}
	t := &Twin{Properties: &TwinProperties{}}
	if err := decodeObject(it.Tags, &t.Tags); err != nil {
		return nil, fmt.Errorf("initial twin tags: %w", err)
	}
	if it.Properties != nil {
		if err := decodeObject(it.Properties.Desired, &t.Properties.Desired); err != nil {
			return nil, fmt.Errorf("initial twin desired properties: %w", err)
		}
	}
	// DPS enrollments may carry the metadata an Azure twin export has.
	t.Tags = StripMeta(t.Tags)
	t.Properties.Desired = StripMeta(t.Properties.Desired)
	if len(t.Tags) == 0 && len(t.Properties.Desired) == 0 {
		return nil, nil
	}
	return t, nil
}

func decodeObject(raw json.RawMessage, out *map[string]any) error {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(out)
}

// sameThumbprint compares two optional thumbprints; absent and empty are
// the same, and hubs may change the case.
func sameThumbprint(a, b *string) bool {
	var x, y string
	if a != nil {
		x = *a
	}
	if b != nil {
		y = *b
	}
	return strings.EqualFold(x, y)
}
