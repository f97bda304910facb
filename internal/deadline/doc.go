// Package deadline bounds the phases of a connection that the protocol
// libraries dpsd uses leave open: a request body that trickles in (net/http
// bounds only the headers when ReadTimeout is unset, and ReadTimeout would
// also cut the WebSocket connections it hands over), and an MQTT session
// whose keep-alive of 0 asks for no deadline at all.
package deadline
