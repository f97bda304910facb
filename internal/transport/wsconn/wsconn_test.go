package wsconn

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// TestBytesAcrossMessages checks that reads run across message boundaries
// and that each write is one binary message, in both directions.
func TestBytesAcrossMessages(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Upgrade(w, r)
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, io.LimitReader(c, 10)) // echo ten bytes back, one write per read
	}))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/$iothub/websocket"

	for _, proto := range []string{"mqtt", "MQTT"} {
		ws, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Sec-WebSocket-Protocol": {proto}})
		if err != nil {
			t.Fatalf("dial with %q: %v", proto, err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != proto {
			t.Errorf("subprotocol echoed as %q, want %q", got, proto)
		}
		c := NewConn(ws)
		// Ten bytes in three messages.
		for _, m := range []string{"abc", "defg", "hij"} {
			if _, err := c.Write([]byte(m)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := io.ReadAll(io.LimitReader(c, 10))
		if err != nil || !bytes.Equal(got, []byte("abcdefghij")) {
			t.Errorf("read %q, %v", got, err)
		}
		c.Close()
	}

	// No mqtt subprotocol: refused before the upgrade.
	if _, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Sec-WebSocket-Protocol": {"amqp"}}); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("upgrade without mqtt subprotocol: %v, %v", resp, err)
	}
}

func TestTextFrameIsAnError(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Upgrade(w, r)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = c.Read(make([]byte, 8))
		done <- err
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), http.Header{"Sec-WebSocket-Protocol": {"mqtt"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteMessage(websocket.TextMessage, []byte("hello"))
	if err := <-done; err != ErrTextFrame {
		t.Errorf("read = %v, want ErrTextFrame", err)
	}
}
