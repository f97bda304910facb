package provision

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

// X.509 attestation (device-protocol.md §6, service-api.md §6.4).
//
// The device proves it holds its certificate's key in the TLS handshake;
// the transports hand the chain it presented to the engine, which decides
// here which enrollment, if any, vouches for that certificate:
//
//  1. The leaf itself must fit: subject CN = registration id, valid now,
//     usable for client authentication.
//  2. An individual enrollment for the registration id decides alone: its
//     clientCertificates must hold the leaf (compared by thumbprint), or the
//     chain must reach one of its caReferences.
//  3. Otherwise the enrollment group whose certificate (signingCertificates
//     or a verified CA named in caReferences) is nearest to the leaf in a
//     valid chain decides: an intermediate's group before the root's.
//
// A disabled enrollment that decides makes the registration "disabled",
// which is how a single device of a group is revoked. Every failure is
// 401002, and nothing is recorded for it.

// errInvalidCertificate is the answer to a certificate no enrollment
// accepts, as Azure words it.
func errInvalidCertificate(detail string) error {
	if detail == "" {
		return dps.Errorf(dps.CodeUnauthorizedDevice, "Invalid certificate.")
	}
	return dps.Errorf(dps.CodeUnauthorizedDevice, "Invalid certificate: %s", detail)
}

// attestX509 attests a device that presented a client certificate. prev is
// its registration record, if any, which binds it to one enrollment (see
// attest).
func (e *Engine) attestX509(ctx context.Context, req *Request, prev *enroll.Registration) (*vouched, error) {
	leaf := req.PeerCertificates[0]
	if err := checkDeviceCertificate(leaf, req.RegistrationID, e.opt.Now()); err != nil {
		return nil, err
	}
	ie, err := enroll.GetEnrollment(ctx, e.st, req.RegistrationID)
	switch {
	case err == nil:
		v, verr := e.verifyX509Individual(ctx, req, ie)
		if verr != nil && strings.EqualFold(ie.ProvisioningStatus, dps.ProvisioningDisabled) {
			// The disabled individual enrollment does not hold this
			// certificate, but it still revokes a device a group vouches
			// for: the device learns it is disabled.
			if g, gerr := e.attestX509Group(ctx, req, bound(prev)); gerr == nil {
				return &vouched{enrollment: ie, disabled: true, viaGroup: g.group.EnrollmentGroupID, x509: &dps.X509RegistrationResult{
					CertificateInfo:        g.x509.CertificateInfo,
					SigningCertificateInfo: g.x509.SigningCertificateInfo,
				}}, nil
			}
		}
		return v, verr
	case !isNotFound(err):
		return nil, unavailable(err)
	}
	if err := e.checkBinding(req, prev); err != nil {
		return nil, errInvalidCertificate("")
	}
	v, err := e.attestX509Group(ctx, req, bound(prev))
	if err != nil && bound(prev) != "" {
		if other, oerr := e.attestX509Group(ctx, req, ""); oerr == nil {
			e.refusedByBinding(req, prev, other.group.EnrollmentGroupID)
		}
	}
	return v, err
}

// checkDeviceCertificate checks what the leaf must satisfy whatever
// enrollment vouches for it.
func checkDeviceCertificate(c *x509.Certificate, regID string, now time.Time) error {
	if c.Subject.CommonName != regID {
		return errInvalidCertificate(fmt.Sprintf("the registration id %q must equal the certificate's subject CN %q.", regID, c.Subject.CommonName))
	}
	if now.After(c.NotAfter) {
		return errInvalidCertificate(fmt.Sprintf("the certificate expired on %s.", c.NotAfter.UTC().Format(time.RFC3339)))
	}
	if now.Before(c.NotBefore) {
		return errInvalidCertificate(fmt.Sprintf("the certificate is not valid before %s.", c.NotBefore.UTC().Format(time.RFC3339)))
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return errInvalidCertificate("the certificate's key usage does not allow digitalSignature.")
	}
	if len(c.ExtKeyUsage) > 0 || len(c.UnknownExtKeyUsage) > 0 {
		if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) && !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny) {
			return errInvalidCertificate("the certificate's extended key usage does not allow clientAuth.")
		}
	}
	return nil
}

// verifyX509Individual checks the device against its individual enrollment.
func (e *Engine) verifyX509Individual(ctx context.Context, req *Request, ie *dps.IndividualEnrollment) (*vouched, error) {
	a := ie.Attestation
	if a == nil || !strings.EqualFold(a.Type, dps.AttestationX509) || a.X509 == nil {
		return nil, errInvalidCertificate("the device's individual enrollment does not use X.509 attestation.")
	}
	leaf := req.PeerCertificates[0]
	disabled := strings.EqualFold(ie.ProvisioningStatus, dps.ProvisioningDisabled)
	switch x := a.X509; {
	case x.ClientCertificates != nil:
		pinned := []*dps.X509CertificateWithInfo{x.ClientCertificates.Primary, x.ClientCertificates.Secondary}
		hx := &HubX509{}
		matched := false
		for i, p := range pinned {
			c := storedCertificate(p)
			if c == nil {
				continue
			}
			tp := Thumbprint(c)
			if i == 0 {
				hx.PrimaryThumbprint = tp
			} else {
				hx.SecondaryThumbprint = tp
			}
			if bytes.Equal(c.Raw, leaf.Raw) {
				matched = true
			}
		}
		if !matched {
			return nil, errInvalidCertificate("")
		}
		return &vouched{
			enrollment: ie,
			disabled:   disabled,
			x509:       &dps.X509RegistrationResult{CertificateInfo: enroll.CertificateInfo(leaf)},
			hubX509:    hx,
		}, nil
	case x.CAReferences != nil:
		verified, err := e.verifiedCAs(ctx)
		if err != nil {
			return nil, err
		}
		anchors := caAnchors(x.CAReferences, verified)
		if len(anchors) == 0 {
			return nil, errInvalidCertificate("the enrollment's CA certificates are not registered and verified.")
		}
		anchor, _, err := e.verifyChain(req.PeerCertificates, anchors, nil)
		if err != nil {
			return nil, err
		}
		return &vouched{
			enrollment: ie,
			disabled:   disabled,
			x509: &dps.X509RegistrationResult{
				CertificateInfo:        enroll.CertificateInfo(leaf),
				SigningCertificateInfo: enroll.CertificateInfo(anchor),
			},
			hubX509: &HubX509{CACertificates: pemList(anchors)},
		}, nil
	}
	return nil, errInvalidCertificate("the enrollment holds no certificate.")
}

// attestX509Group finds the most specific enrollment group that vouches for
// the device's chain; with boundTo set, only that group may.
func (e *Engine) attestX509Group(ctx context.Context, req *Request, boundTo string) (*vouched, error) {
	groups, err := e.x509Groups.List(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	var verified map[string]*x509.Certificate
	for _, g := range groups {
		if g.caRefs != nil {
			if verified, err = e.verifiedCAs(ctx); err != nil {
				return nil, err
			}
			break
		}
	}
	// Every group certificate, with the groups it stands for.
	type member struct {
		g       *x509Group
		anchors []*x509.Certificate
	}
	members := make([]member, 0, len(groups))
	var all []*x509.Certificate
	for _, g := range groups {
		if boundTo != "" && !strings.EqualFold(g.group.EnrollmentGroupID, boundTo) {
			continue
		}
		anchors := g.signing
		if g.caRefs != nil {
			anchors = caAnchors(g.caRefs, verified)
		}
		if len(anchors) == 0 {
			continue
		}
		members = append(members, member{g, anchors})
		all = append(all, anchors...)
	}
	if len(all) == 0 {
		return nil, errInvalidCertificate("")
	}
	_, chains, err := e.verifyChain(req.PeerCertificates, all, all)
	if err != nil {
		return nil, err
	}
	// The group whose certificate is nearest to the leaf in any valid
	// chain wins; ties (the same certificate in two groups, which Azure
	// forbids) go to the lowest group id, so the choice is stable.
	var best *member
	var bestAnchor *x509.Certificate
	bestDepth := 0
	for _, chain := range chains {
		for depth := 1; depth < len(chain); depth++ {
			for i := range members {
				m := &members[i]
				for _, a := range m.anchors {
					if !bytes.Equal(a.Raw, chain[depth].Raw) {
						continue
					}
					if best == nil || depth < bestDepth || (depth == bestDepth && strings.ToLower(m.g.group.EnrollmentGroupID) < strings.ToLower(best.g.group.EnrollmentGroupID)) {
						best, bestAnchor, bestDepth = m, a, depth
					}
				}
			}
		}
	}
	if best == nil {
		return nil, errInvalidCertificate("")
	}
	g := best.g.group
	return &vouched{
		group:    g,
		disabled: strings.EqualFold(g.ProvisioningStatus, dps.ProvisioningDisabled),
		x509: &dps.X509RegistrationResult{
			CertificateInfo:        enroll.CertificateInfo(req.PeerCertificates[0]),
			EnrollmentGroupID:      g.EnrollmentGroupID,
			SigningCertificateInfo: enroll.CertificateInfo(bestAnchor),
		},
		hubX509: &HubX509{CACertificates: pemList(best.anchors)},
	}, nil
}

// verifyChain verifies the presented chain (leaf first) up to one of
// anchors, for client authentication, at the engine's time. extra are known
// certificates that may serve as intermediates when the device leaves them
// out (some TLS stacks cannot send a chain). It returns the anchor of the
// first chain and every chain.
func (e *Engine) verifyChain(presented, anchors, extra []*x509.Certificate) (*x509.Certificate, [][]*x509.Certificate, error) {
	roots := x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	inter := x509.NewCertPool()
	for _, c := range presented[1:] {
		inter.AddCert(c)
	}
	for _, c := range extra {
		inter.AddCert(c)
	}
	chains, err := presented[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   e.opt.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		var ua x509.UnknownAuthorityError
		var ci x509.CertificateInvalidError
		switch {
		case errors.As(err, &ua):
			// No chain reaches an enrollment's certificate: say no more.
			return nil, nil, errInvalidCertificate("")
		case errors.As(err, &ci) && ci.Reason == x509.Expired:
			return nil, nil, errInvalidCertificate("a certificate of the chain has expired or is not yet valid.")
		}
		return nil, nil, errInvalidCertificate("the certificate chain is not valid.")
	}
	first := chains[0]
	return first[len(first)-1], chains, nil
}

// verifiedCAs returns the verified CA certificates of the instance by
// lower-cased name.
func (e *Engine) verifiedCAs(ctx context.Context) (map[string]*x509.Certificate, error) {
	m, err := certs.New(e.st, e.opt.Now).VerifiedAll(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	return m, nil
}

// caAnchors returns the verified certificates named by refs; names that are
// missing or unverified vouch for nothing.
func caAnchors(refs *dps.X509CAReferences, verified map[string]*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, name := range []string{refs.Primary, refs.Secondary} {
		if c := verified[strings.ToLower(strings.TrimSpace(name))]; name != "" && c != nil {
			out = append(out, c)
		}
	}
	return out
}

func storedCertificate(c *dps.X509CertificateWithInfo) *x509.Certificate {
	if c == nil || c.Certificate == "" {
		return nil
	}
	parsed, err := enroll.ParseCertificate(c.Certificate)
	if err != nil {
		return nil
	}
	return parsed
}

func pemList(cs []*x509.Certificate) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, enroll.CertificatePEM(c))
	}
	return out
}

// Thumbprint is a certificate's SHA-256 thumbprint in upper-case hex, the
// form X.509 device identities in hubs carry.
func Thumbprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

// x509Group is an X.509 enrollment group with its certificates parsed.
type x509Group struct {
	group   *dps.EnrollmentGroup
	signing []*x509.Certificate // signingCertificates
	caRefs  *dps.X509CAReferences
}

// listX509Groups reads every X.509 enrollment group and parses its
// certificates; the engine keeps the result for groupListTTL, so a
// registration does not read and parse every group.
func listX509Groups(ctx context.Context, st store.Store) ([]*x509Group, error) {
	all := []*x509Group{}
	opt := store.ListOptions{Limit: 1000}
	for range 1000 { // bounded: 1,000 pages of 1,000 groups
		page, more, err := enroll.ListGroups(ctx, st, opt)
		if err != nil {
			return nil, fmt.Errorf("list enrollment groups: %w", err)
		}
		for _, g := range page {
			a := g.Attestation
			if a == nil || !strings.EqualFold(a.Type, dps.AttestationX509) || a.X509 == nil {
				continue
			}
			xg := &x509Group{group: g, caRefs: a.X509.CAReferences}
			if s := a.X509.SigningCertificates; s != nil {
				for _, p := range []*dps.X509CertificateWithInfo{s.Primary, s.Secondary} {
					if cert := storedCertificate(p); cert != nil {
						xg.signing = append(xg.signing, cert)
					}
				}
			}
			all = append(all, xg)
		}
		if !more || len(page) == 0 {
			break
		}
		opt.After = page[len(page)-1].EnrollmentGroupID
	}
	return all, nil
}
