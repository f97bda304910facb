package builtinhub_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store"
)

// connectWithCert connects a device with a client certificate and no
// password, as the SDKs do with x509=true, and returns the CONNECT error.
func connectWithCert(t *testing.T, e *env, host, addr, id string, dev *certs.Issued, withChain bool) error {
	t.Helper()
	cert := tls.Certificate{Certificate: [][]byte{dev.Cert.Raw}, PrivateKey: dev.Key, Leaf: dev.Cert}
	if withChain {
		for _, c := range dev.Issuers {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
	}
	tc := e.tlsConfig(host)
	tc.Certificates = []tls.Certificate{cert}
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + addr).
		SetClientID(id).
		SetUsername(host + "/" + id + "/?api-version=2021-04-12&DeviceClientType=dpsd-test").
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetTLSConfig(tc)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		t.Fatal("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(100)
	return nil
}

// TestX509Devices: identities the registrar creates for X.509 devices
// ("selfSigned" with the enrollment's thumbprints, "certificateAuthority"
// with the CA that vouched) let the devices connect with their
// certificates, and nothing else.
func TestX509Devices(t *testing.T) {
	must := func(i *certs.Issued, err error) *certs.Issued {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	o := certs.IssueOptions{}
	root := must(certs.NewRoot("Root", o))
	inter := must(root.Intermediate("Intermediate", o))
	stranger := must(certs.NewRoot("Stranger", o))
	selfDev := must(inter.Device("x509-self", o))
	selfOther := must(inter.Device("x509-self", o))
	caDev := must(inter.Device("x509-ca", o))
	caWrongCN := must(inter.Device("someone-else", o))
	caStranger := must(stranger.Device("x509-ca", o))
	viaRoot := must(inter.Device("x509-root", o))

	e := newEnv(t, nil)
	h := e.createHub("x509-hub", "127.0.5.20")
	host := h.Config().HostName
	r := hub.NewRegistrar(hub.RegistrarOptions{Local: e.m})
	ctx := context.Background()
	devices := []*provision.HubDevice{
		{Hub: host, DeviceID: "x509-self", X509: &provision.HubX509{PrimaryThumbprint: provision.Thumbprint(selfDev.Cert)}},
		{Hub: host, DeviceID: "x509-ca", X509: &provision.HubX509{CACertificates: []string{enroll.CertificatePEM(inter.Cert)}}},
		{Hub: host, DeviceID: "x509-root", X509: &provision.HubX509{CACertificates: []string{enroll.CertificatePEM(root.Cert)}}},
	}
	for _, d := range devices {
		for range 2 { // idempotent
			if err := r.RegisterDevice(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	if d, err := h.GetDevice(ctx, "x509-self"); err != nil || d.Authentication.Type != azurehub.AuthSelfSigned || *d.Authentication.X509Thumbprint.PrimaryThumbprint != provision.Thumbprint(selfDev.Cert) {
		t.Fatalf("selfSigned identity: %+v %v", d, err)
	}
	if d, err := h.GetDevice(ctx, "x509-ca"); err != nil || d.Authentication.Type != azurehub.AuthCertificateAuthority {
		t.Fatalf("certificateAuthority identity: %+v %v", d, err)
	}

	tests := []struct {
		name      string
		id        string
		dev       *certs.Issued
		withChain bool
		ok        bool
	}{
		{"selfSigned with its certificate", "x509-self", selfDev, false, true},
		{"selfSigned with another certificate", "x509-self", selfOther, true, false},
		{"CA device with chain", "x509-ca", caDev, true, true},
		{"CA device with the leaf alone", "x509-ca", caDev, false, true},
		{"CA device through an intermediate to the trusted root", "x509-root", viaRoot, true, true},
		{"CA device with another CN", "x509-ca", caWrongCN, true, false},
		{"CA device from an unknown CA", "x509-ca", caStranger, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := connectWithCert(t, e, host, mqttAddr(h), tc.id, tc.dev, tc.withChain)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("accepted")
			}
		})
	}

	// Deleting the hub removes the CAs it trusted with it.
	if err := e.m.Delete(ctx, "x509-hub"); err != nil {
		t.Fatal(err)
	}
	recs, _, err := e.st.List(ctx, builtinhub.KindCA, store.ListOptions{})
	if err != nil || len(recs) != 0 {
		t.Fatalf("hub CA records left: %d %v", len(recs), err)
	}
}
