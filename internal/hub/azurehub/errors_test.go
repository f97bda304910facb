package azurehub

import (
	"net/http"
	"testing"
)

func TestParseErrorShapes(t *testing.T) {
	for _, tt := range []struct {
		name                    string
		body                    string
		code, message, tracking string
	}{
		{
			name:     "gateway",
			body:     `{"Message":"ErrorCode:DeviceNotFound;Device d1 not registered","ExceptionMessage":"Tracking ID:abc-G:0-TimeStamp:01/02/2026 10:00:00"}`,
			code:     "DeviceNotFound",
			message:  "Device d1 not registered",
			tracking: "abc-G:0-TimeStamp:01/02/2026 10:00:00",
		},
		{
			name:     "protocol",
			body:     `{"errorCode":404001,"trackingId":"t-1","message":"Device d1 not registered"}`,
			code:     "404001",
			message:  "Device d1 not registered",
			tracking: "t-1",
		},
		{
			name:    "protocol without code",
			body:    `{"message":"gone"}`,
			message: "gone",
		},
		{
			name:    "plain text",
			body:    "nope",
			message: "nope",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := parseError(http.StatusNotFound, http.Header{}, []byte(tt.body))
			if e.StatusCode != http.StatusNotFound || e.Code != tt.code || e.Message != tt.message || e.TrackingID != tt.tracking {
				t.Errorf("parseError = %+v, want code %q message %q tracking id %q", e, tt.code, tt.message, tt.tracking)
			}
		})
	}
}

func TestStripMeta(t *testing.T) {
	got := StripMeta(map[string]any{"$version": 3, "$metadata": map[string]any{}, "color": "red"})
	if len(got) != 1 || got["color"] != "red" {
		t.Errorf("StripMeta = %v, want only color", got)
	}
	if got := StripMeta(nil); got == nil || len(got) != 0 {
		t.Errorf("StripMeta(nil) = %#v, want an empty map", got)
	}
}
