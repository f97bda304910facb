package deadline

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const bodyTimeout = 300 * time.Millisecond

func newServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.9.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(h)
	ts.Listener.Close()
	ts.Listener = l
	ts.Start()
	t.Cleanup(ts.Close)
	return l.Addr().String()
}

func TestBody(t *testing.T) {
	addr := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		Body(w, r, bodyTimeout)
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "slow body", http.StatusRequestTimeout)
			return
		}
		// A handler that works longer than the body deadline after
		// reading the body (a register waiting for a webhook) keeps its
		// request alive.
		time.Sleep(3 * bodyTimeout)
		if err := r.Context().Err(); err != nil {
			http.Error(w, "context ended: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "got %d bytes", len(b))
	})

	t.Run("slow body cut", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if res.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("status %d, want 408", res.StatusCode)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("answered after %v", d)
		}
	})
	for _, tt := range []struct {
		name, method, body, want string
	}{
		{"long handler after body", http.MethodPost, `{"a":1}`, "got 7 bytes"},
		{"long handler without body", http.MethodGet, "", "got 0 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://"+addr+"/", strings.NewReader(tt.body))
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK || string(b) != tt.want {
				t.Fatalf("%d %s", res.StatusCode, b)
			}
		})
	}
}

func TestConnIdle(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := Idle(a, bodyTimeout)
	defer c.Close()
	_ = c.SetDeadline(time.Time{}) // "none", as a keep-alive of 0 asks
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded")
	}
	if d := time.Since(start); d > 5*bodyTimeout {
		t.Fatalf("idle read ended after %v, want about %v", d, bodyTimeout)
	}

	c2 := Idle(b, time.Hour)
	c2.Cut(bodyTimeout)
	_ = c2.SetDeadline(time.Now().Add(time.Hour)) // later than the cut: ignored
	start = time.Now()
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded")
	}
	if d := time.Since(start); d > 5*bodyTimeout {
		t.Fatalf("cut read ended after %v, want about %v", d, bodyTimeout)
	}
}
