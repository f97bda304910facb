package linkedhub

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// Kind is the store collection of linked hubs, keyed by hub host name.
const Kind = store.KindLinkedHub

// Limits, as Azure has them.
const (
	MaxHubs          = 50
	MinWeight        = 1
	MaxWeight        = 1000
	DefaultWeight    = 1
	maxLocationBytes = 128
	// MaxCABytes bounds a hub's CA bundle: a few certificates, not a
	// system trust store.
	MaxCABytes = 64 << 10
)

// ErrNotFound is returned (wrapped) for a hub that is not linked.
var ErrNotFound = errors.New("linked hub not found")

// Hub is the wire form of a linked hub, defined in api/admin.
type Hub = admin.LinkedHub

// Redacted returns a copy of h whose connection string shows its key as
// "****", for output and logs.
func Redacted(h *Hub) *Hub {
	v := *h
	if cs, err := sas.ParseConnectionString(h.ConnectionString); err == nil {
		v.ConnectionString = cs.Redacted()
	} else {
		// A stored string is always valid; never echo one that is not.
		v.ConnectionString = "****"
	}
	return &v
}

// Definition is the wire form of a link request, defined in api/admin.
type Definition = admin.LinkedHubDefinition

// Registry reads and writes linked hubs in a store. It is safe for
// concurrent use, and several dpsd nodes may share the store: every change
// is a compare-and-swap, and nothing is cached.
type Registry struct {
	st store.Store
}

// New returns a registry over st.
func New(st store.Store) *Registry { return &Registry{st: st} }

// List returns every linked hub, ordered by name.
func (r *Registry) List(ctx context.Context) ([]*Hub, error) {
	var out []*Hub
	opt := store.ListOptions{Limit: store.DefaultListLimit}
	// Bounded: far more pages than MaxHubs could ever need.
	for range 100 {
		recs, more, err := r.st.List(ctx, Kind, opt)
		if err != nil {
			return nil, fmt.Errorf("list linked hubs: %w", err)
		}
		for _, rec := range recs {
			h, err := decode(rec)
			if err != nil {
				return nil, err
			}
			out = append(out, h)
		}
		if !more || len(recs) == 0 {
			return out, nil
		}
		opt.After = recs[len(recs)-1].ID
	}
	return out, nil
}

// Get returns the hub named name (its host name, any case).
func (r *Registry) Get(ctx context.Context, name string) (*Hub, error) {
	rec, err := r.st.Get(ctx, Kind, name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notLinked(name)
		}
		return nil, fmt.Errorf("get linked hub %q: %w", name, err)
	}
	return decode(rec)
}

// HubConnectionString returns the connection string of the linked hub with
// host name hostName, for the hub registrar. A hub that is not linked gives
// an error that is both ErrNotFound and a *dps.Error with code
// dps.CodeIoTHubNotLinked, so the engine can fail the registration with it.
func (r *Registry) HubConnectionString(ctx context.Context, hostName string) (*sas.ConnectionString, error) {
	h, err := r.Get(ctx, hostName)
	if err != nil {
		return nil, err
	}
	cs, err := sas.ParseConnectionString(h.ConnectionString)
	if err != nil {
		return nil, fmt.Errorf("linked hub %q: stored %w", h.Name, err)
	}
	return cs, nil
}

// HubCredentials returns what the hub registrar needs to reach the linked
// hub with host name hostName: its connection string, and the CA
// certificates to trust for it (nil for the system roots). Errors are as
// HubConnectionString's.
func (r *Registry) HubCredentials(ctx context.Context, hostName string) (*sas.ConnectionString, *x509.CertPool, error) {
	h, err := r.Get(ctx, hostName)
	if err != nil {
		return nil, nil, err
	}
	cs, err := sas.ParseConnectionString(h.ConnectionString)
	if err != nil {
		return nil, nil, fmt.Errorf("linked hub %q: stored %w", h.Name, err)
	}
	if h.CACertificates == "" {
		return cs, nil, nil
	}
	pool, err := CAPool(h.CACertificates)
	if err != nil {
		return nil, nil, fmt.Errorf("linked hub %q: stored CA certificates: %w", h.Name, err)
	}
	return cs, pool, nil
}

// CAPool parses a PEM bundle of CA certificates. It fails on anything
// that is not a CERTIFICATE block, and on a bundle with no certificate.
func CAPool(bundle string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	rest := []byte(bundle)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is a %s, not a CERTIFICATE", n+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("text after the last PEM block is not PEM")
	}
	return pool, nil
}

// Create links a new hub. It fails with dps.CodeConflict if a hub with the
// same host name is linked already.
func (r *Registry) Create(ctx context.Context, def Definition) (*Hub, error) {
	h := &Hub{AllocationWeight: DefaultWeight, ApplyAllocationPolicy: true}
	if def.ConnectionString == "" {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The connectionString of the IoT hub is required.")
	}
	if err := apply(h, def); err != nil {
		return nil, err
	}
	if err := r.checkLimit(ctx); err != nil {
		return nil, err
	}
	saved, err := r.put(ctx, h, store.Condition{MustNotExist: true})
	if errors.Is(err, store.ErrExists) {
		return nil, dps.Errorf(dps.CodeConflict, "The IoT hub %s is already linked.", h.Name)
	}
	return saved, err
}

// Update changes a linked hub. Members absent from def keep their values;
// a new connection string must name the same host. ifMatch, when not empty,
// must be the hub's current etag ("*" matches any).
func (r *Registry) Update(ctx context.Context, name string, def Definition, ifMatch string) (*Hub, error) {
	// Bounded retries of the read-modify-write when another writer wins.
	for range 5 {
		h, err := r.Get(ctx, name)
		if err != nil {
			return nil, err
		}
		if ifMatch != "" && !enroll.ETagMatch(h.ETag, ifMatch) {
			return nil, dps.Errorf(dps.CodePreconditionFailed, "The etag %s does not match the linked hub's current etag.", ifMatch)
		}
		etag := h.ETag
		if err := apply(h, def); err != nil {
			return nil, err
		}
		if !strings.EqualFold(h.Name, name) {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "The connection string names host %s, not the linked hub %s; link it as a new hub instead.", h.Name, name)
		}
		saved, err := r.put(ctx, h, store.Condition{IfMatch: etag})
		if errors.Is(err, store.ErrPrecondition) {
			if ifMatch != "" && ifMatch != "*" {
				return nil, dps.Errorf(dps.CodePreconditionFailed, "The linked hub changed while it was being updated.")
			}
			continue
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, notLinked(name)
		}
		return saved, err
	}
	return nil, dps.Errorf(dps.CodeConflict, "The linked hub %s is being changed concurrently; try again.", name)
}

// KeyProbe checks that a connection string and CA pool (nil: the system
// roots) are accepted by the hub they name (hub.Registrar.ProbeCredentials).
type KeyProbe func(ctx context.Context, cs *sas.ConnectionString, roots *x509.CertPool) error

// RotateKey replaces a linked hub's connection string with rot's, which
// must name the same host, keeping everything else (weight, location, CA
// bundle) and the link itself: devices and enrollments see no change.
// Unless rot.SkipCheck, probe must accept the new connection string first;
// a rejected key leaves the link as it was, with dps.CodeInvalidArgument
// saying why. ifMatch works as in Update.
func (r *Registry) RotateKey(ctx context.Context, name string, rot admin.LinkedHubKeyRotation, ifMatch string, probe KeyProbe) (*Hub, error) {
	if rot.ConnectionString == "" {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The new connectionString of the IoT hub is required.")
	}
	cur, err := r.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	probeHub := &Hub{}
	if err := apply(probeHub, Definition{ConnectionString: rot.ConnectionString}); err != nil {
		return nil, err
	}
	if !strings.EqualFold(probeHub.Name, cur.Name) {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The connection string names host %s, not the linked hub %s; link it as a new hub instead.", probeHub.Name, cur.Name)
	}
	if !rot.SkipCheck && probe != nil {
		cs, _ := sas.ParseConnectionString(probeHub.ConnectionString)
		var roots *x509.CertPool
		if cur.CACertificates != "" {
			if roots, err = CAPool(cur.CACertificates); err != nil {
				return nil, fmt.Errorf("linked hub %q: stored CA certificates: %w", cur.Name, err)
			}
		}
		if err := probe(ctx, cs, roots); err != nil {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "The hub %s did not accept the new connection string, so the old one stays in use: %v", cur.Name, err)
		}
	}
	return r.Update(ctx, name, Definition{ConnectionString: rot.ConnectionString}, ifMatch)
}

// Put links the hub def describes, or updates it if it is linked already,
// so that start-up code can link built-in hubs idempotently.
func (r *Registry) Put(ctx context.Context, def Definition) (*Hub, error) {
	h, err := r.Create(ctx, def)
	var de *dps.Error
	if errors.As(err, &de) && de.ErrorCode == dps.CodeConflict {
		cs, perr := sas.ParseConnectionString(def.ConnectionString)
		if perr != nil {
			return nil, err
		}
		return r.Update(ctx, cs.HostName, def, "")
	}
	return h, err
}

// Upsert updates the linked hub name as Update does, or links the hub def
// describes if name is not linked (ifMatch then does not apply), and
// reports whether it linked it. Unlike Get then Create, it does not fail
// when another writer links the hub in between: it updates it instead.
func (r *Registry) Upsert(ctx context.Context, name string, def Definition, ifMatch string) (h *Hub, created bool, err error) {
	for range 5 {
		h, err = r.Update(ctx, name, def, ifMatch)
		if !errors.Is(err, ErrNotFound) {
			return h, false, err
		}
		h, err = r.Create(ctx, def)
		var de *dps.Error
		if !errors.As(err, &de) || de.ErrorCode != dps.CodeConflict {
			return h, err == nil, err
		}
	}
	return nil, false, dps.Errorf(dps.CodeConflict, "The linked hub %s is being changed concurrently; try again.", name)
}

// Delete unlinks a hub. ifMatch works as in Update. Enrollments that name
// the hub keep its name; allocation then reports it as not linked.
func (r *Registry) Delete(ctx context.Context, name, ifMatch string) error {
	// Clients send the etag quoted or not, as for enrollments.
	err := r.st.Delete(ctx, Kind, name, store.Condition{IfMatch: enroll.NormalizeETag(ifMatch)})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notLinked(name)
	case errors.Is(err, store.ErrPrecondition):
		return dps.Errorf(dps.CodePreconditionFailed, "The etag %s does not match the linked hub's current etag.", ifMatch)
	case err != nil:
		return fmt.Errorf("delete linked hub %q: %w", name, err)
	}
	return nil
}

func (r *Registry) checkLimit(ctx context.Context) error {
	recs, _, err := r.st.List(ctx, Kind, store.ListOptions{Limit: MaxHubs})
	if err != nil {
		return fmt.Errorf("count linked hubs: %w", err)
	}
	if len(recs) >= MaxHubs {
		return dps.Errorf(dps.CodeInvalidArgument, "At most %d IoT hubs can be linked.", MaxHubs)
	}
	return nil
}

func (r *Registry) put(ctx context.Context, h *Hub, cond store.Condition) (*Hub, error) {
	doc := *h
	doc.ETag, doc.CreatedDateTimeUTC, doc.LastUpdatedDateTimeUTC, doc.Health = "", nil, nil, nil
	data, err := json.Marshal(&doc)
	if err != nil {
		return nil, fmt.Errorf("encode linked hub: %w", err)
	}
	rec, err := r.st.Put(ctx, store.Record{Kind: Kind, ID: h.Name, Data: data}, cond)
	if err != nil {
		return nil, fmt.Errorf("save linked hub %q: %w", h.Name, err)
	}
	return decode(rec)
}

// apply validates def and copies its members into h.
func apply(h *Hub, def Definition) error {
	if def.ConnectionString != "" {
		cs, err := sas.ParseConnectionString(def.ConnectionString)
		if err != nil {
			// The parser's messages never include the key.
			return dps.Errorf(dps.CodeInvalidArgument, "The IoT hub connection string is not valid: %v.", err)
		}
		if cs.DeviceID != "" || cs.SharedAccessKeyName == "" {
			return dps.Errorf(dps.CodeInvalidArgument, "The connection string must be an IoT hub shared access policy's (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...), not a device's.")
		}
		host := strings.TrimSpace(cs.HostName)
		if host == "" || strings.ContainsAny(host, "/?#@ \t") {
			return dps.Errorf(dps.CodeInvalidArgument, "The connection string's HostName %q is not a host name.", cs.HostName)
		}
		cs.HostName = host
		h.Name = host
		h.ConnectionString = cs.String()
	}
	if def.Name != "" && !strings.EqualFold(def.Name, h.Name) {
		return dps.Errorf(dps.CodeInvalidArgument, "The name %s is not the host name %s of the hub's connection string.", def.Name, h.Name)
	}
	if w := def.AllocationWeight; w != nil {
		if *w < MinWeight || *w > MaxWeight {
			return dps.Errorf(dps.CodeInvalidArgument, "The allocationWeight must be between %d and %d, not %d.", MinWeight, MaxWeight, *w)
		}
		h.AllocationWeight = *w
	}
	if a := def.ApplyAllocationPolicy; a != nil {
		h.ApplyAllocationPolicy = *a
	}
	if l := def.Location; l != nil {
		loc := strings.TrimSpace(*l)
		if len(loc) > maxLocationBytes || strings.ContainsAny(loc, "\r\n\t") {
			return dps.Errorf(dps.CodeInvalidArgument, "The location must be a single line of at most %d bytes.", maxLocationBytes)
		}
		h.Location = loc
	}
	if c := def.CACertificates; c != nil {
		bundle := strings.TrimSpace(*c)
		if len(bundle) > MaxCABytes {
			return dps.Errorf(dps.CodeInvalidArgument, "The caCertificates bundle is larger than %d bytes.", MaxCABytes)
		}
		if bundle != "" {
			if _, err := CAPool(bundle); err != nil {
				return dps.Errorf(dps.CodeInvalidArgument, "The caCertificates bundle is not valid PEM of CA certificates: %v.", err)
			}
			bundle += "\n"
		}
		h.CACertificates = bundle
	}
	return nil
}

func decode(rec store.Record) (*Hub, error) {
	var h Hub
	if err := json.Unmarshal(rec.Data, &h); err != nil {
		return nil, fmt.Errorf("decode linked hub %q: %w", rec.ID, err)
	}
	if h.AllocationWeight == 0 {
		h.AllocationWeight = DefaultWeight
	}
	created, updated := rec.Created.UTC(), rec.Updated.UTC()
	h.ETag = rec.ETag
	h.CreatedDateTimeUTC, h.LastUpdatedDateTimeUTC = &created, &updated
	return &h, nil
}

// notLinkedError is what lookups of an unlinked hub return: ErrNotFound for
// callers that test with errors.Is, and a dps error the engine can put in a
// failed registration.
type notLinkedError struct {
	de *dps.Error
}

func notLinked(name string) error {
	return &notLinkedError{de: dps.Errorf(dps.CodeIoTHubNotLinked, "The IoT hub %s is not linked to this provisioning service.", name)}
}

func (e *notLinkedError) Error() string   { return e.de.Message }
func (e *notLinkedError) Unwrap() []error { return []error{ErrNotFound, e.de} }
