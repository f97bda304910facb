package sas

import (
	"errors"
	"testing"
	"time"
)

// The tutorial's group key and device keys are Azure's own ("Use custom
// allocation policies", Azure IoT Hub DPS docs); the token signatures were
// computed apart from this package, with another language's HMAC-SHA256.
const (
	tutorialGroupKey = "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA=="
	testKey          = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" // bytes 0..31
)

var testExpiry = time.Unix(1700000000, 0)

func TestDeriveDeviceKeyKnownAnswers(t *testing.T) {
	for _, tc := range []struct{ registrationID, want string }{
		{"breakroom499-contoso-tstrsd-007", "JC8F96eayuQwwz+PkE7IzjH2lIAjCUnAa61tDigBnSs="},
		{"mainbuilding167-contoso-hpsd-088", "6uejA9PfkQgmYylj8Zerp3kcbeVrGZ172YLa7VSnJzg="},
	} {
		got, err := DeriveDeviceKey(tutorialGroupKey, tc.registrationID)
		if err != nil || got != tc.want {
			t.Errorf("DeriveDeviceKey(%q) = %q, %v; want %q", tc.registrationID, got, err, tc.want)
		}
	}
	if _, err := DeriveDeviceKey("not base64!", "d"); err == nil {
		t.Error("a group key that is not base64 was accepted")
	}
}

func TestNewKnownAnswers(t *testing.T) {
	for _, tc := range []struct{ resource, keyName, want string }{
		{"0ne00000001%2Fregistrations%2Fdevice-1", "registration",
			"SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdevice-1&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=1700000000&skn=registration"},
		{"myhub.azure-devices.net", "iothubowner",
			"SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner"},
		{"myhub.azure-devices.net", "",
			"SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%2FAx4zTmy44X2G1VY%3D&se=1700000000"},
	} {
		got, err := New(tc.resource, tc.keyName, testKey, testExpiry)
		if err != nil || got != tc.want {
			t.Errorf("New(%q, %q) =\n  %q, %v\nwant\n  %q", tc.resource, tc.keyName, got, err, tc.want)
		}
	}
}

func TestParseVerify(t *testing.T) {
	key := []byte{}
	for i := range 32 {
		key = append(key, byte(i))
	}
	other := []byte("another key of thirty-two bytes!")
	const good = "SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdevice-1&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=1700000000&skn=registration"
	tests := []struct {
		name     string
		token    string
		err      error
		verifies bool
	}{
		{"as built", good, nil, true},
		{"fields in another order", "SharedAccessSignature skn=registration&se=1700000000&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&sr=0ne00000001%2Fregistrations%2Fdevice-1", nil, true},
		{"unknown field ignored", good + "&foo=bar", nil, true},
		// sr is signed as sent: the same resource encoded otherwise is
		// another string, so the signature does not match it.
		{"sr decoded", "SharedAccessSignature sr=0ne00000001/registrations/device-1&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=1700000000", nil, false},
		{"se changed", "SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdevice-1&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=1700000001", nil, false},
		{"no prefix", "sr=a&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=1", ErrMalformed, false},
		{"no se", "SharedAccessSignature sr=a&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D", ErrMalformed, false},
		{"short sig", "SharedAccessSignature sr=a&sig=AAAA&se=1", ErrMalformed, false},
		{"negative se", "SharedAccessSignature sr=a&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=-1", ErrMalformed, false},
		{"repeated sr", "SharedAccessSignature sr=a&sr=b&sig=XCnmlS49BgxtMG6mkfCAbkdFZ2ILpoK9LIbUrGifWBQ%3D&se=1", ErrMalformed, false},
	}
	for _, tc := range tests {
		tok, err := Parse(tc.token)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: Parse error %v, want %v", tc.name, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		if got := tok.Verify(key); got != tc.verifies {
			t.Errorf("%s: Verify = %v, want %v", tc.name, got, tc.verifies)
		}
		if tok.Verify(other) {
			t.Errorf("%s: verified with the wrong key", tc.name)
		}
		if i := tok.VerifyAny(other, nil, key); (i == 2) != tc.verifies {
			t.Errorf("%s: VerifyAny = %d", tc.name, i)
		}
	}
	tok, _ := Parse(good)
	if tok.KeyName != "registration" || tok.Expiry != 1700000000 {
		t.Errorf("parsed %+v", tok)
	}
	if r, _ := tok.DecodedResource(); r != "0ne00000001/registrations/device-1" {
		t.Errorf("DecodedResource = %q", r)
	}
	if tok.ExpiredAt(testExpiry.Add(-time.Second)) || !tok.ExpiredAt(testExpiry) {
		t.Error("ExpiredAt: a token is valid up to, not including, its se")
	}
}

func TestConnectionString(t *testing.T) {
	const service = "HostName=dps.example;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + testKey
	cs, err := ParseConnectionString(" hostname=dps.example;sharedaccesskeyname=provisioningserviceowner;SharedAccessKey=" + testKey + "; ")
	if err != nil {
		t.Fatal(err)
	}
	if cs.String() != service {
		t.Errorf("String() = %q, want %q", cs.String(), service)
	}
	if want := "HostName=dps.example;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=****"; cs.Redacted() != want {
		t.Errorf("Redacted() = %q", cs.Redacted())
	}
	const device = "HostName=hub.example;DeviceId=d1;SharedAccessKey=" + testKey + ";GatewayHostName=127.0.0.10"
	cs, err = ParseConnectionString(device)
	if err != nil || cs.DeviceID != "d1" || cs.GatewayHostName != "127.0.0.10" || cs.String() != device {
		t.Errorf("device connection string: %+v, %v", cs, err)
	}
	for _, bad := range []string{"", "SharedAccessKey=" + testKey, "HostName=h", "HostName=h;SharedAccessKey=not base64!", "HostName=h;junk"} {
		if _, err := ParseConnectionString(bad); err == nil {
			t.Errorf("ParseConnectionString(%q) accepted", bad)
		}
	}
}

func TestGenerateKey(t *testing.T) {
	a, b := GenerateKey(64), GenerateKey(64)
	if a == b || len(a) != 88 {
		t.Errorf("GenerateKey(64) = %q, %q", a, b)
	}
}
