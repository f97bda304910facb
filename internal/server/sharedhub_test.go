package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// TestHubsOnTheNodeListeners: a hub created without an address is served
// on the node's own listeners, next to the provisioning service, told
// apart by the TLS server name (or, over HTTPS without one, the Host).
func TestHubsOnTheNodeListeners(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Config{
		DataDir: t.TempDir(), HostName: "dps.test",
		HTTPSAddr: "127.0.10.3:0", MQTTAddr: "127.0.10.3:0", AMQPAddr: "127.0.10.3:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	info := s.Info()

	in, err := s.hubs.Create(ctx, "node-shared", builtinhub.CreateOptions{})
	if err != nil {
		t.Fatalf("create hub without an address: %v", err)
	}
	if !in.Shared || in.Address != "127.0.10.3" || in.HTTPSAddr != info.HTTPSAddr || in.MQTTAddr != info.MQTTAddr {
		t.Fatalf("hub %+v is not on the node's listeners %s, %s", in, info.HTTPSAddr, info.MQTTAddr)
	}
	h, _ := s.hubs.Hub("node-shared")
	key := "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
	if _, err := h.CreateDevice(ctx, &azurehub.Device{DeviceID: "dev-1", Authentication: &azurehub.Authentication{
		Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: key, SecondaryKey: key}}}); err != nil {
		t.Fatal(err)
	}
	pemData, err := os.ReadFile(info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	cs, _ := sas.ParseConnectionString(in.ConnectionString)
	hubTok, _ := sas.New(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))

	get := func(serverName, host, path, auth string) (int, string) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, "https://"+info.HTTPSAddr+path, nil)
		req.Host = host
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("GET %s (SNI %q): %v", path, serverName, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name, serverName, host, path, auth string
		want                               int
		wantBody                           string
	}{
		{"hub by SNI", cs.HostName, cs.HostName, "/devices/dev-1?api-version=2021-04-12", hubTok, 200, `"deviceId":"dev-1"`},
		{"hub by Host, no SNI", "127.0.10.3", cs.HostName, "/devices/dev-1?api-version=2021-04-12", hubTok, 200, `"deviceId":"dev-1"`},
		{"provisioning service beside it", "dps.test", "dps.test", "/healthz", "", 200, ""},
		{"provisioning service by IP", "127.0.10.3", "127.0.10.3", "/healthz", "", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(tc.serverName, tc.host, tc.path, tc.auth)
			if status != tc.want || !strings.Contains(body, tc.wantBody) {
				t.Errorf("status %d %s, want %d with %s", status, body, tc.want, tc.wantBody)
			}
		})
	}

	t.Run("device MQTT by SNI on the node's MQTT listener", func(t *testing.T) {
		tok, _ := sas.New(url.QueryEscape(cs.HostName+"/devices/dev-1"), "", key, time.Now().Add(time.Hour))
		opts := paho.NewClientOptions().AddBroker("ssl://" + info.MQTTAddr).SetClientID("dev-1").
			SetUsername(cs.HostName + "/dev-1/?api-version=2021-04-12").SetPassword(tok).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: pool, ServerName: cs.HostName})
		c := paho.NewClient(opts)
		if tk := c.Connect(); !tk.WaitTimeout(15*time.Second) || tk.Error() != nil {
			t.Fatalf("connect: %v", tk.Error())
		}
		defer c.Disconnect(100)
		if tk := c.Publish("devices/dev-1/messages/events/", 1, false, "hello"); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("publish: %v", tk.Error())
		}
		for range 100 {
			if msgs := h.Messages("dev-1", 0, 10); len(msgs) == 1 && msgs[0].Body == "hello" {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("the hub did not get the telemetry")
	})

	t.Run("device MQTT by IP (GatewayHostName), told apart by user name", func(t *testing.T) {
		tok, _ := sas.New(url.QueryEscape(cs.HostName+"/devices/dev-1"), "", key, time.Now().Add(time.Hour))
		opts := paho.NewClientOptions().AddBroker("ssl://" + info.MQTTAddr).SetClientID("dev-1").
			SetUsername(cs.HostName + "/dev-1/?api-version=2021-04-12").SetPassword(tok).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: pool, ServerName: "127.0.10.3"}) // an IP: no SNI
		c := paho.NewClient(opts)
		if tk := c.Connect(); !tk.WaitTimeout(15*time.Second) || tk.Error() != nil {
			t.Fatalf("connect: %v", tk.Error())
		}
		c.Disconnect(100)
	})

	t.Run("device MQTT over WebSockets by IP, told apart by user name", func(t *testing.T) {
		tok, _ := sas.New(url.QueryEscape(cs.HostName+"/devices/dev-1"), "", key, time.Now().Add(time.Hour))
		opts := paho.NewClientOptions().AddBroker("wss://" + info.HTTPSAddr + "/$iothub/websocket").SetClientID("dev-1").
			SetUsername(cs.HostName + "/dev-1/?api-version=2021-04-12").SetPassword(tok).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: pool, ServerName: "127.0.10.3"}) // an IP: no SNI, Host the IP
		c := paho.NewClient(opts)
		if tk := c.Connect(); !tk.WaitTimeout(15*time.Second) || tk.Error() != nil {
			t.Fatalf("connect: %v", tk.Error())
		}
		defer c.Disconnect(100)
		if tk := c.Publish("devices/dev-1/messages/events/", 1, false, "over ws"); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("publish: %v", tk.Error())
		}
		for range 100 {
			for _, m := range h.Messages("dev-1", 0, 10) {
				if m.Body == "over ws" {
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("the hub did not get the telemetry sent over WebSockets")
	})

	// The provisioning service answers on the same listeners, with a
	// server name and without (its MQTT user names name no hub).
	for _, tr := range []device.Transport{device.TransportMQTT, device.TransportHTTPS} {
		for _, host := range []string{"dps.test", "127.0.10.3"} {
			t.Run("provisioning over "+string(tr)+" as "+host, func(t *testing.T) {
				rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
				defer rcancel()
				_, err := device.Register(rctx, device.Config{
					ProvisioningHost: host, DialAddr: addrFor(tr, info), IDScope: info.IDScope, RegistrationID: "nobody",
					SymmetricKey: key, Transport: tr, RootCAs: pool, Timeout: 30 * time.Second,
				})
				var de *dps.Error
				if !errors.As(err, &de) || de.ErrorCode/1000 != 401 {
					t.Fatalf("register an unknown device: %v, want the service's 401 answer", err)
				}
			})
		}
	}
}

func addrFor(tr device.Transport, info *Info) string {
	if tr == device.TransportMQTT {
		return info.MQTTAddr
	}
	return info.HTTPSAddr
}
