package enroll

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

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

	etag string
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
	r.etag = rec.ETag
	created, updated := rec.Created, rec.Updated
	r.State.CreatedDateTimeUTC = &created
	r.State.LastUpdatedDateTimeUTC = &updated
	r.State.ETag = RegistrationETag(rec.ETag)
	return &r, nil
}

// PutRegistration writes r under cond and returns it as stored.
func PutRegistration(ctx context.Context, st store.Store, r *Registration, cond store.Condition) (*Registration, error) {
	c := *r
	c.State.CreatedDateTimeUTC, c.State.LastUpdatedDateTimeUTC, c.State.ETag = nil, nil, ""
	data, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encode registration: %w", err)
	}
	rec, err := st.Put(ctx, store.Record{
		Kind: store.KindRegistration, ID: r.State.RegistrationID, Ref: r.EnrollmentGroupID, Data: data,
	}, cond)
	if err != nil {
		return nil, fmt.Errorf("put registration %q: %w", r.State.RegistrationID, err)
	}
	return decodeRegistration(rec)
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
