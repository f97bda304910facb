package enroll

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// Registration is the stored registration record of one device: the state
// that the service and device APIs show, and what the engine needs to
// answer polls and re-registrations.
type Registration struct {
	State dps.DeviceRegistrationState `json:"state"`
	// OperationID is the device's latest register operation.
	OperationID string `json:"operationId"`
	// EnrollmentGroupID is the group that vouched for the device, empty for
	// an individual enrollment. It is also the record's Ref, so registrations
	// can be listed by group.
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	// DevicePayload is the payload the device sent with its last register.
	DevicePayload json.RawMessage `json:"devicePayload,omitempty"`
	// AttestationType is how the device attested (dps.Attestation*).
	AttestationType string `json:"attestationType,omitempty"`
	// Identity is the device identity that the committed state put in the
	// hub State.AssignedHub names: what that hub must hold for the record
	// and the hub to agree. Nil when dpsd put nothing there (records written
	// before dpsd kept it, and registrations that never succeeded).
	Identity *HubIdentity `json:"identity,omitempty"`
	// IssuedChain is the certificate chain issued for the csr of the
	// operation OperationID names (base64 DER, leaf first), which the
	// device receives as issuedCertificateChain; empty when it sent none.
	IssuedChain []string `json:"issuedChain,omitempty"`
	// IssuingCA is the PEM certificate of the CA that issued
	// State.IssuedCertificate: the hub trusts it for this device.
	IssuingCA string `json:"issuingCA,omitempty"`
	// Work is the register operation in progress, nil when none is.
	Work *Work `json:"work,omitempty"`

	etag string
}

// HubIdentity is a device identity as dpsd writes it to a hub: where, under
// which id, and the credentials the device proved. It is what `dpsd doctor`
// compares with the hub.
type HubIdentity struct {
	Hub      string `json:"hub"`
	DeviceID string `json:"deviceId"`
	// PrimaryKey and SecondaryKey are set for a symmetric-key device.
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
	// PrimaryThumbprint and SecondaryThumbprint are set for a device the
	// hub authenticates by pinned certificates ("selfSigned").
	PrimaryThumbprint   string `json:"primaryThumbprint,omitempty"`
	SecondaryThumbprint string `json:"secondaryThumbprint,omitempty"`
	// CertificateAuthority is set for a device the hub authenticates by a
	// certificate that a CA vouches for.
	CertificateAuthority bool `json:"certificateAuthority,omitempty"`
	IoTEdge              bool `json:"iotEdge,omitempty"`
}

// Work is a register operation in progress: the intent that is durable
// before any hub is touched, so that whoever finds it after a crash can
// finish it or undo it.
type Work struct {
	// Owner names the process doing the work: "node/boot".
	Owner string `json:"owner"`
	// LeaseUntil is when the work counts as abandoned unless the owner
	// renews it; another process may then take it over.
	LeaseUntil time.Time `json:"leaseUntil"`
	// Prior is the record the operation replaces, restored when the
	// operation is undone; nil when the device had none.
	Prior *Registration `json:"prior,omitempty"`
	// Target is the hub write the operation performs (the engine's
	// HubDevice, as JSON), set before the hub is touched; empty while the
	// hub is still being chosen.
	Target json.RawMessage `json:"target,omitempty"`
	// Final is the record to commit once the hub write succeeded; set with
	// Target.
	Final *Registration `json:"final,omitempty"`
}

// WithoutETag returns a copy of r for embedding in another record: no etag,
// no times, no work.
func (r *Registration) WithoutETag() *Registration {
	c := *r
	c.etag = ""
	c.Work = nil
	c.State.CreatedDateTimeUTC, c.State.LastUpdatedDateTimeUTC, c.State.ETag = nil, nil, ""
	return &c
}

// ETag is the store etag the record was read with.
func (r *Registration) ETag() string { return r.etag }

// ErrRegistrationNotFound is returned when a device has no registration record.
var ErrRegistrationNotFound = dps.Errorf(dps.CodeRegistrationNotFound, "Registration not found.")

// GetRegistration reads a registration record; the returned state carries
// the record's times and its etag in Azure's base64-of-quoted form.
func GetRegistration(ctx context.Context, st store.Store, registrationID string) (*Registration, error) {
	rec, err := st.Get(ctx, store.KindRegistration, registrationID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, ErrRegistrationNotFound
		}
		return nil, fmt.Errorf("get registration %q: %w", registrationID, err)
	}
	return decodeRegistration(rec)
}

func decodeRegistration(rec store.Record) (*Registration, error) {
	var r Registration
	if err := json.Unmarshal(rec.Data, &r); err != nil {
		return nil, fmt.Errorf("decode registration %q: %w", rec.ID, err)
	}
	r.setStored(rec)
	return &r, nil
}

// setStored gives r the etag and times the store gave rec.
func (r *Registration) setStored(rec store.Record) {
	r.etag = rec.ETag
	created, updated := rec.Created, rec.Updated
	r.State.CreatedDateTimeUTC = &created
	r.State.LastUpdatedDateTimeUTC = &updated
	r.State.ETag = RegistrationETag(rec.ETag)
}

// PutRegistration writes r under cond and returns it as stored.
func PutRegistration(ctx context.Context, st store.Store, r *Registration, cond store.Condition) (*Registration, error) {
	w, stored, err := RegistrationWrite(r, cond)
	if err != nil {
		return nil, err
	}
	rec, err := st.Put(ctx, w.Record, w.Cond)
	if err != nil {
		return nil, fmt.Errorf("put registration %q: %w", r.State.RegistrationID, err)
	}
	return stored(rec), nil
}

// RegistrationWrite returns the store write that puts r under cond, for a
// batch (store.Batcher), and a function that turns the record the store
// returns for it into r as stored.
func RegistrationWrite(r *Registration, cond store.Condition) (store.Write, func(store.Record) *Registration, error) {
	c := *r
	c.State.CreatedDateTimeUTC, c.State.LastUpdatedDateTimeUTC, c.State.ETag = nil, nil, ""
	data, err := json.Marshal(&c)
	if err != nil {
		return store.Write{}, nil, fmt.Errorf("encode registration: %w", err)
	}
	w := store.Write{
		Record: store.Record{Kind: store.KindRegistration, ID: r.State.RegistrationID, Ref: r.EnrollmentGroupID, Data: data},
		Cond:   cond,
	}
	stored := func(rec store.Record) *Registration {
		// What was stored is c: a copy of it, rather than a decoding of
		// what was just encoded (an intent carries its prior and final
		// records, and decoding it was a tenth of a registration's CPU).
		// Nested records are never changed in place once written, so
		// sharing them is safe; the two the engine fills in are copied.
		out := c
		if out.Identity != nil {
			id := *out.Identity
			out.Identity = &id
		}
		if out.Work != nil {
			w := *out.Work
			out.Work = &w
		}
		out.setStored(rec)
		return &out
	}
	return w, stored, nil
}

// DeleteRegistration removes a registration record. ifMatch may be empty,
// "*", or the etag as the APIs show it (base64 of the quoted store etag).
func DeleteRegistration(ctx context.Context, st store.Store, registrationID, ifMatch string) error {
	cond := store.Condition{IfMatch: storeETagFromRegistration(ifMatch)}
	err := st.Delete(ctx, store.KindRegistration, registrationID, cond)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return ErrRegistrationNotFound
	case errors.Is(err, store.ErrPrecondition):
		// The store says the same for a record that is not there.
		if _, gerr := st.Get(ctx, store.KindRegistration, registrationID); errors.Is(gerr, store.ErrNotFound) {
			return ErrRegistrationNotFound
		}
		return dps.Errorf(dps.CodePreconditionFailed, "The registration's etag does not match If-Match.")
	case err != nil:
		return fmt.Errorf("delete registration %q: %w", registrationID, err)
	}
	return nil
}

// ListRegistrations returns a page of the registration records of a group.
func ListRegistrations(ctx context.Context, st store.Store, groupID string, opt store.ListOptions) ([]*Registration, bool, error) {
	opt.Ref = groupID
	recs, more, err := st.List(ctx, store.KindRegistration, opt)
	if err != nil {
		return nil, false, fmt.Errorf("list registrations of %q: %w", groupID, err)
	}
	out := make([]*Registration, 0, len(recs))
	for _, rec := range recs {
		r, err := decodeRegistration(rec)
		if err != nil {
			return nil, false, err
		}
		out = append(out, r)
	}
	return out, more, nil
}

// RegistrationETag renders a store etag the way Azure shows registration
// etags: base64 of the etag in double quotes.
func RegistrationETag(storeETag string) string {
	return base64.StdEncoding.EncodeToString([]byte(`"` + storeETag + `"`))
}

// storeETagFromRegistration undoes RegistrationETag, accepting the value with
// or without surrounding quotes, and passes "*" and "" through.
func storeETagFromRegistration(v string) string {
	v = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "W/"))
	if v == "" || v == "*" || v == `"*"` {
		return strings.Trim(v, `"`)
	}
	v = strings.Trim(v, `"`)
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return v // not ours; it will not match
	}
	return strings.Trim(string(raw), `"`)
}
