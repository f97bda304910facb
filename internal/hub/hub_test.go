package hub_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// builtin starts a manager of built-in hubs whose REST API the client
// tests talk to over real HTTPS.
type builtin struct {
	m  *builtinhub.Manager
	ca *localca.CA
}

func startBuiltin(t *testing.T, rate float64, burst int) *builtin {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := localca.LoadOrCreate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := builtinhub.NewManager(st, builtinhub.Options{
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Certificate: ca.ServerCertificate,
		HTTPSPort:   "0",
		MQTTPort:    "0",
		AMQPPort:    "0",
		RESTRate:    rate,
		RESTBurst:   burst,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	return &builtin{m: m, ca: ca}
}

func (b *builtin) create(t *testing.T, name, addr string) *builtinhub.Hub {
	t.Helper()
	if _, err := b.m.Create(context.Background(), name, builtinhub.CreateOptions{Address: addr}); err != nil {
		t.Fatal(err)
	}
	h, _ := b.m.Hub(name)
	return h
}

// httpClient reaches every built-in hub by its host name, which does not
// resolve, by dialing its listen address instead.
func (b *builtin) httpClient() *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: b.ca.Pool(), MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			list, _ := b.m.List(ctx)
			for _, in := range list {
				if strings.EqualFold(in.HostName, host) {
					addr = in.HTTPSAddr
				}
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func (b *builtin) client(t *testing.T, h *builtinhub.Hub, opts ...azurehub.ClientOption) *azurehub.Client {
	t.Helper()
	cfg := h.Config()
	c, err := azurehub.NewClient(cfg.ConnectionString(), append([]azurehub.ClientOption{azurehub.WithHTTPClient(b.httpClient())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	key1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
	key2 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
	key3 = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
)

func TestClientAgainstBuiltinHub(t *testing.T) {
	b := startBuiltin(t, 0, 0)
	h := b.create(t, "client-hub", "127.0.0.30")
	c := b.client(t, h)
	ctx := context.Background()

	d, err := c.CreateDevice(ctx, &azurehub.Device{DeviceID: "dev1", Authentication: &azurehub.Authentication{Type: azurehub.AuthSAS,
		SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: key1, SecondaryKey: key2}}, Capabilities: &azurehub.Capabilities{IoTEdge: true}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Authentication.SymmetricKey.PrimaryKey != key1 || !d.Capabilities.IoTEdge || d.ETag == "" {
		t.Fatalf("created %+v", d)
	}

	_, err = c.CreateDevice(ctx, &azurehub.Device{DeviceID: "dev1"})
	var he *azurehub.Error
	if !errors.Is(err, azurehub.ErrExists) || !errors.As(err, &he) || he.Code != azurehub.CodeDeviceAlreadyExists || he.TrackingID == "" {
		t.Fatalf("create again: %v", err)
	}

	got, err := c.GetDevice(ctx, "dev1")
	if err != nil || got.ETag != d.ETag {
		t.Fatalf("get: %+v %v", got, err)
	}
	upd := *got
	upd.Status = azurehub.StatusDisabled
	if _, err := c.UpdateDevice(ctx, &upd, got.ETag); err != nil {
		t.Fatalf("update with etag: %v", err)
	}
	if _, err := c.UpdateDevice(ctx, &upd, got.ETag); !errors.Is(err, azurehub.ErrPrecondition) {
		t.Fatalf("update with stale etag: %v", err)
	}

	tw, err := c.GetTwin(ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	patch := &azurehub.Twin{Tags: map[string]any{"deviceType": "toaster"}, Properties: &azurehub.TwinProperties{Desired: map[string]any{"state": "ready"}}}
	tw2, err := c.UpdateTwin(ctx, "dev1", patch, tw.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if tw2.Tags["deviceType"] != "toaster" || tw2.Properties.Desired["state"] != "ready" {
		t.Fatalf("twin %+v", tw2)
	}
	if _, err := c.UpdateTwin(ctx, "dev1", patch, tw.ETag); !errors.Is(err, azurehub.ErrPrecondition) {
		t.Fatalf("twin with stale etag: %v", err)
	}
	tw3, err := c.ReplaceTwin(ctx, "dev1", &azurehub.Twin{Tags: map[string]any{"x": "y"}}, "")
	if err != nil || len(tw3.Tags) != 1 || tw3.Properties.Desired["state"] != nil {
		t.Fatalf("replace: %+v %v", tw3, err)
	}

	if err := c.DeleteDevice(ctx, "dev1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDevice(ctx, "dev1"); !errors.Is(err, azurehub.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := c.DeleteDevice(ctx, "dev1", ""); !errors.Is(err, azurehub.ErrNotFound) {
		t.Fatalf("delete again: %v", err)
	}

	// A policy of another hub is refused.
	cfg := h.Config()
	bad := *cfg.ConnectionString()
	bad.SharedAccessKey = key3
	bc, _ := azurehub.NewClient(&bad, azurehub.WithHTTPClient(b.httpClient()), azurehub.WithRetry(1, 0))
	if _, err := bc.GetDevice(ctx, "dev1"); !errors.Is(err, azurehub.ErrUnauthorized) {
		t.Fatalf("bad key: %v", err)
	}
}

// TestClientRetriesThrottling runs against a hub that throttles its REST
// API to one request per second: without retries the client sees 429,
// with them (honouring Retry-After) every request gets through.
func TestClientRetriesThrottling(t *testing.T) {
	b := startBuiltin(t, 1, 1)
	h := b.create(t, "throttled-hub", "127.0.0.31")
	ctx := context.Background()

	noRetry := b.client(t, h, azurehub.WithRetry(1, 0))
	var throttled bool
	for i := range 5 {
		_, err := noRetry.GetDevice(ctx, "x")
		if errors.Is(err, azurehub.ErrThrottled) {
			var he *azurehub.Error
			errors.As(err, &he)
			if he.RetryAfter <= 0 {
				t.Errorf("429 without Retry-After: %+v", he)
			}
			throttled = true
			break
		}
		if !errors.Is(err, azurehub.ErrNotFound) {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if !throttled {
		t.Fatal("never throttled")
	}

	retry := b.client(t, h, azurehub.WithRetry(6, 10*time.Millisecond))
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := range 3 {
		wg.Go(func() {
			_, err := retry.CreateDevice(ctx, &azurehub.Device{DeviceID: "dev" + string(rune('a'+i))})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("with retries: %v", err)
		}
	}
}

// credentials give the registrar the built-in hubs' connection strings
// for REST, as linked hubs would.
type credentials struct{ m *builtinhub.Manager }

func (c credentials) HubConnectionString(ctx context.Context, host string) (*sas.ConnectionString, error) {
	return c.m.HubConnectionString(ctx, host)
}

func TestRegistrar(t *testing.T) {
	for _, mode := range []string{"in-process", "rest"} {
		t.Run(mode, func(t *testing.T) {
			b := startBuiltin(t, 0, 0)
			addrs := map[string][2]string{"in-process": {"127.0.0.32", "127.0.0.33"}, "rest": {"127.0.0.34", "127.0.0.35"}}[mode]
			h1 := b.create(t, "contoso-toasters-hub-1098", addrs[0])
			h2 := b.create(t, "contoso-heatpumps-hub-1098", addrs[1])
			host1, host2 := h1.Config().HostName, h2.Config().HostName
			opt := hub.RegistrarOptions{Credentials: credentials{b.m}}
			if mode == "in-process" {
				opt.Local = b.m
			} else {
				opt.ClientOptions = []azurehub.ClientOption{azurehub.WithHTTPClient(b.httpClient())}
			}
			r := hub.NewRegistrar(opt)
			ctx := context.Background()
			initial := &dps.InitialTwin{
				Tags:       []byte(`{"deviceType":"toaster"}`),
				Properties: &dps.InitialTwinProperties{Desired: []byte(`{"state":"ready","darknessSetting":"medium"}`)},
			}
			dev := &provision.HubDevice{Hub: host1, DeviceID: "breakroom499-contoso-tstrsd-007", PrimaryKey: key1, SecondaryKey: key2, InitialTwin: initial}

			// First registration: identity with the device's keys, initial twin.
			if err := r.RegisterDevice(ctx, dev); err != nil {
				t.Fatal(err)
			}
			d, err := h1.GetDevice(ctx, dev.DeviceID)
			if err != nil || d.Authentication.SymmetricKey.PrimaryKey != key1 || d.Status != azurehub.StatusEnabled {
				t.Fatalf("identity %+v %v", d, err)
			}
			tw, _ := h1.GetTwin(ctx, dev.DeviceID)
			if tw.Tags["deviceType"] != "toaster" || tw.Properties.Desired["darknessSetting"] != "medium" {
				t.Fatalf("initial twin %+v", tw)
			}

			// The device changes its twin; a repeated registration keeps it.
			if err := h1.ImportReported(ctx, dev.DeviceID, map[string]any{"fw": "1.0"}); err != nil {
				t.Fatal(err)
			}
			if _, err := h1.UpdateTwin(ctx, dev.DeviceID, &azurehub.Twin{Properties: &azurehub.TwinProperties{Desired: map[string]any{"state": "toasting"}}}, "*"); err != nil {
				t.Fatal(err)
			}
			if err := r.RegisterDevice(ctx, dev); err != nil {
				t.Fatal(err)
			}
			if tw, _ := h1.GetTwin(ctx, dev.DeviceID); tw.Properties.Desired["state"] != "toasting" {
				t.Fatalf("re-registration changed the twin: %+v", tw.Properties.Desired)
			}

			// New keys (re-keyed enrollment) update the identity.
			dev.PrimaryKey = key3
			if err := r.RegisterDevice(ctx, dev); err != nil {
				t.Fatal(err)
			}
			if d, _ := h1.GetDevice(ctx, dev.DeviceID); d.Authentication.SymmetricKey.PrimaryKey != key3 {
				t.Fatalf("keys not updated: %+v", d.Authentication.SymmetricKey)
			}

			// Factory reset on the same hub.
			reset := *dev
			reset.ResetTwin = true
			if err := r.RegisterDevice(ctx, &reset); err != nil {
				t.Fatal(err)
			}
			if tw, _ := h1.GetTwin(ctx, dev.DeviceID); tw.Properties.Desired["state"] != "ready" {
				t.Fatalf("reset twin %+v", tw.Properties.Desired)
			}

			// Move with migration: twin data follows, the old identity goes.
			if _, err := h1.UpdateTwin(ctx, dev.DeviceID, &azurehub.Twin{Tags: map[string]any{"room": "499"}}, "*"); err != nil {
				t.Fatal(err)
			}
			move := *dev
			move.Hub, move.PreviousHub, move.MigrateDeviceData = host2, host1, true
			move.InitialTwin = &dps.InitialTwin{Tags: []byte(`{"deviceType":"heatpump"}`)}
			for range 2 { // idempotent
				if err := r.RegisterDevice(ctx, &move); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := h1.GetDevice(ctx, dev.DeviceID); !errors.Is(err, azurehub.ErrNotFound) {
				t.Fatalf("old identity still there: %v", err)
			}
			tw, err = h2.GetTwin(ctx, dev.DeviceID)
			if err != nil || tw.Tags["room"] != "499" || tw.Tags["deviceType"] != "toaster" || tw.Properties.Desired["state"] != "ready" {
				t.Fatalf("migrated twin %+v %v", tw, err)
			}
			if mode == "in-process" && tw.Properties.Reported["fw"] != "1.0" {
				t.Errorf("reported not migrated: %+v", tw.Properties.Reported)
			}

			// Move back with reset: the initial twin, nothing carried.
			back := *dev
			back.PreviousHub, back.ResetTwin = host2, true
			if err := r.RegisterDevice(ctx, &back); err != nil {
				t.Fatal(err)
			}
			if _, err := h2.GetDevice(ctx, dev.DeviceID); !errors.Is(err, azurehub.ErrNotFound) {
				t.Fatalf("identity left in hub 2: %v", err)
			}
			if tw, _ := h1.GetTwin(ctx, dev.DeviceID); tw.Tags["room"] != nil || tw.Tags["deviceType"] != "toaster" {
				t.Fatalf("reset after move %+v", tw.Tags)
			}

			// An unknown hub fails the registration.
			if err := r.RegisterDevice(ctx, &provision.HubDevice{Hub: "nowhere.example", DeviceID: "x", PrimaryKey: key1, SecondaryKey: key2}); err == nil {
				t.Fatal("unknown hub accepted")
			}
		})
	}
}

// A device DPS registers through an edge-enabled enrollment gets its own
// edge scope, and keeps a parent the hub's operator gave it.
func TestRegistrarEdgeScope(t *testing.T) {
	b := startBuiltin(t, 0, 0)
	h := b.create(t, "edge-scope-hub", "127.0.19.12")
	r := hub.NewRegistrar(hub.RegistrarOptions{Credentials: credentials{b.m}, Local: b.m})
	ctx := context.Background()
	dev := &provision.HubDevice{Hub: h.Config().HostName, DeviceID: "edge-gw", PrimaryKey: key1, SecondaryKey: key2, IoTEdge: true}
	if err := r.RegisterDevice(ctx, dev); err != nil {
		t.Fatal(err)
	}
	d, err := h.GetDevice(ctx, dev.DeviceID)
	if err != nil || d.DeviceScope != "ms-azure-iot-edge://edge-gw-"+d.GenerationID || !d.Capabilities.IoTEdge {
		t.Fatalf("edge identity %+v %v", d, err)
	}
	parent := d.DeviceScope

	// A leaf registered without edge gets no scope; its operator sets a
	// parent, and a new registration (re-keyed) keeps it.
	leaf := &provision.HubDevice{Hub: h.Config().HostName, DeviceID: "leaf", PrimaryKey: key1, SecondaryKey: key2}
	if err := r.RegisterDevice(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	ld, _ := h.GetDevice(ctx, "leaf")
	if ld.DeviceScope != "" || len(ld.ParentScopes) != 0 {
		t.Fatalf("leaf scopes %+v", ld)
	}
	ld.ParentScopes = []string{parent}
	if _, err := h.UpdateDevice(ctx, ld, "*"); err != nil {
		t.Fatal(err)
	}
	leaf.PrimaryKey = key3
	if err := r.RegisterDevice(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	if ld, _ = h.GetDevice(ctx, "leaf"); ld.DeviceScope != parent || len(ld.ParentScopes) != 1 || ld.ParentScopes[0] != parent || ld.Authentication.SymmetricKey.PrimaryKey != key3 {
		t.Fatalf("leaf after re-registration %+v", ld)
	}
	// The enrollment turns edge on: own scope, parent kept.
	leaf.IoTEdge = true
	if err := r.RegisterDevice(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	if ld, _ = h.GetDevice(ctx, "leaf"); ld.DeviceScope != "ms-azure-iot-edge://leaf-"+ld.GenerationID || len(ld.ParentScopes) != 1 || ld.ParentScopes[0] != parent {
		t.Fatalf("leaf made edge %+v", ld)
	}
}
