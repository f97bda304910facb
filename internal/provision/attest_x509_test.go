package provision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/enroll"
)

const x509Hub = "hub-x.example"

// recordingAllocator remembers the inputs it was given.
type recordingAllocator struct {
	mu  sync.Mutex
	ins []AllocationInput
}

func (a *recordingAllocator) Allocate(ctx context.Context, in *AllocationInput) (*Allocation, error) {
	a.mu.Lock()
	a.ins = append(a.ins, *in)
	a.mu.Unlock()
	return StaticAllocator{}.Allocate(ctx, in)
}

func (a *recordingAllocator) last() AllocationInput {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ins[len(a.ins)-1]
}

// mustIssue returns a function that unwraps an issued certificate or
// fails t.
func mustIssue(t *testing.T) func(*certs.Issued, error) *certs.Issued {
	return func(i *certs.Issued, err error) *certs.Issued {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
}

// chain is what a device presents: its certificate and its issuers, without
// the root (as most devices send it), or only the leaf.
func chain(i *certs.Issued, withIntermediates bool) []*x509.Certificate {
	out := []*x509.Certificate{i.Cert}
	if withIntermediates && len(i.Issuers) > 1 {
		out = append(out, i.Issuers[:len(i.Issuers)-1]...)
	}
	return out
}

// customLeaf issues a device certificate from ca with a template changed
// by edit, for key usage cases the generator does not make.
func customLeaf(t *testing.T, ca *certs.Issued, cn string, edit func(*x509.Certificate)) *certs.Issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	edit(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &certs.Issued{Cert: c, Key: key, Issuers: append([]*x509.Certificate{ca.Cert}, ca.Issuers...)}
}

func (f *fixture) x509Individual(id string, status string, primary, secondary *x509.Certificate) {
	f.t.Helper()
	cc := &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: enroll.CertificatePEM(primary)}}
	if secondary != nil {
		cc.Secondary = &dps.X509CertificateWithInfo{Certificate: enroll.CertificatePEM(secondary)}
	}
	f.x509IndividualWith(id, status, &dps.X509Attestation{ClientCertificates: cc})
}

func (f *fixture) x509IndividualWith(id, status string, x *dps.X509Attestation) {
	f.t.Helper()
	_, err := enroll.PutEnrollment(context.Background(), f.st, id, &dps.IndividualEnrollment{
		RegistrationID:     id,
		Attestation:        &dps.AttestationMechanism{Type: dps.AttestationX509, X509: x},
		IoTHubHostName:     x509Hub,
		ProvisioningStatus: status,
	}, "")
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) x509Group(id, status string, x *dps.X509Attestation) {
	f.t.Helper()
	_, err := enroll.PutGroup(context.Background(), f.st, id, &dps.EnrollmentGroup{
		EnrollmentGroupID:  id,
		Attestation:        &dps.AttestationMechanism{Type: dps.AttestationX509, X509: x},
		AllocationPolicy:   dps.AllocationStatic,
		IoTHubs:            []string{x509Hub},
		ProvisioningStatus: status,
	}, "")
	if err != nil {
		f.t.Fatal(err)
	}
	f.eng.InvalidateEnrollments()
}

func signing(c *x509.Certificate) *dps.X509Attestation {
	return &dps.X509Attestation{SigningCertificates: &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: enroll.CertificatePEM(c)}}}
}

// verifyCA uploads ca under name and proves possession of its key as a
// user would: code, verification certificate, verify.
func (f *fixture) verifyCA(name string, ca *certs.Issued) {
	f.t.Helper()
	ctx := context.Background()
	reg := certs.New(f.st, nil)
	if _, err := reg.Put(ctx, name, string(ca.CertPEM()), false, ""); err != nil {
		f.t.Fatal(err)
	}
	c, err := reg.GenerateVerificationCode(ctx, name, "")
	if err != nil {
		f.t.Fatal(err)
	}
	proof, err := ca.Verification(c.Properties.VerificationCode, certs.IssueOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := reg.Verify(ctx, name, c.ETag, string(proof.CertPEM())); err != nil {
		f.t.Fatal(err)
	}
}

func TestX509Attestation(t *testing.T) {
	ctx := context.Background()
	alloc := &recordingAllocator{}
	f := newFixture(t, Options{Allocator: alloc})
	o := certs.IssueOptions{}
	must := mustIssue(t)

	root := must(certs.NewRoot("Test Root", o))
	inter := must(root.Intermediate("Test Intermediate", o))
	inter2 := must(root.Intermediate("Unenrolled Intermediate", o))
	offInter := must(root.Intermediate("Disabled Group Intermediate", o))
	caRoot := must(certs.NewRoot("Verified CA", o))
	unverifiedRoot := must(certs.NewRoot("Unverified CA", o))
	strangerRoot := must(certs.NewRoot("Stranger CA", o))
	expiredInter := must(root.Intermediate("Expired Intermediate", certs.IssueOptions{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour}))

	// Groups: the intermediate, the root (less specific), a verified CA,
	// an unverified CA, a disabled group.
	f.x509Group("grp-inter", "", signing(inter.Cert))
	f.x509Group("grp-root", "", signing(root.Cert))
	f.verifyCA("verified-ca", caRoot)
	f.x509Group("grp-ca", "", &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "verified-ca"}})
	if _, err := certs.New(f.st, nil).Put(ctx, "unverified-ca", string(unverifiedRoot.CertPEM()), false, ""); err != nil {
		t.Fatal(err)
	}
	f.x509Group("grp-unverified", "", &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "unverified-ca"}})
	f.x509Group("grp-off", dps.ProvisioningDisabled, signing(offInter.Cert))

	// Individual enrollments.
	indiv := must(inter.Device("dev-indiv", o))
	indiv2 := must(inter.Device("dev-indiv2", o))
	indiv2Old := must(inter.Device("dev-indiv2", o))
	f.x509Individual("dev-indiv", "", indiv.Cert, nil)
	f.x509Individual("dev-indiv2", "", indiv2Old.Cert, indiv2.Cert)
	f.x509Individual("dev-indiv3", "", must(inter.Device("dev-indiv3", o)).Cert, nil)
	impostor := must(inter.Device("dev-indiv3", o)) // same CN and issuer, other key
	revoked := must(inter.Device("dev-revoked", o))
	f.x509Individual("dev-revoked", dps.ProvisioningDisabled, revoked.Cert, nil)
	blocked := must(inter.Device("dev-blocked", o))
	f.x509Individual("dev-blocked", dps.ProvisioningDisabled, must(inter.Device("dev-blocked", o)).Cert, nil)
	caIndiv := must(caRoot.Device("dev-caref", o))
	f.x509IndividualWith("dev-caref", "", &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "verified-ca"}})
	symIndiv := must(inter.Device("dev-sym", o))
	f.individual("dev-sym", x509Hub, "")

	expiredLeaf := must(inter.Device("dev-expired", certs.IssueOptions{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour}))
	serverOnly := customLeaf(t, inter, "dev-eku", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
	noSig := customLeaf(t, inter, "dev-ku", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment })
	underExpired := must(expiredInter.Device("dev-under-expired", o))

	tests := []struct {
		name      string
		regID     string
		chain     []*x509.Certificate
		wantCode  int    // expected error code; 0 for an answer
		wantState string // registration status when answered
		group     string // enrollment group that vouched
		// boundTo is the group the record binds the device to, when it is
		// not group: a disabled individual enrollment that revokes a group
		// member keeps it bound to its group.
		boundTo  string
		signer   *x509.Certificate
		hubThumb string // expected selfSigned thumbprint
		hubCA    *x509.Certificate
	}{
		{name: "individual primary certificate", regID: "dev-indiv", chain: chain(indiv, true), wantState: dps.StatusAssigned, hubThumb: Thumbprint(indiv.Cert)},
		{name: "individual secondary certificate", regID: "dev-indiv2", chain: chain(indiv2, false), wantState: dps.StatusAssigned, hubThumb: Thumbprint(indiv2Old.Cert)},
		{name: "individual enrollment decides: other certificate with its CN", regID: "dev-indiv3", chain: chain(impostor, true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "individual with caReferences", regID: "dev-caref", chain: chain(caIndiv, true), wantState: dps.StatusAssigned, signer: caRoot.Cert, hubCA: caRoot.Cert},
		{name: "individual symmetric-key enrollment refuses a certificate", regID: "dev-sym", chain: chain(symIndiv, true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "group of the intermediate beats the root's", regID: "dev-g1", chain: chain(must(inter.Device("dev-g1", o)), true), wantState: dps.StatusAssigned, group: "grp-inter", signer: inter.Cert, hubCA: inter.Cert},
		{name: "leaf alone reaches the intermediate's group", regID: "dev-g2", chain: chain(must(inter.Device("dev-g2", o)), false), wantState: dps.StatusAssigned, group: "grp-inter", signer: inter.Cert, hubCA: inter.Cert},
		{name: "chain through an unenrolled intermediate to the root's group", regID: "dev-g3", chain: chain(must(inter2.Device("dev-g3", o)), true), wantState: dps.StatusAssigned, group: "grp-root", signer: root.Cert, hubCA: root.Cert},
		{name: "verified CA of caReferences", regID: "dev-g4", chain: chain(must(caRoot.Device("dev-g4", o)), true), wantState: dps.StatusAssigned, group: "grp-ca", signer: caRoot.Cert, hubCA: caRoot.Cert},
		{name: "disabled group", regID: "dev-g5", chain: chain(must(offInter.Device("dev-g5", o)), true), wantState: dps.StatusDisabled, group: "grp-off"},
		{name: "revoked: disabled individual holding the certificate in an enabled group", regID: "dev-revoked", chain: chain(revoked, true), wantState: dps.StatusDisabled},
		{name: "revoked: disabled individual with another certificate", regID: "dev-blocked", chain: chain(blocked, true), wantState: dps.StatusDisabled, boundTo: "grp-inter"},
		{name: "chain does not reach the group's certificate", regID: "dev-n1", chain: chain(must(inter2.Device("dev-n1", o)), false), wantCode: dps.CodeUnauthorizedDevice},
		{name: "unknown CA", regID: "dev-n2", chain: chain(must(strangerRoot.Device("dev-n2", o)), true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "unverified CA", regID: "dev-n3", chain: chain(must(unverifiedRoot.Device("dev-n3", o)), true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "CN mismatch", regID: "dev-n4", chain: chain(must(inter.Device("someone-else", o)), true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "expired certificate", regID: "dev-expired", chain: chain(expiredLeaf, true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "expired intermediate", regID: "dev-under-expired", chain: chain(underExpired, true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "extended key usage without clientAuth", regID: "dev-eku", chain: chain(serverOnly, true), wantCode: dps.CodeUnauthorizedDevice},
		{name: "key usage without digitalSignature", regID: "dev-ku", chain: chain(noSig, true), wantCode: dps.CodeUnauthorizedDevice},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.reg.count()
			res, err := f.eng.Register(ctx, Request{IDScope: scope, RegistrationID: tc.regID, PeerCertificates: tc.chain, Transport: "test"})
			if tc.wantCode != 0 {
				if code(err) != tc.wantCode {
					t.Fatalf("Register: err = %v (code %d), want code %d", err, code(err), tc.wantCode)
				}
				if !strings.HasPrefix(dps.AsError(err).Message, "Invalid certificate") {
					t.Errorf("message %q does not start with %q", dps.AsError(err).Message, "Invalid certificate")
				}
				if f.reg.count() != before {
					t.Error("a refused device was registered in a hub")
				}
				if _, err := enroll.GetRegistration(ctx, f.st, tc.regID); !errors.Is(err, enroll.ErrRegistrationNotFound) {
					t.Errorf("a refused device has a registration record (err %v)", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Register: %v", err)
			}
			st := res.Operation.RegistrationState
			if st.Status != tc.wantState {
				t.Fatalf("status = %q (%d %s), want %q", st.Status, st.ErrorCode, st.ErrorMessage, tc.wantState)
			}
			if st.SymmetricKey != nil {
				t.Errorf("symmetricKey result set for an X.509 device: %+v", st.SymmetricKey)
			}
			x := st.X509
			if x == nil || x.CertificateInfo == nil {
				t.Fatalf("x509 result missing: %+v", x)
			}
			if x.CertificateInfo.SHA256Thumbprint != Thumbprint(tc.chain[0]) {
				t.Errorf("certificateInfo thumbprint = %s, want the leaf's", x.CertificateInfo.SHA256Thumbprint)
			}
			if x.EnrollmentGroupID != tc.group {
				t.Errorf("enrollmentGroupId = %q, want %q", x.EnrollmentGroupID, tc.group)
			}
			if tc.signer != nil && (x.SigningCertificateInfo == nil || x.SigningCertificateInfo.SHA256Thumbprint != Thumbprint(tc.signer)) {
				t.Errorf("signingCertificateInfo = %+v, want %s", x.SigningCertificateInfo, tc.signer.Subject)
			}
			rec, err := enroll.GetRegistration(ctx, f.st, tc.regID)
			if err != nil {
				t.Fatal(err)
			}
			wantBound := tc.group
			if tc.boundTo != "" {
				wantBound = tc.boundTo
			}
			if rec.AttestationType != dps.AttestationX509 || rec.EnrollmentGroupID != wantBound {
				t.Errorf("record: attestation %q group %q", rec.AttestationType, rec.EnrollmentGroupID)
			}
			if tc.wantState != dps.StatusAssigned {
				if f.reg.count() != before {
					t.Error("a disabled device was registered in a hub")
				}
				return
			}
			if in := alloc.last(); in.AttestationType != dps.AttestationX509 || in.X509 == nil || in.X509.EnrollmentGroupID != tc.group {
				t.Errorf("allocation input: attestation %q x509 %+v", in.AttestationType, in.X509)
			}
			f.reg.mu.Lock()
			dev := f.reg.calls[len(f.reg.calls)-1]
			f.reg.mu.Unlock()
			if dev.X509 == nil || dev.PrimaryKey != "" {
				t.Fatalf("hub device: x509 %+v, key %q", dev.X509, dev.PrimaryKey)
			}
			if dev.X509.PrimaryThumbprint != tc.hubThumb {
				t.Errorf("hub thumbprint = %q, want %q", dev.X509.PrimaryThumbprint, tc.hubThumb)
			}
			if tc.hubCA != nil && (len(dev.X509.CACertificates) == 0 || dev.X509.CACertificates[0] != enroll.CertificatePEM(tc.hubCA)) {
				t.Errorf("hub CA certificates = %d, want %s first", len(dev.X509.CACertificates), tc.hubCA.Subject)
			}
			// A poll with the same certificate finds the operation.
			if _, err := f.eng.OperationStatus(ctx, Request{IDScope: scope, RegistrationID: tc.regID, PeerCertificates: tc.chain}, res.Operation.OperationID); err != nil {
				t.Errorf("OperationStatus: %v", err)
			}
		})
	}
}

// TestX509NoProof: a device without token or certificate is refused as
// before.
func TestX509NoProof(t *testing.T) {
	f := newFixture(t, Options{})
	_, err := f.eng.Register(context.Background(), Request{IDScope: scope, RegistrationID: "dev-1"})
	if code(err) != dps.CodeUnauthorized {
		t.Fatalf("err = %v, want 401000", err)
	}
}
