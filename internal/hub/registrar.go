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
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// Credentials finds the service connection string of a hub by its host
// name, e.g. from the linked hubs of the instance.
type Credentials interface {
	HubConnectionString(ctx context.Context, hostName string) (*sas.ConnectionString, error)
}

// Local finds hubs that run in this process (dpsd's built-in hubs), which
// the registrar calls directly instead of over REST.
type Local interface {
	Registry(hostName string) (azurehub.Registry, bool)
}

// RegistrarOptions configure a Registrar.
type RegistrarOptions struct {
	// Credentials locate remote hubs; required unless every hub is Local.
	Credentials Credentials
	// Local hubs are tried first; may be nil.
	Local Local
	// ClientOptions apply to the REST clients of remote hubs (for example
	// WithRootCAs for hubs with private certificates).
	ClientOptions []azurehub.ClientOption
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
	client *azurehub.Client
}

var (
	_ provision.Registrar    = (*Registrar)(nil)
	_ provision.DeviceLister = (*Registrar)(nil)
	_ provision.Stager       = (*Registrar)(nil)
)

// newDeviceStager is implemented by hubs that keep their identities in the
// engine's store (builtinhub.Hub).
type newDeviceStager interface {
	StageNewDevice(ctx context.Context, in *azurehub.Device, twin *azurehub.Twin) (w store.Write, committed func(), ok bool, err error)
}

// StageDevice implements provision.Stager: a device new to a built-in hub
// of this process, not moving from another hub, is staged as the one store
// write that creates its identity with its initial twin. Anything else goes
// through RegisterDevice.
func (r *Registrar) StageDevice(ctx context.Context, dev *provision.HubDevice) (*provision.Staged, error) {
	if r.opt.Local == nil || dev.Hub == "" || dev.DeviceID == "" ||
		dev.PreviousHub != "" && !strings.EqualFold(dev.PreviousHub, dev.Hub) {
		return nil, nil
	}
	reg, ok := r.opt.Local.Registry(dev.Hub)
	if !ok {
		return nil, nil
	}
	sg, ok := reg.(newDeviceStager)
	if !ok {
		return nil, nil
	}
	initial, err := initialTwin(dev.InitialTwin)
	if err != nil {
		return nil, err
	}
	// The CAs the hub must trust for the device are written first, on
	// their own: trusting a CA the enrollment vouches for is harmless even
	// if the batch then fails, and is done once per CA, not per device.
	if err := trustCAs(ctx, reg, dev); err != nil {
		return nil, fmt.Errorf("CA certificates for hub %s: %w", dev.Hub, err)
	}
	w, committed, ok, err := sg.StageNewDevice(ctx, identity(dev), initial)
	if err != nil || !ok {
		return nil, err
	}
	return &provision.Staged{Writes: []store.Write{w}, Committed: committed}, nil
}

// NewRegistrar returns a Registrar.
func NewRegistrar(opt RegistrarOptions) *Registrar {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &Registrar{opt: opt, log: opt.Logger, clients: make(map[string]*cachedClient)}
}

// RegisterDevice puts dev into its hub. See Registrar. When a step after
// the identity's fails, it undoes the identity step: it deletes an identity
// it created, or puts back the credentials of one it changed, so that a
// failed registration leaves no identity with the new credentials behind.
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
	var from azurehub.Registry
	var carried *azurehub.Twin
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
			case errors.Is(err, azurehub.ErrNotFound):
				movedBefore = true
			default:
				return fmt.Errorf("read the twin in the previous hub %s: %w", dev.PreviousHub, err)
			}
		}
	}

	if err := trustCAs(ctx, to, dev); err != nil {
		return fmt.Errorf("CA certificates for hub %s: %w", dev.Hub, err)
	}
	created, replaced, err := ensureIdentity(ctx, to, dev)
	if err != nil {
		return fmt.Errorf("device identity in hub %s: %w", dev.Hub, err)
	}
	if created {
		movedBefore = false
	}
	if err := r.finish(ctx, to, from, dev, initial, carried, created, moving, movedBefore); err != nil {
		if uerr := undoIdentity(ctx, to, dev, created, replaced); uerr != nil {
			r.log.Error("undoing a failed hub registration failed; dpsd doctor reports the identity",
				"deviceId", dev.DeviceID, "hub", dev.Hub, "err", uerr)
		}
		return err
	}
	return nil
}

// finish writes the twin and, for a move, removes the identity from the
// previous hub.
func (r *Registrar) finish(ctx context.Context, to, from azurehub.Registry, dev *provision.HubDevice, initial, carried *azurehub.Twin, created, moving, movedBefore bool) error {

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
				initial = &azurehub.Twin{}
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
		if err != nil && !errors.Is(err, azurehub.ErrNotFound) {
			return fmt.Errorf("remove the device from the previous hub %s: %w", dev.PreviousHub, err)
		}
	}
	return nil
}

// registry returns the hub with host name host: in process if it is a
// built-in hub, otherwise a REST client with its credentials.
func (r *Registrar) registry(ctx context.Context, host string) (azurehub.Registry, error) {
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
	c, err := azurehub.NewClient(cs, r.opt.ClientOptions...)
	if err != nil {
		return nil, fmt.Errorf("hub %s: %w", host, err)
	}
	r.clients[key] = &cachedClient{cs: s, client: c}
	return c, nil
}

// undoIdentity takes back what ensureIdentity did, with a context of its
// own: the registration's may be what ran out.
func undoIdentity(ctx context.Context, reg azurehub.Registry, dev *provision.HubDevice, created bool, replaced *azurehub.Device) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	switch {
	case created:
		err := reg.DeleteDevice(ctx, dev.DeviceID, "*")
		if err != nil && !errors.Is(err, azurehub.ErrNotFound) {
			return err
		}
	case replaced != nil:
		cur, err := reg.GetDevice(ctx, dev.DeviceID)
		if err != nil {
			return err
		}
		cur.Authentication, cur.Capabilities = replaced.Authentication, replaced.Capabilities
		_, err = reg.UpdateDevice(ctx, cur, cur.ETag)
		return err
	}
	return nil
}

// UnregisterDevice implements provision.Registrar: it deletes the device
// from dev's hub when the hub holds it with dev's credentials.
func (r *Registrar) UnregisterDevice(ctx context.Context, dev *provision.HubDevice) error {
	reg, err := r.registry(ctx, dev.Hub)
	if err != nil {
		return err
	}
	cur, err := reg.GetDevice(ctx, dev.DeviceID)
	switch {
	case errors.Is(err, azurehub.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("read device %s in hub %s: %w", dev.DeviceID, dev.Hub, err)
	}
	want := &azurehub.Device{Authentication: authentication(dev), Capabilities: &azurehub.Capabilities{IoTEdge: dev.IoTEdge}}
	if !sameIdentity(cur, want) {
		return nil
	}
	err = reg.DeleteDevice(ctx, dev.DeviceID, cur.ETag)
	if err != nil && !errors.Is(err, azurehub.ErrNotFound) {
		return fmt.Errorf("delete device %s in hub %s: %w", dev.DeviceID, dev.Hub, err)
	}
	return nil
}

// LookupDevice implements provision.Registrar.
func (r *Registrar) LookupDevice(ctx context.Context, hubName, deviceID string) (*enroll.HubIdentity, error) {
	reg, err := r.registry(ctx, hubName)
	if err != nil {
		return nil, err
	}
	d, err := reg.GetDevice(ctx, deviceID)
	switch {
	case errors.Is(err, azurehub.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read device %s in hub %s: %w", deviceID, hubName, err)
	}
	return IdentityOfDevice(hubName, d), nil
}

// ListDevices implements provision.DeviceLister for hubs whose registry
// can list its devices, and returns provision.ErrCannotList for others.
func (r *Registrar) ListDevices(ctx context.Context, hubName, after string, limit int) ([]*enroll.HubIdentity, bool, error) {
	reg, err := r.registry(ctx, hubName)
	if err != nil {
		return nil, false, err
	}
	l, ok := reg.(azurehub.DeviceLister)
	if !ok {
		return nil, false, provision.ErrCannotList
	}
	page, more, err := l.ListDevices(ctx, after, limit)
	if err != nil {
		return nil, false, fmt.Errorf("list devices in hub %s: %w", hubName, err)
	}
	out := make([]*enroll.HubIdentity, 0, len(page))
	for _, d := range page {
		out = append(out, IdentityOfDevice(hubName, d))
	}
	return out, more, nil
}

// IdentityOfDevice describes a hub's device identity the way registration
// records do.
func IdentityOfDevice(hubName string, d *azurehub.Device) *enroll.HubIdentity {
	id := &enroll.HubIdentity{Hub: hubName, DeviceID: d.DeviceID, IoTEdge: d.Capabilities != nil && d.Capabilities.IoTEdge}
	if a := d.Authentication; a != nil {
		switch {
		case strings.EqualFold(a.Type, azurehub.AuthSAS) && a.SymmetricKey != nil:
			id.PrimaryKey, id.SecondaryKey = a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey
		case strings.EqualFold(a.Type, azurehub.AuthSelfSigned) && a.X509Thumbprint != nil:
			if t := a.X509Thumbprint.PrimaryThumbprint; t != nil {
				id.PrimaryThumbprint = strings.ToUpper(*t)
			}
			if t := a.X509Thumbprint.SecondaryThumbprint; t != nil {
				id.SecondaryThumbprint = strings.ToUpper(*t)
			}
		case strings.EqualFold(a.Type, azurehub.AuthCertificateAuthority):
			id.CertificateAuthority = true
		}
	}
	return id
}

// maxIdentityAttempts bounds the create/read/update loop against a hub
// where someone else keeps changing the device.
const maxIdentityAttempts = 4

// ensureIdentity creates the device, or updates an existing one so it has
// the enrollment's keys and capabilities. It reports whether it created it,
// and the identity as it was when it changed an existing one.
func ensureIdentity(ctx context.Context, reg azurehub.Registry, dev *provision.HubDevice) (created bool, replaced *azurehub.Device, err error) {
	want := identity(dev)
	for range maxIdentityAttempts {
		_, err := reg.CreateDevice(ctx, want)
		if err == nil {
			return true, nil, nil
		}
		if !errors.Is(err, azurehub.ErrExists) {
			return false, nil, err
		}
		cur, err := reg.GetDevice(ctx, dev.DeviceID)
		if errors.Is(err, azurehub.ErrNotFound) {
			continue // deleted in between; create again
		}
		if err != nil {
			return false, nil, err
		}
		if sameIdentity(cur, want) {
			return false, nil, nil
		}
		// Keep what the hub's operators set (status, scopes); change what
		// the enrollment decides.
		upd := *cur
		upd.Authentication = want.Authentication
		upd.Capabilities = want.Capabilities
		_, err = reg.UpdateDevice(ctx, &upd, cur.ETag)
		if err == nil {
			return false, cur, nil
		}
		if !errors.Is(err, azurehub.ErrPrecondition) && !errors.Is(err, azurehub.ErrNotFound) {
			return false, nil, err
		}
	}
	return false, nil, fmt.Errorf("device %q kept changing while being registered", dev.DeviceID)
}

// identity is the identity the hub is to hold for dev.
func identity(dev *provision.HubDevice) *azurehub.Device {
	return &azurehub.Device{
		DeviceID:       dev.DeviceID,
		Status:         azurehub.StatusEnabled,
		Authentication: authentication(dev),
		Capabilities:   &azurehub.Capabilities{IoTEdge: dev.IoTEdge},
	}
}

// authentication is the identity's authentication: the device's own SAS
// keys; for a device that attested with an individual enrollment's
// certificates, those certificates' thumbprints ("selfSigned"); for one a
// CA vouched for (a group, or caReferences), any certificate with its
// device id that the hub's CA certificates vouch for.
func authentication(dev *provision.HubDevice) *azurehub.Authentication {
	if x := dev.X509; x != nil && x.PrimaryThumbprint != "" {
		t := &azurehub.X509Thumbprint{PrimaryThumbprint: &x.PrimaryThumbprint}
		if x.SecondaryThumbprint != "" {
			t.SecondaryThumbprint = &x.SecondaryThumbprint
		}
		return &azurehub.Authentication{Type: azurehub.AuthSelfSigned, X509Thumbprint: t}
	}
	if dev.X509 != nil || (dev.PrimaryKey == "" && dev.SecondaryKey == "") {
		return &azurehub.Authentication{Type: azurehub.AuthCertificateAuthority}
	}
	return &azurehub.Authentication{Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: dev.PrimaryKey, SecondaryKey: dev.SecondaryKey}}
}

// trustCAs gives a hub that can take them (a built-in hub) the CA
// certificates that vouched for a certificateAuthority device, so the
// device can connect with its certificate. On an Azure hub the operator
// uploads and verifies the CA certificate instead, as with Azure DPS.
func trustCAs(ctx context.Context, reg azurehub.Registry, dev *provision.HubDevice) error {
	if dev.X509 == nil || len(dev.X509.CACertificates) == 0 {
		return nil
	}
	ct, ok := reg.(azurehub.CertificateAuthorities)
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

func sameIdentity(cur, want *azurehub.Device) bool {
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
func migrateTwin(ctx context.Context, to azurehub.Registry, id string, carried *azurehub.Twin) error {
	t := &azurehub.Twin{Tags: carried.Tags, Properties: &azurehub.TwinProperties{}}
	var reported map[string]any
	if p := carried.Properties; p != nil {
		t.Properties.Desired = azurehub.StripMeta(p.Desired)
		reported = azurehub.StripMeta(p.Reported)
	}
	if _, err := to.ReplaceTwin(ctx, id, t, "*"); err != nil {
		return err
	}
	// Reported properties belong to the device; only a hub that offers it
	// can take them from the service side.
	if imp, ok := to.(azurehub.ReportedImporter); ok && len(reported) > 0 {
		return imp.ImportReported(ctx, id, reported)
	}
	return nil
}

// pristine reports whether a twin has no tags and no desired properties.
func pristine(t *azurehub.Twin) bool {
	if len(t.Tags) > 0 {
		return false
	}
	return t.Properties == nil || len(azurehub.StripMeta(t.Properties.Desired)) == 0
}

// initialTwin turns an enrollment's initial twin into a twin write, or nil.
func initialTwin(it *dps.InitialTwin) (*azurehub.Twin, error) {
	if it == nil {
		return nil, nil
	}
	t := &azurehub.Twin{Properties: &azurehub.TwinProperties{}}
	if err := decodeObject(it.Tags, &t.Tags); err != nil {
		return nil, fmt.Errorf("initial twin tags: %w", err)
	}
	if it.Properties != nil {
		if err := decodeObject(it.Properties.Desired, &t.Properties.Desired); err != nil {
			return nil, fmt.Errorf("initial twin desired properties: %w", err)
		}
	}
	// DPS enrollments may carry the metadata an Azure twin export has.
	t.Tags = azurehub.StripMeta(t.Tags)
	t.Properties.Desired = azurehub.StripMeta(t.Properties.Desired)
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
