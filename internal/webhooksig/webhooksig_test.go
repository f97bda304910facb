package webhooksig

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store/sqlite"
)

func TestSignVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s1, s2 := NewSecret(), NewSecret()
	body := []byte(`{"deviceRuntimeContext":{"registrationId":"dev-1"}}`)
	sig, err := Signature([]string{s1}, "msg_1", now, body)
	if err != nil || !strings.HasPrefix(sig, "v1,") || strings.Contains(sig, " ") {
		t.Fatalf("Signature = %q, %v", sig, err)
	}
	both, _ := Signature([]string{s2, s1}, "msg_1", now, body)
	ts := "1700000000"
	tests := []struct {
		name, secret, id, ts, sig string
		body                      []byte
		ok                        bool
	}{
		{"valid", s1, "msg_1", ts, sig, body, true},
		{"either of two", s1, "msg_1", ts, both, body, true},
		{"the other of two", s2, "msg_1", ts, both, body, true},
		{"other secret", s2, "msg_1", ts, sig, body, false},
		{"body changed", s1, "msg_1", ts, sig, []byte(`{}`), false},
		{"id changed", s1, "msg_2", ts, sig, body, false},
		{"timestamp changed", s1, "msg_1", "1700000001", sig, body, false},
		{"too old", s1, "msg_1", "1699999000", sig, body, false},
		{"no signature", s1, "msg_1", ts, "", body, false},
		{"other version", s1, "msg_1", ts, strings.Replace(sig, "v1,", "v2,", 1), body, false},
	}
	for _, tt := range tests {
		err := Verify(tt.secret, tt.id, tt.ts, tt.sig, tt.body, now, 5*time.Minute)
		if (err == nil) != tt.ok {
			t.Errorf("%s: Verify = %v; want ok %v", tt.name, err, tt.ok)
		}
	}
	// The scheme's published vector-style check: the key is the base64
	// after whsec_, the content id.timestamp.body.
	if _, err := Signature([]string{"whsec_not base64!"}, "m", now, body); err == nil {
		t.Error("a malformed secret signed")
	}
}

// TestKeeperRotation: one secret from the first read on; a rotation signs
// with both for the overlap, then with the new one only; the secrets are
// returned only when asked for.
func TestKeeperRotation(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Unix(1_700_000_000, 0)
	k := NewKeeper(st, func() time.Time { return now })
	first, err := k.Secrets(t.Context())
	if err != nil || len(first) != 1 || !strings.HasPrefix(first[0], SecretPrefix) {
		t.Fatalf("Secrets = %v, %v", first, err)
	}
	v, _ := k.Get(t.Context(), false)
	if v.Secret != "" || v.PreviousSecret != "" || v.Scheme != Scheme {
		t.Errorf("Get without secrets: %+v", v)
	}
	// Another node sees the same secret.
	if other, _ := NewKeeper(st, func() time.Time { return now }).Secrets(t.Context()); len(other) != 1 || other[0] != first[0] {
		t.Errorf("another keeper: %v; want %v", other, first)
	}
	r, err := k.Rotate(t.Context(), time.Hour)
	if err != nil || r.Secret == first[0] || r.PreviousSecret != first[0] || r.PreviousValidUntilUTC == nil {
		t.Fatalf("Rotate = %+v, %v", r, err)
	}
	if s, _ := k.Secrets(t.Context()); len(s) != 2 || s[0] != r.Secret || s[1] != first[0] {
		t.Errorf("during the overlap: %v", s)
	}
	now = now.Add(61 * time.Minute)
	if s, _ := k.Secrets(t.Context()); len(s) != 1 || s[0] != r.Secret {
		t.Errorf("after the overlap: %v", s)
	}
	if _, err := k.Rotate(t.Context(), MaxOverlap+time.Hour); err == nil {
		t.Error("an overlap over the maximum was accepted")
	}
}
