package device

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// recTPM is a TPM that records the blob it is asked to activate.
type recTPM struct {
	blob []byte
	fail bool
}

func (r *recTPM) EndorsementKey() []byte { return []byte("EK") }
func (r *recTPM) StorageRootKey() []byte { return []byte("SRK") }
func (r *recTPM) ActivateIdentityKey(b []byte) error {
	if r.fail {
		return errors.New("bad blob")
	}
	r.blob = append([]byte(nil), b...)
	return nil
}
func (r *recTPM) Sign([]byte) ([]byte, error) { return []byte{1, 2, 3}, nil }

// TestTPMSASLClient runs the client mechanism through the exchanges the
// service may send and the ones it must refuse.
func TestTPMSASLClient(t *testing.T) {
	type step struct {
		challenge string
		want      string // the response, or the error's text after "error: "
	}
	tests := []struct {
		name  string
		steps []step
		fail  bool
	}{
		{"two segments", []step{{"\x00", "\x00SRK"}, {"\x80ab", "\x00"}, {"\xC1cd", "\x00SharedAccessSignature sr=0ne00ABC%2Fregistrations%2Fdev-1&sig=AQID&se="}}, false},
		{"one segment", []step{{"\x00", "\x00SRK"}, {"\xC0abcd", "\x00SharedAccessSignature sr="}}, false},
		{"five segments wrap the sequence", []step{{"\x00", "\x00SRK"}, {"\x80a", "\x00"}, {"\x81b", "\x00"}, {"\x82c", "\x00"}, {"\x83d", "\x00"}, {"\xC4", "\x00SharedAccessSignature"}}, false},
		{"out of order", []step{{"\x00", "\x00SRK"}, {"\x81ab", "error: arrived numbered 1"}}, false},
		{"SRK asked twice", []step{{"\x00", "\x00SRK"}, {"\x00", "error: twice"}}, false},
		{"SRK asked again mid-blob", []step{{"\x00", "\x00SRK"}, {"\x80ab", "\x00"}, {"\x00", "error: twice"}}, false},
		{"empty challenge", []step{{"", "error: empty"}}, false},
		{"the TPM refuses", []step{{"\x00", "\x00SRK"}, {"\xC0ab", "error: refused the challenge"}}, true},
		{"oversized blob", []step{{"\x00", "\x00SRK"}, {"\x80" + strings.Repeat("x", maxTPMBlob), "\x00"}, {"\xC1y", "error: over"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tpm := &recTPM{fail: tc.fail}
			s, err := (&Config{IDScope: "0ne00ABC", RegistrationID: "dev-1", TPM: tpm, Transport: TransportAMQP}).settings()
			if err != nil {
				t.Fatal(err)
			}
			m := &tpmSASL{s: s}
			if init, _ := m.Initial(); !bytes.Equal(init, []byte("\x000ne00ABC\x00dev-1\x00EK")) {
				t.Fatalf("initial response %q", init)
			}
			for i, st := range tc.steps {
				resp, err := m.Challenge([]byte(st.challenge))
				if want, ok := strings.CutPrefix(st.want, "error: "); ok {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("step %d: %q, %v; want an error with %q", i, resp, err, want)
					}
					return
				}
				if err != nil || !bytes.HasPrefix(resp, []byte(st.want)) {
					t.Fatalf("step %d: %q, %v; want %q", i, resp, err, st.want)
				}
			}
			if !s.tpmActivated || len(tpm.blob) == 0 {
				t.Fatal("the exchange ended without an activation")
			}
		})
	}
}
