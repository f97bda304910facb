package mqttdps

import (
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// WebSocketHandler returns the handler for MQTT over WebSockets. Mount it
// on the HTTPS listener for requests carrying "Upgrade: websocket"; it
// accepts any path (C# connects to "/", the other SDKs to
// "/$iothub/websocket") and requires the subprotocol "mqtt" in any case (the
// C SDK sends "MQTT"). The handler returns when the MQTT session ends.
func (s *Server) WebSocketHandler() http.Handler {
	return http.HandlerFunc(s.serveWebSocket)
}

// IsWebSocketUpgrade reports whether r asks for a WebSocket upgrade, for
// routing on a listener shared with the HTTPS device API.
func IsWebSocketUpgrade(r *http.Request) bool {
	return websocket.IsWebSocketUpgrade(r)
}

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	proto := mqttSubprotocol(websocket.Subprotocols(r))
	if proto == "" {
		http.Error(w, `WebSocket subprotocol "mqtt" required`, http.StatusBadRequest)
		return
	}
	if !s.startConn() {
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.conns.Done()

	up := websocket.Upgrader{
		// Devices send no Origin and no cookies authenticate them, so a
		// cross-site page gains nothing from connecting.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	// Echo the client's own spelling of the subprotocol; gorilla would
	// only match it case-sensitively.
	h := http.Header{}
	h.Set("Sec-WebSocket-Protocol", proto)
	ws, err := up.Upgrade(w, r, h)
	if err != nil {
		// Upgrade has already answered the client.
		s.log.Debug("mqtt websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	var peers []*x509.Certificate
	if r.TLS != nil {
		peers = r.TLS.PeerCertificates
	}
	s.serveConn(newWSConn(ws), TransportMQTTWebSocket, peers, false)
}

// mqttSubprotocol returns the first offered protocol that is "mqtt" in any
// case, or "".
func mqttSubprotocol(offered []string) string {
	for _, p := range offered {
		if strings.EqualFold(p, "mqtt") {
			return p
		}
	}
	return ""
}

var errTextFrame = errors.New("mqttdps: text frame on MQTT WebSocket")

// wsConn presents a WebSocket as the byte stream the broker reads. MQTT
// packets may span frames and frames may hold several packets, so reads
// simply run across message boundaries.
type wsConn struct {
	ws        *websocket.Conn
	r         io.Reader // the current message, nil between messages
	wmu       sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

func newWSConn(ws *websocket.Conn) *wsConn { return &wsConn{ws: ws} }

// Read reads from the current binary message, moving to the next at its end.
func (c *wsConn) Read(p []byte) (int, error) {
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
				// MQTT over WebSockets is binary only (MQTT 3.1.1 §6).
				return 0, errTextFrame
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

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close frame (best effort) and closes the connection.
func (c *wsConn) Close() error {
	c.closeOnce.Do(func() {
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.closeErr = c.ws.Close()
	})
	return c.closeErr
}

func (c *wsConn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline holds the write lock: gorilla keeps the deadline in an
// unguarded field that WriteMessage reads, and the broker's read loop moves
// the deadline while request goroutines write.
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}
