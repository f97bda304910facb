package enroll

import "github.com/dpsd/dpsd/api/dps"

// Keys says whether a view of an enrollment shows its symmetric keys.
type Keys bool

// Key visibility of the responses: PUT responses and the attestation
// mechanism lookup show keys; GET and query responses (and the copy sent to
// a custom allocation webhook) hide them.
const (
	HideKeys Keys = false
	ShowKeys Keys = true
)

// EnrollmentView returns the copy of a stored enrollment that a client may
// see: certificates reduced to their info and, with HideKeys, the symmetric
// keys removed (the attestation then reads {"type":"symmetricKey"}). e is
// not modified.
func EnrollmentView(e *dps.IndividualEnrollment, keys Keys) *dps.IndividualEnrollment {
	if e == nil {
		return nil
	}
	v := *e
	v.Attestation = attestationView(e.Attestation, keys)
	return &v
}

// GroupView is EnrollmentView for enrollment groups.
func GroupView(g *dps.EnrollmentGroup, keys Keys) *dps.EnrollmentGroup {
	if g == nil {
		return nil
	}
	v := *g
	v.Attestation = attestationView(g.Attestation, keys)
	return &v
}

// AttestationView is what the attestationmechanism endpoints return: the
// symmetric keys and TPM keys in full, certificates as info only.
func AttestationView(a *dps.AttestationMechanism) *dps.AttestationMechanism {
	return attestationView(a, ShowKeys)
}

// AttestationWithCertificates is AttestationView with the X.509
// certificates as stored, not only their info: a dpsd extension for
// "dpsd export" (certificates are public; Azure shows only their info).
func AttestationWithCertificates(a *dps.AttestationMechanism) *dps.AttestationMechanism {
	v := attestationView(a, ShowKeys)
	if v == nil || v.X509 == nil {
		return v
	}
	x := a.X509
	v.X509.ClientCertificates = certificatesCopy(x.ClientCertificates)
	v.X509.SigningCertificates = certificatesCopy(x.SigningCertificates)
	return v
}

func certificatesCopy(c *dps.X509Certificates) *dps.X509Certificates {
	if c == nil {
		return nil
	}
	cp := func(c *dps.X509CertificateWithInfo) *dps.X509CertificateWithInfo {
		if c == nil {
			return nil
		}
		v := *c
		return &v
	}
	return &dps.X509Certificates{Primary: cp(c.Primary), Secondary: cp(c.Secondary)}
}

func attestationView(a *dps.AttestationMechanism, keys Keys) *dps.AttestationMechanism {
	if a == nil {
		return nil
	}
	v := &dps.AttestationMechanism{Type: a.Type, TPM: a.TPM}
	if a.SymmetricKey != nil && keys == ShowKeys {
		sk := *a.SymmetricKey
		v.SymmetricKey = &sk
	}
	if x := a.X509; x != nil {
		v.X509 = &dps.X509Attestation{
			ClientCertificates:  certificatesView(x.ClientCertificates),
			SigningCertificates: certificatesView(x.SigningCertificates),
			CAReferences:        x.CAReferences,
		}
	}
	return v
}

func certificatesView(c *dps.X509Certificates) *dps.X509Certificates {
	if c == nil {
		return nil
	}
	return &dps.X509Certificates{Primary: certificateView(c.Primary), Secondary: certificateView(c.Secondary)}
}

func certificateView(c *dps.X509CertificateWithInfo) *dps.X509CertificateWithInfo {
	if c == nil {
		return nil
	}
	return &dps.X509CertificateWithInfo{Info: c.Info}
}
