package mqtt311

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestReturnCode(t *testing.T) {
	for _, tc := range []struct {
		in   packets.Code
		want byte
	}{
		{packets.CodeSuccess, Accepted},
		{packets.Err3NotAuthorized, NotAuthorized},
		{packets.ErrUnsupportedProtocolVersion, UnacceptableProtocolVersion},
		{packets.ErrClientIdentifierNotValid, IdentifierRejected},
		{packets.ErrServerBusy, ServerUnavailable},
		{packets.ErrUnspecifiedError, ServerUnavailable},
		{packets.ErrBadUsernameOrPassword, BadUserNameOrPassword},
		{packets.ErrNotAuthorized, NotAuthorized},
		{packets.ErrRetainNotSupported, NotAuthorized},
		{packets.ErrMalformedPacket, NotAuthorized},
	} {
		if got := ReturnCode(tc.in.Code); got != tc.want {
			t.Errorf("ReturnCode(%d %s) = %d, want %d", tc.in.Code, tc.in.Reason, got, tc.want)
		}
	}
}
