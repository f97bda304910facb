package enroll

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"regexp"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/tpm"
)

// Symmetric key limits: Azure accepts 16 to 64 decoded bytes and generates
// 64-byte keys when none are given.
const (
	MinKeyBytes       = 16
	MaxKeyBytes       = 64
	GeneratedKeyBytes = 64
)

// ValidateEnrollment reports whether e would be accepted by a create, as a
// *dps.Error with code 400004 naming the first problem. e is not modified.
func ValidateEnrollment(e *dps.IndividualEnrollment) error {
	c, err := clone(e)
	if err != nil {
		return err
	}
	return prepareEnrollment(c, nil)
}

// ValidateGroup is ValidateEnrollment for enrollment groups.
func ValidateGroup(g *dps.EnrollmentGroup) error {
	c, err := clone(g)
	if err != nil {
		return err
	}
	return prepareGroup(c, nil)
}

// prepareEnrollment validates e, normalises its enum spellings, fills the
// defaults of a create and carries over what an update may omit from old
// (nil on create). It leaves e in its stored form.
func prepareEnrollment(e, old *dps.IndividualEnrollment) error {
	if err := ValidateID("registrationId", e.RegistrationID); err != nil {
		return err
	}
	if err := validateDeviceID(e.DeviceID); err != nil {
		return err
	}
	var oldAtt *dps.AttestationMechanism
	if old != nil {
		oldAtt = old.Attestation
	}
	att, err := prepareAttestation(e.Attestation, oldAtt, false)
	if err != nil {
		return err
	}
	e.Attestation = att
	if e.OptionalDeviceInformation, err = objectOrNil("optionalDeviceInformation", e.OptionalDeviceInformation); err != nil {
		return err
	}
	if e.ClientCertIssuancePolicy, err = issuancePolicy(e.ClientCertIssuancePolicy); err != nil {
		return err
	}
	c := common{
		capabilities: &e.Capabilities, initialTwin: e.InitialTwin, status: &e.ProvisioningStatus,
		reprovision: &e.ReprovisionPolicy, policy: &e.AllocationPolicy, hubs: e.IoTHubs,
		custom: e.CustomAllocationDefinition,
	}
	return c.prepare()
}

// prepareGroup is prepareEnrollment for groups, which may not use TPM.
func prepareGroup(g, old *dps.EnrollmentGroup) error {
	if err := ValidateID("enrollmentGroupId", g.EnrollmentGroupID); err != nil {
		return err
	}
	var oldAtt *dps.AttestationMechanism
	if old != nil {
		oldAtt = old.Attestation
	}
	att, err := prepareAttestation(g.Attestation, oldAtt, true)
	if err != nil {
		return err
	}
	g.Attestation = att
	if g.ClientCertIssuancePolicy, err = issuancePolicy(g.ClientCertIssuancePolicy); err != nil {
		return err
	}
	c := common{
		capabilities: &g.Capabilities, initialTwin: g.InitialTwin, status: &g.ProvisioningStatus,
		reprovision: &g.ReprovisionPolicy, policy: &g.AllocationPolicy, hubs: g.IoTHubs,
		custom: g.CustomAllocationDefinition,
	}
	return c.prepare()
}

// common points at the members enrollments and groups share.
type common struct {
	capabilities **dps.DeviceCapabilities
	initialTwin  *dps.InitialTwin
	status       *string
	reprovision  **dps.ReprovisionPolicy
	policy       *string
	hubs         []string
	custom       *dps.CustomAllocationDefinition
}

func (c common) prepare() error {
	if *c.capabilities == nil {
		*c.capabilities = &dps.DeviceCapabilities{}
	}
	if *c.reprovision == nil {
		*c.reprovision = &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	}
	switch {
	case *c.status == "":
		*c.status = dps.ProvisioningEnabled
	case strings.EqualFold(*c.status, dps.ProvisioningEnabled):
		*c.status = dps.ProvisioningEnabled
	case strings.EqualFold(*c.status, dps.ProvisioningDisabled):
		*c.status = dps.ProvisioningDisabled
	default:
		return dps.Errorf(dps.CodeInvalidArgument, "The provisioningStatus %q is not valid; use %q or %q.", *c.status, dps.ProvisioningEnabled, dps.ProvisioningDisabled)
	}
	if err := c.prepareTwin(); err != nil {
		return err
	}
	return c.prepareAllocation()
}

func (c common) prepareTwin() error {
	t := c.initialTwin
	if t == nil {
		return nil
	}
	var err error
	if t.Tags, err = objectOrNil("initialTwin.tags", t.Tags); err != nil {
		return err
	}
	if t.Properties != nil {
		if t.Properties.Desired, err = objectOrNil("initialTwin.properties.desired", t.Properties.Desired); err != nil {
			return err
		}
	}
	// Refused now rather than when the first device registers: a hub
	// refuses a twin beyond its limits, and that device would fail.
	return ValidateInitialTwin(t)
}

func (c common) prepareAllocation() error {
	policies := []string{dps.AllocationHashed, dps.AllocationGeoLatency, dps.AllocationStatic, dps.AllocationCustom}
	if *c.policy != "" {
		found := false
		for _, p := range policies {
			if strings.EqualFold(*c.policy, p) {
				*c.policy, found = p, true
			}
		}
		if !found {
			return dps.Errorf(dps.CodeInvalidArgument, "The allocationPolicy %q is not valid; use one of %s.", *c.policy, strings.Join(policies, ", "))
		}
	}
	if len(c.hubs) > 0 && *c.policy == "" {
		// Azure's rule since 2024; older services accepted it.
		return dps.Errorf(dps.CodeInvalidArgument, "Enrollment allocationPolicy must be specified when iotHubs are specified.")
	}
	for _, h := range c.hubs {
		if strings.TrimSpace(h) == "" {
			return dps.Errorf(dps.CodeInvalidArgument, "The iotHubs list contains an empty host name.")
		}
	}
	if *c.policy != dps.AllocationCustom {
		return nil
	}
	d := c.custom
	if d == nil {
		return dps.Errorf(dps.CodeInvalidArgument, "A CustomAllocationDefinition is required when the allocation policy is set to 'Custom'.")
	}
	if name, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(d.WebhookURL)), policyPrefix); ok {
		// dpsd's in-process allocation policy (package allocpolicy):
		// whether it exists is known at allocation, as a webhook's
		// reachability is.
		if !policyName.MatchString(name) {
			return dps.Errorf(dps.CodeInvalidArgument, "The customAllocationDefinition.webhookUrl %q names no valid allocation policy: policy:NAME, NAME 1 to 64 letters, digits, '.', '_' and '-'.", d.WebhookURL)
		}
	} else if u, err := url.Parse(d.WebhookURL); err != nil || !u.IsAbs() || u.Host == "" || (!strings.EqualFold(u.Scheme, "https") && !strings.EqualFold(u.Scheme, "http")) {
		return dps.Errorf(dps.CodeInvalidArgument, "The customAllocationDefinition.webhookUrl must be an absolute http or https URL, or policy:NAME for an in-process allocation policy.")
	}
	if strings.TrimSpace(d.APIVersion) == "" {
		return dps.Errorf(dps.CodeInvalidArgument, "The customAllocationDefinition.apiVersion is required.")
	}
	return nil
}

// objectOrNil accepts a JSON object or null (returned as nil), the shapes of
// Azure's free-form TwinCollection members.
func objectOrNil(what string, raw json.RawMessage) (json.RawMessage, error) {
	t := bytes.TrimSpace(raw)
	switch {
	case len(t) == 0 || string(t) == "null":
		return nil, nil
	case t[0] == '{':
		return raw, nil
	}
	return nil, dps.Errorf(dps.CodeInvalidArgument, "The %s member must be a JSON object.", what)
}

// issuancePolicy validates a clientCertificateIssuancePolicy: an object
// whose certificateAuthorityName, when present, is a string. Whether the CA
// exists is decided when a device asks for a certificate, since an operator
// may add the CA after the enrollment.
func issuancePolicy(raw json.RawMessage) (json.RawMessage, error) {
	raw, err := objectOrNil("clientCertificateIssuancePolicy", raw)
	if err != nil || raw == nil {
		return raw, err
	}
	var p struct {
		Name *json.RawMessage `json:"certificateAuthorityName"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The clientCertificateIssuancePolicy member cannot be read: %v", err)
	}
	if p.Name != nil {
		var name string
		if json.Unmarshal(*p.Name, &name) != nil {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "clientCertificateIssuancePolicy.certificateAuthorityName must be a string.")
		}
	}
	return raw, nil
}

// prepareAttestation validates a and returns its stored form: the type in its
// canonical spelling, only the member that type uses, generated or kept
// symmetric keys, and certificates as PEM with their info.
func prepareAttestation(a, old *dps.AttestationMechanism, group bool) (*dps.AttestationMechanism, error) {
	if a == nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The attestation is required.")
	}
	switch {
	case strings.EqualFold(a.Type, dps.AttestationSymmetricKey):
		var oldKeys *dps.SymmetricKeyAttestation
		if old != nil && old.Type == dps.AttestationSymmetricKey {
			oldKeys = old.SymmetricKey
		}
		sk, err := prepareSymmetricKey(a.SymmetricKey, oldKeys)
		if err != nil {
			return nil, err
		}
		return &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: sk}, nil
	case strings.EqualFold(a.Type, dps.AttestationX509):
		var oldX *dps.X509Attestation
		if old != nil && old.Type == dps.AttestationX509 {
			oldX = old.X509
		}
		x, err := prepareX509(a.X509, oldX, group)
		if err != nil {
			return nil, err
		}
		return &dps.AttestationMechanism{Type: dps.AttestationX509, X509: x}, nil
	case strings.EqualFold(a.Type, dps.AttestationTPM):
		if group {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "Enrollment groups do not support TPM attestation; use x509 or symmetricKey.")
		}
		t, err := prepareTPM(a.TPM)
		if err != nil {
			return nil, err
		}
		return &dps.AttestationMechanism{Type: dps.AttestationTPM, TPM: t}, nil
	case a.Type == "":
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The attestation type is required; use symmetricKey, x509 or tpm.")
	}
	return nil, dps.Errorf(dps.CodeInvalidArgument, "The attestation type %q is not supported; use symmetricKey, x509 or tpm.", a.Type)
}

func prepareSymmetricKey(sk, old *dps.SymmetricKeyAttestation) (*dps.SymmetricKeyAttestation, error) {
	out := &dps.SymmetricKeyAttestation{}
	if sk != nil {
		*out = *sk
	}
	if old == nil {
		old = &dps.SymmetricKeyAttestation{}
	}
	for _, k := range []struct {
		name     string
		val, old *string
	}{{"primaryKey", &out.PrimaryKey, &old.PrimaryKey}, {"secondaryKey", &out.SecondaryKey, &old.SecondaryKey}} {
		switch {
		case *k.val != "":
			if err := validateKey(k.name, *k.val); err != nil {
				return nil, err
			}
		case *k.old != "":
			// An update after a GET (which hides keys) keeps the stored key.
			*k.val = *k.old
		default:
			*k.val = sas.GenerateKey(GeneratedKeyBytes)
		}
	}
	return out, nil
}

func validateKey(name, key string) error {
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return dps.Errorf(dps.CodeInvalidArgument, "The symmetric key %s is not valid base64.", name)
	}
	if len(b) < MinKeyBytes || len(b) > MaxKeyBytes {
		return dps.Errorf(dps.CodeInvalidArgument, "The symmetric key %s is %d bytes long; keys must be %d to %d bytes.", name, len(b), MinKeyBytes, MaxKeyBytes)
	}
	return nil
}

func prepareTPM(t *dps.TPMAttestation) (*dps.TPMAttestation, error) {
	if t == nil || strings.TrimSpace(t.EndorsementKey) == "" {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "A TPM attestation needs an endorsementKey.")
	}
	ek, err := decodeBase64Loose([]byte(t.EndorsementKey))
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The TPM endorsementKey is not valid base64.")
	}
	// A key dpsd could never activate a TPM with is refused now rather
	// than at the device's first registration.
	if _, err := tpm.ParseStorageKey(ek); err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The TPM endorsementKey is not an RSA endorsement key's public area (TPM2B_PUBLIC): %v", err)
	}
	if t.StorageRootKey != "" {
		if _, err := decodeBase64Loose([]byte(t.StorageRootKey)); err != nil {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "The TPM storageRootKey is not valid base64.")
		}
	}
	return &dps.TPMAttestation{EndorsementKey: t.EndorsementKey, StorageRootKey: t.StorageRootKey}, nil
}

func prepareX509(x, old *dps.X509Attestation, group bool) (*dps.X509Attestation, error) {
	if x == nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "An x509 attestation needs its x509 member.")
	}
	n := 0
	for _, set := range []bool{x.ClientCertificates != nil, x.SigningCertificates != nil, x.CAReferences != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "An x509 attestation needs exactly one of clientCertificates, signingCertificates or caReferences.")
	}
	if old == nil {
		old = &dps.X509Attestation{}
	}
	switch {
	case x.CAReferences != nil:
		p, s := strings.TrimSpace(x.CAReferences.Primary), strings.TrimSpace(x.CAReferences.Secondary)
		if p == "" {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "The x509 caReferences need a primary CA certificate name.")
		}
		return &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: p, Secondary: s}}, nil
	case x.ClientCertificates != nil:
		if group {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "An enrollment group's x509 attestation uses signingCertificates or caReferences, not clientCertificates.")
		}
		c, err := prepareCertificates("clientCertificates", x.ClientCertificates, old.ClientCertificates)
		if err != nil {
			return nil, err
		}
		return &dps.X509Attestation{ClientCertificates: c}, nil
	default:
		if !group {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "An individual enrollment's x509 attestation uses clientCertificates or caReferences, not signingCertificates.")
		}
		c, err := prepareCertificates("signingCertificates", x.SigningCertificates, old.SigningCertificates)
		if err != nil {
			return nil, err
		}
		return &dps.X509Attestation{SigningCertificates: c}, nil
	}
}

func prepareCertificates(member string, c, old *dps.X509Certificates) (*dps.X509Certificates, error) {
	if c.Primary == nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The x509 %s need a primary certificate.", member)
	}
	if old == nil {
		old = &dps.X509Certificates{}
	}
	p, err := prepareCertificate(member+".primary", c.Primary, old.Primary)
	if err != nil {
		return nil, err
	}
	out := &dps.X509Certificates{Primary: p}
	if c.Secondary != nil && (c.Secondary.Certificate != "" || c.Secondary.Info != nil) {
		if out.Secondary, err = prepareCertificate(member+".secondary", c.Secondary, old.Secondary); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// prepareCertificate parses a certificate entry into its stored form. An
// entry with info but no certificate — what GET returned, sent back by an
// update — keeps the stored certificate of the same slot.
func prepareCertificate(what string, c, old *dps.X509CertificateWithInfo) (*dps.X509CertificateWithInfo, error) {
	pemText := c.Certificate
	if strings.TrimSpace(pemText) == "" {
		if old == nil || old.Certificate == "" {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "The x509 %s certificate is missing.", what)
		}
		pemText = old.Certificate
	}
	cert, err := ParseCertificate(pemText)
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The x509 %s certificate cannot be read (send PEM or base64 DER): %v.", what, err)
	}
	return &dps.X509CertificateWithInfo{Certificate: CertificatePEM(cert), Info: CertificateInfo(cert)}, nil
}

// policyPrefix and policyName are allocpolicy.Prefix and its name rule,
// repeated here because allocpolicy imports this package.
const policyPrefix = "policy:"

var policyName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
