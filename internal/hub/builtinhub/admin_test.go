package builtinhub_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// TestAdminAPI drives the management API over HTTPS with the CLI's client,
// authorized by a service SAS the way dpsd's service API checks it.
func TestAdminAPI(t *testing.T) {
	serviceKey := sas.GenerateKey(32)
	authorize := func(r *http.Request) error {
		tok, err := sas.Parse(r.Header.Get("Authorization"))
		if err != nil {
			return err
		}
		key, _ := base64.StdEncoding.DecodeString(serviceKey)
		if tok.KeyName != "provisioningserviceowner" || !tok.Verify(key) {
			return dps.Errorf(dps.CodeUnauthorized, "bad token")
		}
		return nil
	}
	e := newEnv(t, func(o *builtinhub.Options) { o.Authorize = authorize })

	cert, err := e.ca.ServerCertificate("admin-test", []string{"dpsd.test", "127.0.0.37"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.37:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() { srv.Close() })

	cs := "HostName=dpsd.test;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + serviceKey
	c, err := builtinhub.NewAdminClient(cs, builtinhub.AdminClientOptions{CAFiles: []string{e.ca.CertFile()}, DialAddr: l.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	in, err := c.Create(ctx, "admin-hub", builtinhub.CreateRequest{Address: "127.0.0.38"})
	if err != nil {
		t.Fatal(err)
	}
	if in.HostName != "admin-hub.azure-devices.internal" || !in.Running || in.HostsLine != "127.0.0.38 admin-hub.azure-devices.internal" || in.ConnectionString == "" {
		t.Fatalf("created %+v", in)
	}
	var de *dps.Error
	if _, err := c.Create(ctx, "admin-hub", builtinhub.CreateRequest{}); !errors.As(err, &de) || de.ErrorCode != dps.CodeConflict {
		t.Fatalf("create again: %v", err)
	}
	if _, err := c.Create(ctx, "-bad", builtinhub.CreateRequest{}); !errors.As(err, &de) || de.ErrorCode != dps.CodeInvalidArgument {
		t.Fatalf("bad name: %v", err)
	}
	list, err := c.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "admin-hub" {
		t.Fatalf("list %+v %v", list, err)
	}

	h := e.hub("admin-hub")
	createDevice(t, h, "dev1")
	devs, err := c.Devices(ctx, "admin-hub", "", 0)
	if err != nil || len(devs.Devices) != 1 || devs.Devices[0].DeviceID != "dev1" {
		t.Fatalf("devices %+v %v", devs, err)
	}
	if d, err := c.Device(ctx, "admin-hub", "dev1"); err != nil || d.Authentication.SymmetricKey.PrimaryKey != testKey1 {
		t.Fatalf("device %+v %v", d, err)
	}
	if tw, err := c.Twin(ctx, "admin-hub", "dev1"); err != nil || tw.DeviceID != "dev1" {
		t.Fatalf("twin %+v %v", tw, err)
	}
	if _, err := c.Device(ctx, "admin-hub", "nope"); !errors.As(err, &de) || de.ErrorCode != dps.CodeNotFound {
		t.Fatalf("missing device: %v", err)
	}
	if msgs, err := c.Messages(ctx, "admin-hub", "", 0, 0); err != nil || len(msgs) != 0 {
		t.Fatalf("messages %+v %v", msgs, err)
	}

	bad, _ := builtinhub.NewAdminClient("HostName=dpsd.test;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="+sas.GenerateKey(32),
		builtinhub.AdminClientOptions{CAFiles: []string{e.ca.CertFile()}, DialAddr: l.Addr().String()})
	if _, err := bad.List(ctx); !errors.As(err, &de) || de.ErrorCode != dps.CodeUnauthorized {
		t.Fatalf("bad key: %v", err)
	}

	if err := c.Delete(ctx, "admin-hub"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Show(ctx, "admin-hub"); !errors.As(err, &de) || de.ErrorCode != dps.CodeNotFound {
		t.Fatalf("show deleted: %v", err)
	}
	// The address is free again.
	if _, err := c.Create(ctx, "admin-hub", builtinhub.CreateRequest{Address: "127.0.0.38"}); err != nil {
		t.Fatalf("re-create: %v", err)
	}
	if devs, _ := c.Devices(ctx, "admin-hub", "", 0); len(devs.Devices) != 0 {
		t.Fatalf("devices survived delete: %+v", devs.Devices)
	}
}
