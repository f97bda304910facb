package builtinhub_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/provision"
)

// TestCACertificates: a hub trusts an uploaded CA certificate for
// certificateAuthority devices only once it is verified (proof of
// possession or uploaded as verified); a CA that vouched for a device at
// provisioning lets that device connect, and no other.
func TestCACertificates(t *testing.T) {
	must := func(i *certs.Issued, err error) *certs.Issued {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	o := certs.IssueOptions{}
	root := must(certs.NewRoot("Fleet Root", o))
	other := must(certs.NewRoot("Other Root", o))
	manualDev := must(root.Device("manual-ca", o))
	groupDev := must(other.Device("group-dev", o))
	sneakDev := must(other.Device("sneak", o))

	e := newEnv(t, nil)
	h := e.createHub("ca-hub", "127.0.19.16")
	host := h.Config().HostName
	ctx := context.Background()
	connect := func(id string, dev *certs.Issued) error {
		return connectWithCert(t, e, host, mqttAddr(h), id, dev, true)
	}
	for _, id := range []string{"manual-ca", "sneak"} {
		if _, err := h.CreateDevice(ctx, &azurehub.Device{DeviceID: id, Authentication: &azurehub.Authentication{Type: azurehub.AuthCertificateAuthority}}); err != nil {
			t.Fatal(err)
		}
	}

	// Uploaded but not verified: not trusted.
	c, err := h.UploadCACertificate(ctx, "fleet-root", string(root.CertPEM()), false)
	if err != nil || c.IsVerified || c.Origin != "uploaded" || c.Thumbprint == "" {
		t.Fatalf("upload: %+v %v", c, err)
	}
	if err := connect("manual-ca", manualDev); err == nil {
		t.Fatal("a device connected through an unverified CA")
	}
	// Proof of possession: a wrong code, a wrong signer, then the right one.
	if _, err := h.VerifyCACertificate(ctx, "fleet-root", "*", string(must(root.Verification("X", o)).CertPEM())); !hubErrorIs(err, http.StatusBadRequest, "") {
		t.Fatalf("verify before a code: %v", err)
	}
	c, err = h.GenerateVerificationCode(ctx, "fleet-root", c.ETag)
	if err != nil || len(c.VerificationCode) != 32 {
		t.Fatalf("generate code: %+v %v", c, err)
	}
	if _, err := h.GenerateVerificationCode(ctx, "fleet-root", `"stale"`); !hubErrorIs(err, http.StatusPreconditionFailed, "") {
		t.Fatalf("stale etag: %v", err)
	}
	for name, pem := range map[string][]byte{
		"wrong code":   must(root.Verification("not-the-code", o)).CertPEM(),
		"wrong signer": must(other.Verification(c.VerificationCode, o)).CertPEM(),
		"not PEM":      []byte("hello"),
	} {
		if _, err := h.VerifyCACertificate(ctx, "fleet-root", "*", string(pem)); !hubErrorIs(err, http.StatusBadRequest, "") {
			t.Errorf("verify with %s: %v", name, err)
		}
	}
	c, err = h.VerifyCACertificate(ctx, "fleet-root", c.ETag, string(must(root.Verification(c.VerificationCode, o)).CertPEM()))
	if err != nil || !c.IsVerified || c.VerificationCode != "" {
		t.Fatalf("verify: %+v %v", c, err)
	}
	if err := connect("manual-ca", manualDev); err != nil {
		t.Fatalf("refused through a verified CA: %v", err)
	}

	// A CA that vouched at provisioning: that device only.
	r := hub.NewRegistrar(hub.RegistrarOptions{Local: e.m})
	if err := r.RegisterDevice(ctx, &provision.HubDevice{Hub: host, DeviceID: "group-dev", X509: &provision.HubX509{CACertificates: []string{string(other.CertPEM())}}}); err != nil {
		t.Fatal(err)
	}
	if err := connect("group-dev", groupDev); err != nil {
		t.Fatalf("provisioned device refused: %v", err)
	}
	if err := connect("sneak", sneakDev); err == nil {
		t.Fatal("a device connected through a CA that vouched for another device")
	}
	if list, err := h.ListCACertificates(ctx); err != nil || len(list) != 1 {
		t.Fatalf("provisioning added hub CA certificates: %+v %v", list, err)
	}

	// Other errors; then deleting the certificate stops its devices.
	if _, err := h.UploadCACertificate(ctx, "again", string(root.CertPEM()), true); !hubErrorIs(err, http.StatusConflict, "") {
		t.Fatalf("same certificate twice: %v", err)
	}
	if _, err := h.UploadCACertificate(ctx, "leaf", string(manualDev.CertPEM()), true); !hubErrorIs(err, http.StatusBadRequest, "") {
		t.Fatalf("a leaf certificate as CA: %v", err)
	}
	if _, err := h.UploadCACertificate(ctx, "bad/name", string(root.CertPEM()), true); !hubErrorIs(err, http.StatusBadRequest, "") {
		t.Fatalf("bad name: %v", err)
	}
	if err := h.DeleteCACertificate(ctx, "fleet-root", `"stale"`); !hubErrorIs(err, http.StatusPreconditionFailed, "") {
		t.Fatalf("delete with a stale etag: %v", err)
	}
	if err := h.DeleteCACertificate(ctx, "fleet-root", ""); err != nil {
		t.Fatal(err)
	}
	if err := connect("manual-ca", manualDev); err == nil {
		t.Fatal("a device connected through a deleted CA")
	}
	if _, err := h.CACertificateInfo(ctx, "fleet-root"); !hubErrorIs(err, http.StatusNotFound, "") {
		t.Fatalf("show deleted: %v", err)
	}

	// Uploaded as verified, and the certificates survive a restart.
	if _, err := h.UploadCACertificate(ctx, "fleet-root-2", string(root.CertPEM()), true); err != nil {
		t.Fatal(err)
	}
	e.restart()
	h = e.hub("ca-hub")
	if err := connect("manual-ca", manualDev); err != nil {
		t.Fatalf("refused through a CA uploaded as verified, after a restart: %v", err)
	}
	if err := connect("group-dev", groupDev); err != nil {
		t.Fatalf("provisioned device refused after a restart: %v", err)
	}
}
