// Package mqtt311 makes the MQTT broker dpsd embeds (which speaks MQTT 5
// and maps only a few of its reason codes down) answer MQTT 3.1.1 clients
// in MQTT 3.1.1: a CONNACK return code from 1 to 5, and no DISCONNECT
// packet, which 3.1.1 servers never send. Every device SDK dpsd serves
// speaks 3.1.1; one that meets an MQTT 5 code reports an unknown error.
package mqtt311

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// MQTT 3.1.1 CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
const (
	Accepted                    byte = 0
	UnacceptableProtocolVersion byte = 1
	IdentifierRejected          byte = 2
	ServerUnavailable           byte = 3
	BadUserNameOrPassword       byte = 4
	NotAuthorized               byte = 5
)

// ReturnCode is the MQTT 3.1.1 CONNACK return code for an MQTT 5 reason
// code: the same refusal where 3.1.1 has one, "server unavailable" for
// what a retry may cure, and "not authorized" for a refusal 3.1.1 cannot
// name (a retained will, say), which SDKs do not retry.
func ReturnCode(reason byte) byte {
	if reason <= NotAuthorized {
		return reason // already a 3.1.1 code (0 is success in both)
	}
	switch reason {
	case packets.ErrUnsupportedProtocolVersion.Code:
		return UnacceptableProtocolVersion
	case packets.ErrClientIdentifierNotValid.Code:
		return IdentifierRejected
	case packets.ErrBadUsernameOrPassword.Code:
		return BadUserNameOrPassword
	case packets.ErrUnspecifiedError.Code, packets.ErrImplementationSpecificError.Code,
		packets.ErrServerUnavailable.Code, packets.ErrServerBusy.Code, packets.ErrQuotaExceeded.Code,
		packets.ErrConnectionRateExceeded.Code:
		return ServerUnavailable
	}
	return NotAuthorized
}

// Encode is a broker hook's OnPacketEncode: it rewrites what the broker
// is about to send a 3.1.1 client (or older) into 3.1.1. A DISCONNECT is
// turned into a packet that cannot be encoded, so the broker writes
// nothing and goes on to close the connection, which is how a 3.1.1
// server ends one.
func Encode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Properties.ProtocolVersion >= 5 {
		return pk
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		pk.ReasonCode = ReturnCode(pk.ReasonCode)
		pk.Properties = packets.Properties{} // 3.1.1 has none
	case packets.Disconnect:
		pk.FixedHeader.Type = packets.Reserved
	}
	return pk
}
