package mqtt

import (
	"crypto/x509"
	"net/http"

	"github.com/dpsd/dpsd/internal/transport/wsconn"
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
func IsWebSocketUpgrade(r *http.Request) bool { return wsconn.IsUpgrade(r) }

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if !s.startConn() {
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.conns.Done()
	c, err := wsconn.Upgrade(w, r)
	if err != nil {
		// Upgrade has already answered the client.
		s.log.Debug("mqtt websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	var peers []*x509.Certificate
	if r.TLS != nil {
		peers = r.TLS.PeerCertificates
	}
	if claim := s.claimWS; claim != nil {
		rest, claimed := claim(c, peers)
		if claimed {
			return
		}
		c = rest
	}
	s.serveConn(c, TransportMQTTWebSocket, peers, false)
}
