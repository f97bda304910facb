package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/throttle"
)

const testBodyTimeout = 300 * time.Millisecond

func startLimitedServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.HostName = "dps.test"
	cfg.HTTPSAddr, cfg.MQTTAddr, cfg.AMQPAddr = "127.0.9.2:0", "127.0.9.2:0", "127.0.9.2:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func tlsConfig(t *testing.T, info *Info) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, ServerName: "dps.test"}
}

// TestSlowBodyCut checks that a body trickled in after the headers cannot
// hold a connection on the HTTPS listener, while MQTT over WebSockets on
// the same listener is not bound by the body deadline.
func TestSlowBodyCut(t *testing.T) {
	s := startLimitedServer(t, Config{BodyTimeout: testBodyTimeout})
	info := s.Info()

	t.Run("register body", func(t *testing.T) {
		c, err := tls.Dial("tcp", info.HTTPSAddr, tlsConfig(t, info))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT /%s/registrations/dev/register?api-version=2019-03-31 HTTP/1.1\r\nHost: dps.test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", info.IDScope)
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection still open after 10 s")
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("connection ended after %v, want about %v", d, testBodyTimeout)
		}
	})

	t.Run("MQTT over WebSockets outlives it", func(t *testing.T) {
		d := websocket.Dialer{TLSClientConfig: tlsConfig(t, info), Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
		ws, _, err := d.Dial("wss://"+info.HTTPSAddr+"/$iothub/websocket", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		time.Sleep(3 * testBodyTimeout)
		var buf bytes.Buffer
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 4,
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), ClientIdentifier: "dev", Clean: true, Keepalive: 60,
				UsernameFlag: true, Username: []byte(info.IDScope + "/registrations/dev/api-version=2019-03-31"),
			},
		}
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		if err := ws.WriteMessage(websocket.BinaryMessage, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("no CONNACK: %v", err)
		}
		if len(msg) != 4 || msg[0] != packets.Connack<<4 || msg[3] != 0 {
			t.Fatalf("CONNACK % x, want accepted", msg)
		}
	})
}

// TestConnectionCaps checks that the caps count the connections of every
// listener together: with two allowed per source, a third is refused
// whichever listener it reaches.
func TestConnectionCaps(t *testing.T) {
	s := startLimitedServer(t, Config{MaxConnsPerSource: 2})
	info := s.Info()
	open := func(addr string) bool {
		c, err := tls.Dial("tcp", addr, tlsConfig(t, info))
		if err != nil {
			return false // closed before or during the handshake
		}
		t.Cleanup(func() { c.Close() })
		// A refused connection may finish no handshake at all; one that
		// did is open when a read waits.
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	if !open(info.HTTPSAddr) || !open(info.MQTTAddr) {
		t.Fatal("connections under the cap refused")
	}
	if open(info.AMQPAddr) {
		t.Fatal("third connection from one source kept with a cap of 2")
	}
}

// TestRegisterStormThrottled checks the per-device limit in front of the
// engine over the wire: a device that registers in a tight loop gets 429
// with Retry-After in Azure's error shape once its burst is spent, even
// with a wrong key (the limit comes before the proof is checked).
func TestRegisterStormThrottled(t *testing.T) {
	s := startLimitedServer(t, Config{})
	info := s.Info()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(t, info)}}
	url := "https://" + info.HTTPSAddr + "/" + info.IDScope + "/registrations/storm/register?api-version=2019-03-31"
	for n := 0; n < 100; n++ {
		req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(`{"registrationId":"storm"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "SharedAccessSignature sr=x&sig=wrong&se=9999999999&skn=registration")
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusTooManyRequests {
			continue
		}
		if n < throttle.DefaultRegister.Burst {
			t.Fatalf("throttled after %d registers, before the burst of %d", n, throttle.DefaultRegister.Burst)
		}
		var e dps.Error
		if ra := res.Header.Get("Retry-After"); ra == "" || json.Unmarshal(body, &e) != nil || e.ErrorCode != dps.CodeThrottled {
			t.Fatalf("429 with Retry-After %q and body %s", ra, body)
		}
		return
	}
	t.Fatal("100 registers of one device in a row, none throttled")
}

// TestDataFilesOwnerOnly checks that the database and its WAL are the
// owner's only even in a data directory created 0755 beforehand, and that
// the too-open directory is reported.
func TestDataFilesOwnerOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, Config{
		DataDir: dir, HostName: "dps.test", HTTPSAddr: "127.0.9.2:0", MQTTAddr: "127.0.9.2:0", AMQPAddr: "127.0.9.2:0",
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()

	if !strings.Contains(logs.String(), "data directory is open to other users") {
		t.Errorf("no warning about the 0755 data directory in:\n%s", logs.String())
	}
	for _, name := range []string{"dpsd.db", "dpsd.db-wal", "dpsd.db-shm", InfoFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %#o, want 0600", name, st.Mode().Perm())
		}
	}
}

// syncBuffer is a log destination tests may read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestBannerKeyFirstStartOnly checks that the owner key reaches stdout
// (a journal, under systemd) on the start that created it only.
func TestBannerKeyFirstStartOnly(t *testing.T) {
	dir := t.TempDir()
	banner := func() string {
		var out syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		s, err := Start(ctx, Config{
			DataDir: dir, HostName: "dps.test", HTTPSAddr: "127.0.9.2:0", MQTTAddr: "127.0.9.2:0", AMQPAddr: "127.0.9.2:0",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Banner: &out,
		})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		for end := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "Clients must trust") && time.Now().Before(end); {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
		return out.String()
	}
	if first := banner(); !strings.Contains(first, "SharedAccessKey=") {
		t.Fatalf("first start's banner has no connection string:\n%s", first)
	}
	second := banner()
	if strings.Contains(second, "SharedAccessKey") || !strings.Contains(second, "dpsd info") {
		t.Fatalf("second start's banner shows the key, or not where it is:\n%s", second)
	}
}

// TestDeepJSONRefused checks the one nesting limit on the device API: a
// register payload nested 5,000 deep is a 400, as it is on the service
// API, before any other work.
func TestDeepJSONRefused(t *testing.T) {
	s := startLimitedServer(t, Config{})
	info := s.Info()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(t, info)}}
	deep := `{"registrationId":"deep","payload":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`
	req, _ := http.NewRequest(http.MethodPut, "https://"+info.HTTPSAddr+"/"+info.IDScope+"/registrations/deep/register?api-version=2019-03-31", strings.NewReader(deep))
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var e dps.Error
	if res.StatusCode != http.StatusBadRequest || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Message, "deeper than 32") {
		t.Fatalf("%d %s; want 400 naming the nesting limit", res.StatusCode, body)
	}
}
