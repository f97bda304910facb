// Package mqtt serves the DPS device API over MQTT 3.1.1: on a TLS
// listener (port 8883 in Azure) and over WebSockets (on the HTTPS port, any
// path, subprotocol "mqtt").
//
// The MQTT protocol itself is handled by an embedded mochi-mqtt broker; this
// package bends it into the shape of DPS, which is not a broker at all: each
// connection is one device talking to the service, requests are never
// forwarded to other clients, and each response is written only to the
// connection that asked. The wire quirks the Azure SDKs depend on are listed
// in the spec (device-protocol.md sections 5 and 13) and are handled here:
// PUBACK before the response, $rid first in the response topic, SUBACK
// granting QoS 1, SessionPresent always 0, QoS 0 and 1 requests, empty or
// " " payloads, keep-alive 0.
//
// All decisions (authentication included) are the engine's: the transport
// accepts any well-formed CONNECT, as Azure does, and passes the password to
// the engine with every request, so a bad SAS token is answered with a 401
// on the response topic.
//
// In this package's files, mqtt names mochi-mqtt's package, which this one
// wraps; other packages know this one as mqtt.
package mqtt
