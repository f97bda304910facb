package wsconn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Subprotocol is the WebSocket subprotocol of MQTT.
const Subprotocol = "mqtt"

// ErrTextFrame is returned by Read when the peer sends a text message:
// MQTT over WebSockets is binary only.
var ErrTextFrame = errors.New("mqttws: text frame on an MQTT WebSocket")

// IsUpgrade reports whether r asks for a WebSocket upgrade, for routing on
// a listener shared with an HTTPS API.
func IsUpgrade(r *http.Request) bool { return websocket.IsWebSocketUpgrade(r) }

// Upgrade answers r with the WebSocket upgrade and returns the connection.
// It accepts any path (the C# SDK connects to "/", the others to
// "/$iothub/websocket") and requires the subprotocol "mqtt" in any case
// (the C SDK sends "MQTT"). On error the client has been answered.
func Upgrade(w http.ResponseWriter, r *http.Request) (net.Conn, error) {
	return UpgradeSubprotocol(w, r, Subprotocol)
}

// Offers reports whether r offers the WebSocket subprotocol want (in any
// case), so that one listener can route MQTT and AMQP upgrades.
func Offers(r *http.Request, want string) bool { return offered(r, want) != "" }

func offered(r *http.Request, want string) string {
	for _, p := range websocket.Subprotocols(r) {
		if strings.EqualFold(p, want) {
			return p
		}
	}
	return ""
}

// UpgradeSubprotocol is Upgrade for any binary protocol carried as a byte
// stream, such as AMQP ("AMQPWSB10").
func UpgradeSubprotocol(w http.ResponseWriter, r *http.Request, want string) (net.Conn, error) {
	proto := offered(r, want)
	if proto == "" {
		http.Error(w, "WebSocket subprotocol "+strconv.Quote(want)+" required", http.StatusBadRequest)
		return nil, fmt.Errorf("mqttws: the client offered no %q subprotocol", want)
	}
	up := websocket.Upgrader{
		// Devices send no Origin and no cookies authenticate them, so a
		// cross-site page gains nothing from connecting.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	// Echo the client's own spelling of the subprotocol; gorilla would
	// only match it case-sensitively.
	ws, err := up.Upgrade(w, r, http.Header{"Sec-WebSocket-Protocol": {proto}})
	if err != nil {
		return nil, err
	}
	return NewConn(ws), nil
}

// NewConn presents ws as a byte stream: every Write is one binary message,
// and Read runs across message boundaries, because MQTT packets may span
// frames and frames may hold several packets.
func NewConn(ws *websocket.Conn) net.Conn { return &conn{ws: ws} }

type conn struct {
	ws        *websocket.Conn
	r         io.Reader // the current message, nil between messages
	wmu       sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

func (c *conn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				if websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) {
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, ErrTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close frame (best effort) and closes the connection. It
// takes no write lock: gorilla allows WriteControl and Close beside a
// running write, and closing must unblock a write to a peer that stopped
// reading rather than wait for it.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.closeErr = c.ws.Close()
	})
	return c.closeErr
}

func (c *conn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *conn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline holds the write lock: gorilla keeps the deadline in an
// unguarded field that WriteMessage reads, and brokers move the deadline
// from their read loop while other goroutines write.
func (c *conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}
