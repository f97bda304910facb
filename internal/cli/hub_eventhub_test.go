package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// TestHubConnectionStringShow checks "dpsd hub connection-string show",
// with and without --default-eventhub, against a manager whose shared
// endpoint (on 127.0.18.2) has an AMQP listener.
func TestHubConnectionStringShow(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := localca.LoadOrCreate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	adminL, err := net.Listen("tcp", "127.0.18.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adminL.Close() })
	m, err := builtinhub.NewManager(st, builtinhub.Options{
		Logger:      slog.New(slog.DiscardHandler),
		Certificate: ca.ServerCertificate,
		// Listeners that are only shown, not served: the command reads
		// the hub's info.
		Shared: &builtinhub.Shared{Address: "127.0.18.2", HTTPSAddr: "127.0.18.2:443", MQTTAddr: "127.0.18.2:8883", AMQPAddr: "127.0.18.2:5671"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	})
	cert, err := ca.ServerCertificate("admin", []string{"127.0.18.2"})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.ServeTLS(adminL, "", "") }()
	t.Cleanup(func() { srv.Close() })
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	e := &hubCLIEnv{t: t, m: m, ca: ca, caFile: ca.CertFile(),
		cs: "HostName=" + adminL.Addr().String() + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=c2VydmljZS1rZXk="}
	if _, err := m.Create(t.Context(), "telemetry-hub", builtinhub.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h, _ := m.Hub("telemetry-hub")
	keys := map[string]string{}
	for _, p := range h.Config().Policies {
		keys[p.KeyName] = p.PrimaryKey
	}
	host := h.Config().HostName

	got := strings.TrimSpace(e.mustRun("connection-string", "show", "-n", "telemetry-hub", "--default-eventhub"))
	want := "Endpoint=sb://" + host + "/;SharedAccessKeyName=service;SharedAccessKey=" + keys["service"] + ";EntityPath=telemetry-hub"
	if got != want {
		t.Errorf("--default-eventhub:\n got %s\nwant %s", got, want)
	}
	got = strings.TrimSpace(e.mustRun("connection-string", "show", "-n", "telemetry-hub", "--default-eventhub", "--policy-name", "iothubowner"))
	want = "Endpoint=sb://" + host + "/;SharedAccessKeyName=iothubowner;SharedAccessKey=" + keys["iothubowner"] + ";EntityPath=telemetry-hub"
	if got != want {
		t.Errorf("--policy-name iothubowner:\n got %s\nwant %s", got, want)
	}
	got = strings.TrimSpace(e.mustRun("connection-string", "show", "-n", "telemetry-hub"))
	if !strings.HasPrefix(got, "HostName="+host+";SharedAccessKeyName=iothubowner;") {
		t.Errorf("the hub's connection string: %s", got)
	}
	if out := e.mustRun("show", "telemetry-hub"); !strings.Contains(out, "sb://"+host+"/") {
		t.Errorf("hub show has no Event Hubs-compatible endpoint:\n%s", out)
	}
	var out bytes.Buffer
	if err := e.run(t.Context(), &out, "connection-string", "show", "-n", "telemetry-hub", "--default-eventhub", "--policy-name", "device"); err == nil || !strings.Contains(err.Error(), "service or iothubowner") {
		t.Errorf("--policy-name device: %v", err)
	}
}
