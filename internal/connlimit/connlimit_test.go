package connlimit

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

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

// serve accepts on a limited listener at addr and holds every connection
// open until the client closes it.
func serve(t *testing.T, lim *Limiter, addr string) string {
	t.Helper()
	inner, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln := lim.Listener(inner, "test")
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return inner.Addr().String()
}

// dial connects from the local address from and reports whether the
// server kept the connection open (a refused one is closed at once).
func dial(t *testing.T, from, to string) (net.Conn, bool) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return c, ok && ne.Timeout()
}

func TestCaps(t *testing.T) {
	var logs syncBuffer
	lim := New(3, 2, slog.New(slog.NewTextHandler(&logs, nil)))
	addr := serve(t, lim, "127.0.9.4:0")

	a1, ok1 := dial(t, "127.0.9.5", addr)
	_, ok2 := dial(t, "127.0.9.5", addr)
	_, ok3 := dial(t, "127.0.9.5", addr)
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("one source: kept %v %v %v, want the third refused", ok1, ok2, ok3)
	}
	if _, ok := dial(t, "127.0.9.6", addr); !ok {
		t.Fatal("another source refused under the total cap")
	}
	if _, ok := dial(t, "127.0.9.7", addr); ok {
		t.Fatal("fourth connection kept over the total cap of 3")
	}
	// Closing one frees its place, for its source and in total.
	a1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if total, _ := lim.Open("127.0.9.5"); total == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("closed connection still counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := dial(t, "127.0.9.5", addr); !ok {
		t.Fatal("refused after a connection of its source closed")
	}
	if n := strings.Count(logs.String(), "connection cap reached"); n != 1 {
		t.Fatalf("%d log lines about caps, want 1 (spaced by a minute):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "cap=\"per source address\"") {
		t.Fatalf("log does not say which cap:\n%s", logs.String())
	}
}

func TestDefaults(t *testing.T) {
	lim := New(0, 0, nil)
	if lim.MaxTotal() <= 0 || lim.MaxTotal() > DefaultMaxTotal || lim.MaxPerSource() != DefaultMaxPerSource {
		t.Fatalf("defaults %d, %d", lim.MaxTotal(), lim.MaxPerSource())
	}
	if lim := New(-1, -1, nil); lim.MaxTotal() != -1 || lim.MaxPerSource() != -1 {
		t.Fatal("negative caps are not 'none'")
	}
}

// flakyListener fails its first Accepts with a transient error.
type flakyListener struct {
	net.Listener
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, errors.New("accept: too many open files")
	}
	return l.Listener.Accept()
}

func TestAcceptRetriesUntilClosed(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.9.200:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &flakyListener{Listener: inner, fails: 3}
	go func() {
		if c, err := net.Dial("tcp", inner.Addr().String()); err == nil {
			c.Close()
		}
	}()
	c, err := Accept(l, slog.New(slog.DiscardHandler), "test")
	if err != nil || c == nil || l.fails != 0 {
		t.Fatalf("Accept after transient failures: %v %v (failures left %d)", c, err, l.fails)
	}
	c.Close()
	inner.Close()
	if _, err := Accept(l, slog.New(slog.DiscardHandler), "test"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v, want net.ErrClosed", err)
	}
}
