package amqp

import (
	"net/http"
	"testing"

	wire "github.com/dpsd/dpsd/internal/amqp"
)

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		in           string
		scope, regID string
		ok           bool
	}{
		{"0ne00ABC123/registrations/dev-1", "0ne00ABC123", "dev-1", true},
		{"amqps://dps.example/0ne00ABC123/registrations/dev-1", "0ne00ABC123", "dev-1", true},
		{"0ne00ABC123/Registrations/dev-1", "0ne00ABC123", "dev-1", true},
		{"0ne00ABC123/registrations/", "", "", false},
		{"0ne00ABC123/registrations/a/b", "", "", false},
		{"amqps://host-only", "", "", false},
		{"", "", "", false},
	} {
		scope, regID, ok := parseIdentity(tc.in)
		if scope != tc.scope || regID != tc.regID || ok != tc.ok {
			t.Errorf("parseIdentity(%q) = %q, %q, %v", tc.in, scope, regID, ok)
		}
	}
}

func TestCondition(t *testing.T) {
	for status, want := range map[int]wire.Symbol{
		http.StatusBadRequest:          "com.microsoft:argument-error",
		http.StatusUnauthorized:        wire.ErrUnauthorized,
		http.StatusNotFound:            wire.ErrNotFound,
		http.StatusTooManyRequests:     "com.microsoft:device-container-throttled",
		http.StatusInternalServerError: wire.ErrInternal,
		http.StatusServiceUnavailable:  wire.ErrInternal,
	} {
		if got := condition(status); got != want {
			t.Errorf("condition(%d) = %s, want %s", status, got, want)
		}
	}
}

func TestRegisterPayload(t *testing.T) {
	for in, want := range map[string]string{
		"":                                      "",
		" ":                                     "",
		`{"registrationId":"d"}`:                "",
		`{"registrationId":"d","payload":null}`: "",
		`{"payload":{"a":1}}`:                   `{"a":1}`,
	} {
		got, _, _, err := registerPayload([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("registerPayload(%q) = %s, %v", in, got, err)
		}
	}
	if _, _, _, err := registerPayload([]byte("{")); err == nil {
		t.Error("a broken body was accepted")
	}
}
