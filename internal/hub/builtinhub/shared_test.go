package builtinhub_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// sharedEnv is an env whose hubs without an address share three listeners
// (HTTPS, MQTT and AMQP) on 127.0.10.20, as a node's hubs share its listeners.
func sharedEnv(t *testing.T) (*env, *builtinhub.Shared) {
	t.Helper()
	return sharedEnvAt(t, "127.0.10.20")
}

// sharedEnvAt is sharedEnv with the listeners on ip.
func sharedEnvAt(t *testing.T, ip string) (*env, *builtinhub.Shared) {
	t.Helper()
	listen := func() net.Listener {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	httpsL, mqttL, amqpL := listen(), listen(), listen()
	shared := &builtinhub.Shared{Address: ip, HTTPSAddr: httpsL.Addr().String(), MQTTAddr: mqttL.Addr().String(), AMQPAddr: amqpL.Addr().String()}
	e := newEnv(t, func(o *builtinhub.Options) { o.Shared = shared })
	m := e.m
	go func() { _ = m.ServeListener(builtinhub.ProtocolHTTPS, httpsL) }()
	go func() { _ = m.ServeListener(builtinhub.ProtocolMQTT, mqttL) }()
	go func() { _ = m.ServeListener(builtinhub.ProtocolAMQP, amqpL) }()
	return e, shared
}

func TestHubsShareOneAddress(t *testing.T) {
	e, shared := sharedEnv(t)
	var hubs []*builtinhub.Hub
	for _, name := range []string{"shared-a", "shared-b"} {
		in, err := e.m.Create(context.Background(), name, builtinhub.CreateOptions{})
		if err != nil {
			t.Fatalf("create %s without an address: %v", name, err)
		}
		if !in.Shared || in.Address != shared.Address || in.HTTPSAddr != shared.HTTPSAddr || in.MQTTAddr != shared.MQTTAddr ||
			in.HostsLine != shared.Address+" "+name+".azure-devices.internal" {
			t.Errorf("hub %s: %+v, want it on the shared endpoint %+v", name, in, shared)
		}
		h := e.hub(name)
		createDevice(t, h, "dev-"+name)
		hubs = append(hubs, h)
	}
	a, b := hubs[0], hubs[1]
	aHost, bHost := a.Config().HostName, b.Config().HostName

	t.Run("MQTT by TLS server name", func(t *testing.T) {
		dc, _, err := dialDevice(t, e, "dev-shared-a", dialOpts{host: aHost, addr: shared.MQTTAddr, tlsName: aHost, clean: true})
		if err != nil {
			t.Fatalf("device of hub a over the shared MQTT listener: %v", err)
		}
		dc.publish(t, "devices/dev-shared-a/messages/events/", 1, "to-a")
		waitMessage(t, a, "dev-shared-a", "to-a")
		if got := b.Messages("", 0, 10); len(got) != 0 {
			t.Errorf("hub b got hub a's telemetry: %+v", got)
		}
	})
	t.Run("MQTT by user name, no server name", func(t *testing.T) {
		// Dialled by IP address: Go sends no SNI; the user name says the hub.
		dc, _, err := dialDevice(t, e, "dev-shared-b", dialOpts{host: bHost, addr: shared.MQTTAddr, tlsName: shared.Address, clean: true})
		if err != nil {
			t.Fatalf("device of hub b by IP over the shared MQTT listener: %v", err)
		}
		dc.publish(t, "devices/dev-shared-b/messages/events/", 1, "to-b")
		waitMessage(t, b, "dev-shared-b", "to-b")
	})
	t.Run("MQTT by user name of the shared address: the hub that has the device", func(t *testing.T) {
		// What X.509 devices of the Node SDK send: HostName=<address>.
		dc, _, err := dialDevice(t, e, "dev-shared-b", dialOpts{host: shared.Address, addr: shared.MQTTAddr, tlsName: shared.Address, clean: true})
		if err != nil {
			t.Fatalf("device of hub b naming the shared address: %v", err)
		}
		dc.publish(t, "devices/dev-shared-b/messages/events/", 1, "by-address")
		waitMessage(t, b, "dev-shared-b", "by-address")
	})
	t.Run("MQTT by shared address, device in two hubs: refused", func(t *testing.T) {
		createDevice(t, a, "dev-twice")
		createDevice(t, b, "dev-twice")
		if _, _, err := dialDevice(t, e, "dev-twice", dialOpts{host: shared.Address, addr: shared.MQTTAddr, tlsName: shared.Address, clean: true}); err == nil {
			t.Fatal("an ambiguous device was given to one of its hubs")
		}
	})
	t.Run("MQTT device of one hub refused by another", func(t *testing.T) {
		_, _, err := dialDevice(t, e, "dev-shared-a", dialOpts{host: bHost, addr: shared.MQTTAddr, tlsName: bHost, clean: true})
		if err == nil {
			t.Fatal("hub b accepted hub a's device")
		}
	})
	t.Run("MQTT for no hub", func(t *testing.T) {
		_, _, err := dialDevice(t, e, "dev-shared-a", dialOpts{host: "nohub.azure-devices.internal", addr: shared.MQTTAddr, tlsName: shared.Address, clean: true})
		if err == nil {
			t.Fatal("a CONNECT for no hub was accepted")
		}
	})
	t.Run("REST by TLS server name and by Host header", func(t *testing.T) {
		for _, tc := range []struct {
			name, tlsName string
			hub           *builtinhub.Hub
		}{
			{"SNI a", aHost, a},
			{"SNI b", bHost, b},
			{"Host a, no SNI", shared.Address, a},
			{"Host b, no SNI", shared.Address, b},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := sharedREST(t, e, shared.HTTPSAddr, tc.tlsName, tc.hub, "/devices/dev-"+tc.hub.Name())
				if status != http.StatusOK || !strings.Contains(body, `"deviceId":"dev-`+tc.hub.Name()+`"`) {
					t.Errorf("GET device of %s: %d %s", tc.hub.Name(), status, body)
				}
			})
		}
	})
}

// sharedREST sends GET path to hub h at addr with TLS server name tlsName
// and the hub's host name in Host, signed with its owner policy.
func sharedREST(t *testing.T, e *env, addr, tlsName string, h *builtinhub.Hub, path string) (int, string) {
	t.Helper()
	cfg := h.Config()
	cs := cfg.ConnectionString()
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := &tls.Dialer{Config: e.tlsConfig(tlsName)}
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "https://"+cs.HostName+path+"?api-version=2021-04-12", nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := sas.New(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))
	req.Header.Set("Authorization", tok)
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func waitMessage(t *testing.T, h *builtinhub.Hub, device, body string) {
	t.Helper()
	for range 100 {
		for _, m := range h.Messages(device, 0, 100) {
			if string(m.Body) == body {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("hub %s has no message %q from %s", h.Name(), body, device)
}

func TestCreateWithUnusableAddressSaysWhy(t *testing.T) {
	e, _ := sharedEnv(t)
	// 192.0.2.1 (TEST-NET-1) is no address of this machine.
	_, err := e.m.Create(context.Background(), "own-address", builtinhub.CreateOptions{Address: "192.0.2.1"})
	if !errors.Is(err, builtinhub.ErrInvalid) || !strings.Contains(err.Error(), "cannot listen on 192.0.2.1:") ||
		!strings.Contains(err.Error(), "not one of this machine's") {
		t.Fatalf("create on a foreign address: %v, want an invalid-argument error naming the cause", err)
	}
	if _, err := e.m.Info(context.Background(), "own-address"); !errors.Is(err, builtinhub.ErrHubNotFound) {
		t.Errorf("the hub that could not listen was kept: %v", err)
	}
}

// TestTelemetryStreamAndBatch: a batch of telemetry over the device HTTPS
// API reaches a follower of the management API's event stream.
func TestTelemetryStreamAndBatch(t *testing.T) {
	e, shared := sharedEnv(t)
	if _, err := e.m.Create(context.Background(), "stream-hub", builtinhub.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := e.hub("stream-hub")
	createDevice(t, h, "dev1")
	host := h.Config().HostName

	admin := httptest.NewUnstartedServer(e.m.Handler())
	adminL, err := net.Listen("tcp", "127.0.10.20:0")
	if err != nil {
		t.Fatal(err)
	}
	admin.Listener.Close()
	admin.Listener = adminL
	admin.Start()
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, admin.URL+"/dpsd/hubs/stream-hub/messages?deviceId=dev1", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	batch := `[{"body":"b25l","base64Encoded":true,"properties":{"iothub-app-Kind":"first","iothub-messageid":"m1"}},{"body":"two","base64Encoded":false,"properties":{}}]`
	tok, _ := sas.New(url.QueryEscape(host+"/devices/dev1"), "", testKey1, time.Now().Add(time.Hour))
	post, _ := http.NewRequest(http.MethodPost, "https://"+shared.HTTPSAddr+"/devices/dev1/messages/events?api-version=2020-09-30", strings.NewReader(batch))
	post.Host = host
	post.Header.Set("Authorization", tok)
	post.Header.Set("Content-Type", "application/vnd.microsoft.iothub.json")
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(host)}
	defer tr.CloseIdleConnections()
	pr, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(post)
	if err != nil || pr.StatusCode != http.StatusNoContent {
		t.Fatalf("batch: %v %v", pr, err)
	}
	pr.Body.Close()

	sc := bufio.NewScanner(resp.Body)
	var got []builtinhub.Message
	for len(got) < 2 && sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var m builtinhub.Message
			if err := json.Unmarshal([]byte(data), &m); err != nil {
				t.Fatal(err)
			}
			got = append(got, m)
		}
	}
	if len(got) != 2 || got[0].Body != "one" || got[0].Properties["Kind"] != "first" || got[0].SystemProperties["messageId"] != "m1" || got[1].Body != "two" {
		t.Fatalf("streamed %+v (scan: %v)", got, sc.Err())
	}
}
