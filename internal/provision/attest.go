package provision

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/listcache"
	"github.com/dpsd/dpsd/internal/refusal"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// vouched is the enrollment that vouched for a device, and the keys the
// device proved it holds.
type vouched struct {
	enrollment *dps.IndividualEnrollment
	group      *dps.EnrollmentGroup
	disabled   bool
	// The device's own keys: the individual enrollment's, or the group's
	// keys derived for this registration id.
	primaryKey, secondaryKey string
	// For a device that attested with a certificate: what the registration
	// result says about it, and how its hub authenticates it.
	x509    *dps.X509RegistrationResult
	hubX509 *HubX509
	// viaGroup is the group that vouched when a disabled individual
	// enrollment decides over a group member (enrollment is then set).
	viaGroup string
	// tpm is set for a device that attested with its TPM; tpmBlob is the
	// activation blob its answer carries (registrationState.tpm).
	tpm     bool
	tpmBlob string
}

// boundGroupID is the enrollment group the registration is bound to by
// this proof: empty for an individual enrollment.
func (v *vouched) boundGroupID() string {
	switch {
	case v.group != nil:
		return v.group.EnrollmentGroupID
	case v.viaGroup != "":
		return v.viaGroup
	}
	return ""
}

// attestationType is how the device attested (dps.Attestation*).
func (v *vouched) attestationType() string {
	switch {
	case v.x509 != nil:
		return dps.AttestationX509
	case v.tpm:
		return dps.AttestationTPM
	}
	return dps.AttestationSymmetricKey
}

// errUnauthorized is the one answer to every failed proof, so a caller
// cannot tell an unknown registration id from a wrong key; the reason goes
// to the operator's log only (refusal.Because).
func errUnauthorized(format string, args ...any) error {
	return refusal.Because(dps.Errorf(dps.CodeUnauthorized, "Unauthorized."), format, args...)
}

// attest finds the enrollment that applies to the device and verifies the
// device's proof against it.
//
// Which enrollment may vouch (docs/compatibility.md, "Which enrollment a
// device belongs to"):
//   - An individual enrollment for the registration id decides alone when
//     it exists, even if a group would accept the device (Azure's rule).
//   - Otherwise a group decides. A device whose registration record shows
//     an assignment (or a registration in progress) is bound to the
//     enrollment of that record: only the group the record names may vouch
//     for it, and a record made through an individual enrollment that has
//     since been deleted admits no group. A proof
//     through any other group is refused like a wrong key, so holding
//     another group's key (or a certificate from another group's CA with
//     the same CN) cannot take over a provisioned device's hub identity.
//     Deleting the registration record releases the binding.
func (e *Engine) attest(ctx context.Context, req *Request, prev *enroll.Registration) (*vouched, error) {
	if req.SASToken == "" {
		// Without a token the proof is the TLS client certificate; a
		// device with neither proof is simply unauthorized.
		if len(req.PeerCertificates) > 0 {
			return e.attestX509(ctx, req, prev)
		}
		// A TPM device's first request carries its keys and no proof;
		// the answer is its challenge.
		if req.TPM != nil && req.TPM.EndorsementKey != "" {
			return nil, e.tpmChallenge(ctx, req)
		}
		return nil, errUnauthorized("the request has neither a SAS token nor a TLS client certificate")
	}
	tok, err := sas.Parse(req.SASToken)
	if err != nil {
		return nil, errUnauthorized("the SAS token does not parse: %v", err)
	}
	want := req.IDScope + "/registrations/" + req.RegistrationID
	aud, err := tok.DecodedResource()
	if err != nil {
		return nil, errUnauthorized("the SAS token's resource (sr) does not decode: %v", err)
	}
	if !strings.EqualFold(aud, want) {
		return nil, errUnauthorized("the SAS token is for %q, not %q (wrong ID scope or registration id in sr)", aud, want)
	}
	if tok.ExpiredAt(e.opt.Now()) {
		return nil, refusal.Because(dps.Errorf(dps.CodeUnauthorized, "Unauthorized: the SAS token has expired."),
			"the SAS token expired (se %s; is the device's clock right?)", time.Unix(tok.Expiry, 0).UTC().Format(time.RFC3339))
	}

	ie, err := enroll.GetEnrollment(ctx, e.st, req.RegistrationID)
	switch {
	case err == nil:
		if _, isTPM := tpmEnrollmentEK(ie); isTPM {
			return e.verifyTPM(req, tok, ie)
		}
		v, verr := verifyIndividual(tok, ie)
		if verr != nil && strings.EqualFold(ie.ProvisioningStatus, dps.ProvisioningDisabled) {
			// A disabled individual enrollment is how Azure blocks one
			// device of a group; the device still proves itself with the
			// group's derived key, and learns it is disabled.
			if g, gerr := e.vouch.attestGroup(ctx, tok, req.RegistrationID, bound(prev)); gerr == nil {
				return &vouched{enrollment: ie, disabled: true, viaGroup: g.group.EnrollmentGroupID}, nil
			}
		}
		return v, verr
	case !isNotFound(err):
		return nil, unavailable(err)
	}
	if err := e.checkBinding(req, prev); err != nil {
		return nil, err
	}
	v, err := e.vouch.attestGroup(ctx, tok, req.RegistrationID, bound(prev))
	if err != nil && bound(prev) != "" {
		// Say in the log when another group's key was offered; it costs
		// what a wrong key of an unknown device costs anyway.
		if other, oerr := e.vouch.attestGroup(ctx, tok, req.RegistrationID, ""); oerr == nil {
			e.refusedByBinding(req, prev, other.group.EnrollmentGroupID)
		}
	}
	return v, err
}

// binds reports whether a registration record binds its device to the
// enrollment it names: when the device was assigned (a hub holds an
// identity this enrollment vouched for) or a registration is in progress.
// A record of a registration that failed, or was disabled, before any
// assignment binds nothing: there is nothing to take over.
func binds(prev *enroll.Registration) bool {
	return prev != nil && (prev.Work != nil || prev.State.AssignedHub != "")
}

// bound is the group a registration record binds its device to; empty when
// it binds nothing, or binds to an individual enrollment.
func bound(prev *enroll.Registration) string {
	if !binds(prev) {
		return ""
	}
	return prev.EnrollmentGroupID
}

// checkBinding refuses a group proof for a device whose record binds it to
// an individual enrollment that no longer exists.
func (e *Engine) checkBinding(req *Request, prev *enroll.Registration) error {
	if binds(prev) && prev.EnrollmentGroupID == "" {
		e.refusedByBinding(req, prev, "")
		return errUnauthorized("the device's registration record binds it to an individual enrollment that no longer exists; delete the record to let a group vouch for it")
	}
	return nil
}

// refusedByBinding logs a proof refused because the device is bound to
// another enrollment; the device itself learns only that it is
// unauthorized.
func (e *Engine) refusedByBinding(req *Request, prev *enroll.Registration, group string) {
	boundTo := "an individual enrollment that no longer exists"
	if prev.EnrollmentGroupID != "" {
		boundTo = "enrollment group " + prev.EnrollmentGroupID
	}
	e.log.Info("registration refused: the device is bound to another enrollment; delete its registration record to let it move",
		"registrationId", req.RegistrationID, "transport", req.Transport, "boundTo", boundTo, "offeredGroup", group)
	e.bindingRefusals.Add(1)
}

func isNotFound(err error) bool {
	var de *dps.Error
	return errors.Is(err, store.ErrNotFound) || (errors.As(err, &de) && de.Status() == 404)
}

func verifyIndividual(tok *sas.Token, ie *dps.IndividualEnrollment) (*vouched, error) {
	a := ie.Attestation
	if a == nil || !strings.EqualFold(a.Type, dps.AttestationSymmetricKey) || a.SymmetricKey == nil {
		typ := "no"
		if a != nil {
			typ = a.Type
		}
		return nil, errUnauthorized("individual enrollment %q has %s attestation, and the device sent a SAS token", ie.RegistrationID, typ)
	}
	p, s := decodeKey(a.SymmetricKey.PrimaryKey), decodeKey(a.SymmetricKey.SecondaryKey)
	if tok.VerifyAny(p, s) < 0 {
		return nil, errUnauthorized("the SAS token is signed with neither key of individual enrollment %q", ie.RegistrationID)
	}
	return &vouched{
		enrollment:   ie,
		disabled:     strings.EqualFold(ie.ProvisioningStatus, dps.ProvisioningDisabled),
		primaryKey:   a.SymmetricKey.PrimaryKey,
		secondaryKey: a.SymmetricKey.SecondaryKey,
	}, nil
}

func decodeKey(k string) []byte {
	if k == "" {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		return nil
	}
	return b
}

// vouchCache remembers which symmetric-key group vouched for each
// registration id, and keeps the list of groups, so that a registration
// costs one or two HMACs rather than one per group.
type vouchCache struct {
	max    int
	groups *listcache.Cache[*dps.EnrollmentGroup] // the symmetric-key groups

	mu   sync.Mutex
	byID map[string]string // lower-case registration id → group id
}

func newVouchCache(st store.Store, max int) *vouchCache {
	load := func(ctx context.Context) ([]*dps.EnrollmentGroup, error) { return listSymmetricKeyGroups(ctx, st) }
	return &vouchCache{max: max, groups: listcache.New(groupListTTL, load), byID: make(map[string]string)}
}

func (c *vouchCache) invalidate() { c.groups.Invalidate() }

// groupListTTL bounds how old the group list used to verify a device may
// be. Changes invalidate it at once through Engine.InvalidateEnrollments:
// this node's writes directly, other nodes' through the store's change
// notifications (PostgreSQL). The TTL is the bound when a notification is
// lost, for example while the listener reconnects.
const groupListTTL = 200 * time.Millisecond

// attestGroup finds the symmetric-key group whose derived key signed tok.
// With boundTo set, only that group may vouch (the device's registration
// record names it); otherwise any group, the one that vouched last time
// first.
func (c *vouchCache) attestGroup(ctx context.Context, tok *sas.Token, regID, boundTo string) (*vouched, error) {
	key := strings.ToLower(regID)
	if boundTo != "" {
		g, err := c.group(ctx, boundTo)
		if err != nil && !isNotFound(err) {
			return nil, unavailable(err)
		}
		if g != nil {
			if v := verifyGroup(tok, g, regID); v != nil {
				return v, nil
			}
			return nil, errUnauthorized("the SAS token is not signed with a key derived from enrollment group %q, which the device's registration record binds it to", boundTo)
		}
		return nil, errUnauthorized("the device's registration record binds it to enrollment group %q, which is not a symmetric-key group or no longer exists", boundTo)
	}
	c.mu.Lock()
	remembered := c.byID[key]
	c.mu.Unlock()

	// 1. The group that vouched for this id last time, as this node
	// remembers it.
	if remembered != "" {
		g, err := c.group(ctx, remembered)
		if err != nil && !isNotFound(err) {
			return nil, unavailable(err)
		}
		if g != nil {
			if v := verifyGroup(tok, g, regID); v != nil {
				c.remember(key, g.EnrollmentGroupID)
				return v, nil
			}
		}
	}

	// 2. Every symmetric-key group, most recently successful first. The
	// list is not read again when none vouches: a storm of wrong keys must
	// not be able to make the node read and decode every group document
	// at will, which would make a failed proof cost more the larger the
	// enrollment data. A group created a moment ago is in the list all the
	// same: writes invalidate it at once (see groupListTTL).
	groups, err := c.groupList(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	for _, g := range groups {
		if strings.EqualFold(g.EnrollmentGroupID, remembered) {
			continue
		}
		if v := verifyGroup(tok, g, regID); v != nil {
			c.remember(key, g.EnrollmentGroupID)
			c.promote(g)
			return v, nil
		}
	}
	return nil, errUnauthorized("no individual enrollment %q, and no symmetric-key enrollment group's derived key signed the SAS token", regID)
}

// group returns one group from the list, nil when it does not exist.
func (c *vouchCache) group(ctx context.Context, id string) (*dps.EnrollmentGroup, error) {
	groups, err := c.groupList(ctx)
	if err != nil {
		return nil, err
	}
	return findGroup(groups, id), nil
}

func findGroup(groups []*dps.EnrollmentGroup, id string) *dps.EnrollmentGroup {
	for _, g := range groups {
		if strings.EqualFold(g.EnrollmentGroupID, id) {
			return g
		}
	}
	return nil
}

func verifyGroup(tok *sas.Token, g *dps.EnrollmentGroup, regID string) *vouched {
	a := g.Attestation
	if a == nil || !strings.EqualFold(a.Type, dps.AttestationSymmetricKey) || a.SymmetricKey == nil {
		return nil
	}
	var p, s []byte
	if k := decodeKey(a.SymmetricKey.PrimaryKey); k != nil {
		p = sas.DeriveKeyBytes(k, regID)
	}
	if k := decodeKey(a.SymmetricKey.SecondaryKey); k != nil {
		s = sas.DeriveKeyBytes(k, regID)
	}
	if tok.VerifyAny(p, s) < 0 {
		return nil
	}
	return &vouched{
		group:        g,
		disabled:     strings.EqualFold(g.ProvisioningStatus, dps.ProvisioningDisabled),
		primaryKey:   encodeKey(p),
		secondaryKey: encodeKey(s),
	}
}

func encodeKey(b []byte) string {
	if b == nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}

// groupList returns the symmetric-key groups as they were at most
// groupListTTL ago.
func (c *vouchCache) groupList(ctx context.Context) ([]*dps.EnrollmentGroup, error) {
	return c.groups.List(ctx)
}

// listSymmetricKeyGroups reads every symmetric-key enrollment group.
func listSymmetricKeyGroups(ctx context.Context, st store.Store) ([]*dps.EnrollmentGroup, error) {
	all := []*dps.EnrollmentGroup{}
	opt := store.ListOptions{Limit: 1000}
	for range 1000 { // bounded: 1,000 pages of 1,000 groups
		page, more, err := enroll.ListGroups(ctx, st, opt)
		if err != nil {
			return nil, fmt.Errorf("list enrollment groups: %w", err)
		}
		for _, g := range page {
			if g.Attestation != nil && strings.EqualFold(g.Attestation.Type, dps.AttestationSymmetricKey) {
				all = append(all, g)
			}
		}
		if !more || len(page) == 0 {
			break
		}
		opt.After = page[len(page)-1].EnrollmentGroupID
	}
	return all, nil
}

// promote moves g to the front of the current list, so fleets dominated by
// one group find it with the first HMAC. The list may have been reloaded
// since g was read from it; then g is found by id, or left alone.
func (c *vouchCache) promote(g *dps.EnrollmentGroup) {
	c.groups.Update(func(cur []*dps.EnrollmentGroup) []*dps.EnrollmentGroup {
		i := slices.IndexFunc(cur, func(x *dps.EnrollmentGroup) bool {
			return strings.EqualFold(x.EnrollmentGroupID, g.EnrollmentGroupID)
		})
		if i <= 0 {
			return cur
		}
		// A new slice: callers of groupList may still be reading cur.
		groups := make([]*dps.EnrollmentGroup, 0, len(cur))
		groups = append(groups, cur[i])
		groups = append(groups, cur[:i]...)
		groups = append(groups, cur[i+1:]...)
		return groups
	})
}

func (c *vouchCache) remember(regKey, groupID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.byID) >= c.max {
		// Forget a random tenth; the registration record still remembers.
		n := c.max / 10
		for k := range c.byID {
			if n == 0 {
				break
			}
			delete(c.byID, k)
			n--
		}
	}
	// A copy: regKey may share its bytes with the whole request line it
	// was cut from, which the cache would otherwise keep alive.
	c.byID[strings.Clone(regKey)] = groupID
}
