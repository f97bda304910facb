package hub

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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

// TrustedCredentials is implemented by Credentials that also know which
// CAs to trust for a hub with a private certificate (a nil pool means the
// system roots); *linkedhub.Registry is one. The registrar prefers it.
type TrustedCredentials interface {
	HubCredentials(ctx context.Context, hostName string) (*sas.ConnectionString, *x509.CertPool, error)
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
	cs     string         // the connection string the client was built from
	roots  *x509.CertPool // and the CAs it trusts
	client *azurehub.Client
}

var (
	_ provision.Registrar    = (*Registrar)(nil)
	_ provision.DeviceLister = (*Registrar)(nil)
	_ provision.Stager       = (*Registrar)(nil)
)

// deviceStager is implemented by hubs that keep their identities in the
// engine's store (builtinhub.Hub).
type deviceStager interface {
	StageNewDevice(ctx context.Context, in *azurehub.Device, twin *azurehub.Twin) (w store.Write, committed func(), ok bool, err error)
	StageKeep(ctx context.Context, id string) (w store.Write, dev *azurehub.Device, twin *azurehub.Twin, ok bool, err error)
}

// StageDevice implements provision.Stager for devices of a built-in hub of
// this process that are not moving from another hub: a new device is the
// one store write that creates its identity with its initial twin; a
// device the hub already holds exactly as RegisterDevice would leave it
// (the same credentials, no twin to reset or to fill) is a write that only
// checks it stays so. Anything else goes through RegisterDevice.
func (r *Registrar) StageDevice(ctx context.Context, dev *provision.HubDevice) (*provision.Staged, error) {
	if r.opt.Local == nil || dev.Hub == "" || dev.DeviceID == "" ||
		dev.PreviousHub != "" && !strings.EqualFold(dev.PreviousHub, dev.Hub) {
		return nil, nil
	}
	reg, ok := r.opt.Local.Registry(dev.Hub)
	if !ok {
		return nil, nil
	}
	sg, ok := reg.(deviceStager)
	if !ok {
		return nil, nil
	}
	if caVouched(dev) {
		// A device its CA vouched for: the hub must also learn to trust
		// that CA for it, which RegisterDevice does.
		return nil, nil
	}
	initial, err := initialTwin(dev.InitialTwin)
	if err != nil {
		return nil, err
	}
	want := identity(dev)
	w, committed, ok, err := sg.StageNewDevice(ctx, want, initial)
	if err != nil {
		return nil, err
	}
	if ok {
		return &provision.Staged{Writes: []store.Write{w}, Committed: committed}, nil
	}
	w, cur, twin, ok, err := sg.StageKeep(ctx, dev.DeviceID)
	if err != nil || !ok {
		return nil, err
	}
	if !sameIdentity(cur, want) || dev.ResetTwin || initial != nil && pristine(twin) {
		return nil, nil
	}
	return &provision.Staged{Writes: []store.Write{w}}, nil
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
	if err := trustCAs(ctx, to, dev); err != nil {
		return fmt.Errorf("CA certificates for hub %s: %w", dev.Hub, err)
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
	var (
		cs    *sas.ConnectionString
		roots *x509.CertPool
		err   error
	)
	if tc, ok := r.opt.Credentials.(TrustedCredentials); ok {
		cs, roots, err = tc.HubCredentials(ctx, host)
	} else {
		cs, err = r.opt.Credentials.HubConnectionString(ctx, host)
	}
	if err != nil {
		return nil, fmt.Errorf("hub %s: credentials: %w", host, err)
	}
	key := strings.ToLower(host)
	s := cs.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[key]; ok && c.cs == s && samePool(c.roots, roots) {
		return c.client, nil
	}
	opts := r.opt.ClientOptions
	if roots != nil {
		// After the shared options, so the hub's own CAs win.
		opts = append(slices.Clone(opts), azurehub.WithRootCAs(roots))
	}
	c, err := azurehub.NewClient(cs, opts...)
	if err != nil {
		return nil, fmt.Errorf("hub %s: %w", host, err)
	}
	r.clients[key] = &cachedClient{cs: s, roots: roots, client: c}
	return c, nil
}

// samePool reports whether two CA pools (nil: the system roots) trust the
// same certificates.
func samePool(a, b *x509.CertPool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

// Probe checks that the hub with host name host answers, for the health
// checks of linked hubs: a built-in hub running in this process is asked
// in-process (a read of its registry, which reaches the store), any other
// hub over REST for its registry statistics, with the same credentials
// and CAs as registrations use. It returns nil when the hub answered.
func (r *Registrar) Probe(ctx context.Context, host string) error {
	reg, err := r.registry(ctx, host)
	if err != nil {
		return err
	}
	if c, ok := reg.(*azurehub.Client); ok {
		_, err := c.DeviceStatistics(ctx)
		return err
	}
	// Any id will do: the read succeeds (found or not found) whenever
	// the registry, and the store under it, answers.
	_, err = reg.GetDevice(ctx, "$dpsd-health-probe")
	if err == nil || errors.Is(err, azurehub.ErrNotFound) {
		return nil
	}
	return err
}

// keyChecker is a built-in hub's, which can say whether a key is its own
// without a network round trip (*builtinhub.Hub).
type keyChecker interface {
	CheckKey(keyName, key string) error
}

// ProbeCredentials checks that cs (a hub connection string) and the CAs
// in roots (nil: the system roots) reach the hub cs names and are
// accepted by it, before a linked hub's rotated key replaces the one in
// use: a built-in hub running in this process checks the key itself, any
// other hub is asked for its registry statistics with a client made for
// this check alone.
func (r *Registrar) ProbeCredentials(ctx context.Context, cs *sas.ConnectionString, roots *x509.CertPool) error {
	if r.opt.Local != nil {
		if reg, ok := r.opt.Local.Registry(cs.HostName); ok {
			if kc, ok := reg.(keyChecker); ok {
				return kc.CheckKey(cs.SharedAccessKeyName, cs.SharedAccessKey)
			}
		}
	}
	opts := slices.Clone(r.opt.ClientOptions)
	if roots != nil {
		opts = append(opts, azurehub.WithRootCAs(roots))
	}
	c, err := azurehub.NewClient(cs, opts...)
	if err != nil {
		return err
	}
	_, err = c.DeviceStatistics(ctx)
	return err
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

// trustCAs tells a hub that can take them (a built-in hub) which CA
// certificates vouched for a certificateAuthority device, so that device
// can connect with its certificate. On an Azure hub the operator uploads
// and verifies the CA certificate instead, as with Azure DPS.
func trustCAs(ctx context.Context, reg azurehub.Registry, dev *provision.HubDevice) error {
	ct, ok := reg.(azurehub.DeviceCAs)
	if !ok || !caVouched(dev) {
		return nil
	}
	return ct.TrustDeviceCAs(ctx, dev.DeviceID, vouchedCAs(dev))
}

// vouchedCAs are the CA certificates (PEM) that vouched for a
// certificateAuthority device.
func vouchedCAs(dev *provision.HubDevice) []string {
	if !caVouched(dev) {
		return nil
	}
	return dev.X509.CACertificates
}

// caVouched reports whether dev attested with a certificate that a CA
// vouched for (a group, or an individual enrollment's CA references),
// rather than one known by its thumbprint.
func caVouched(dev *provision.HubDevice) bool {
	return dev.X509 != nil && dev.X509.PrimaryThumbprint == ""
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
