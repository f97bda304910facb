package tlsmux

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/localca"
)

func TestSplitBySNI(t *testing.T) {
	ca, err := localca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate("test", []string{"node.example", "hub.example", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srvTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	inner, err := net.Listen("tcp", "127.0.10.1:0")
	if err != nil {
		t.Fatal(err)
	}
	diverted := make(chan string, 4)
	// echo answers one line over TLS with who served it.
	echo := func(c net.Conn, who string) {
		defer c.Close()
		tc := tls.Server(c, srvTLS)
		if err := tc.Handshake(); err != nil {
			t.Errorf("%s: handshake after replay: %v", who, err)
			return
		}
		_, _ = io.WriteString(tc, who)
	}
	l := Split(inner, func(name string) func(net.Conn, *Listener) {
		switch name {
		case "hub.example":
			return func(c net.Conn, _ *Listener) { diverted <- name; echo(c, "hub") }
		case "back.example": // looked at, then given back
			return func(c net.Conn, l *Listener) { l.Deliver(c) }
		}
		return nil
	}, nil, 5*time.Second, slog.Default())
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go echo(c, "node")
		}
	}()
	for _, tc := range []struct{ serverName, want string }{
		{"hub.example", "hub"},
		{"node.example", "node"},
		{"back.example", "node"},
		{"", "node"}, // no SNI (a client dialing an IP address)
	} {
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: tc.serverName, InsecureSkipVerify: tc.serverName == "back.example"}
		if tc.serverName == "" {
			cfg.ServerName = "127.0.0.1" // verified against the IP SAN; Go sends no SNI for IPs
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), cfg)
		if err != nil {
			t.Fatalf("%q: dial: %v", tc.serverName, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != tc.want {
			t.Errorf("server name %q served by %q, want %q", tc.serverName, got, tc.want)
		}
	}
	if len(diverted) != 1 {
		t.Errorf("diverted %d connections, want 1", len(diverted))
	}
}

func TestServerNameOfNonTLS(t *testing.T) {
	a, b := net.Pipe()
	go func() { _, _ = io.WriteString(a, "GET / HTTP/1.1\r\n\r\n"); a.Close() }()
	name, rc := ServerName(b, 2*time.Second)
	if name != "" {
		t.Errorf("server name %q of a plain-text connection", name)
	}
	got, _ := io.ReadAll(rc)
	if string(got) != "GET / HTTP/1.1\r\n\r\n" {
		t.Errorf("replayed %q", got)
	}
}

func TestCloseEndsAccept(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.10.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Split(inner, func(string) func(net.Conn, *Listener) { return nil }, nil, time.Second, slog.Default())
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	l.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Accept after Close returned a connection")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// TestInactiveReadsNothing: while no server wants diverted connections,
// a connection reaches Accept at once, even one that sends nothing.
func TestInactiveReadsNothing(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.10.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Split(inner, func(string) func(net.Conn, *Listener) {
		t.Error("divert asked while inactive")
		return nil
	}, func() bool { return false }, time.Hour, slog.Default())
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan net.Conn, 1)
	go func() {
		if ac, err := l.Accept(); err == nil {
			got <- ac
		}
	}()
	select {
	case ac := <-got:
		ac.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("a silent connection was held while inactive")
	}
}

// TestSilentConnectionClosed checks that a connection that sends nothing
// within the timeout is closed while the listener routes, not handed on to
// a TLS server that would wait as long again.
func TestSilentConnectionClosed(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 200 * time.Millisecond
	l := Split(inner, func(string) func(net.Conn, *Listener) { return nil }, func() bool { return true }, timeout, slog.Default())
	defer l.Close()
	go func() {
		if ac, err := l.Accept(); err == nil {
			t.Error("a silent connection was handed on")
			ac.Close()
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data from a silent connection's listener")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("still open after 10 s (timeout %v)", timeout)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("closed after %v, want about %v", d, timeout)
	}
}
