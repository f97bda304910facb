package amqp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/provision"
)

// challengeEngine answers a TPM device's register without a proof with a
// challenge when its EK is "ek", and refuses any other.
type challengeEngine struct {
	blob []byte
	got  provision.Request
}

func (c *challengeEngine) Register(_ context.Context, req provision.Request) (provision.Result, error) {
	c.got = req
	if req.TPM == nil || req.TPM.EndorsementKey != base64.StdEncoding.EncodeToString([]byte("ek")) {
		return provision.Result{}, dps.Errorf(dps.CodeUnauthorized, "Unauthorized.")
	}
	return provision.Result{}, &provision.TPMChallenge{AuthenticationKey: base64.StdEncoding.EncodeToString(c.blob)}
}

func (c *challengeEngine) OperationStatus(context.Context, provision.Request, string) (provision.Result, error) {
	return provision.Result{}, errors.New("not used")
}

// TestTPMSASL runs the mechanism as the Node SDK's SaslTpm does: the blob
// arrives in segments whose control bytes mark the last one, and the SAS
// token after it is kept for the connection.
func TestTPMSASL(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789"), 90) // 900 bytes: three segments
	eng := &challengeEngine{blob: blob}
	s, err := New(eng, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m := &tpmSASL{s: s}
	ch, done, err := m.Step([]byte("\x000ne00ABC\x00tpm-dev\x00ek"))
	if done || err != nil || !bytes.Equal(ch, []byte{0}) {
		t.Fatalf("after init: %x %v %v", ch, done, err)
	}
	ch, done, err = m.Step([]byte("\x00srk"))
	var got []byte
	var ctrls []byte
	for !done && err == nil && len(ch) > 0 && ch[0]&tpmCtrlSegment != 0 {
		ctrls = append(ctrls, ch[0])
		got = append(got, ch[1:]...)
		if ch[0]&tpmCtrlLast != 0 {
			break
		}
		ch, done, err = m.Step([]byte{0})
	}
	if err != nil || done || !bytes.Equal(got, blob) || !bytes.Equal(ctrls, []byte{0x80, 0x81, 0xC2}) {
		t.Fatalf("segments %x (ctrl %x), done %v, err %v", got, ctrls, done, err)
	}
	if eng.got.IDScope != "0ne00ABC" || eng.got.RegistrationID != "tpm-dev" || eng.got.SASToken != "" ||
		eng.got.TPM.StorageRootKey != base64.StdEncoding.EncodeToString([]byte("srk")) {
		t.Fatalf("engine asked with %+v", eng.got)
	}
	if _, done, err = m.Step([]byte("\x00SharedAccessSignature sr=x")); !done || err != nil || m.sasToken != "SharedAccessSignature sr=x" {
		t.Fatalf("final step: %v %v %q", done, err, m.sasToken)
	}

	for _, tc := range []struct {
		name  string
		steps [][]byte
	}{
		{"unknown EK", [][]byte{[]byte("\x000ne00ABC\x00tpm-dev\x00other"), []byte("\x00srk")}},
		{"init without EK", [][]byte{[]byte("\x000ne00ABC\x00tpm-dev")}},
		{"no control byte", [][]byte{[]byte("0ne00ABC\x00tpm-dev\x00ek")}},
		{"empty SRK", [][]byte{[]byte("\x000ne00ABC\x00tpm-dev\x00ek"), []byte("\x00")}},
	} {
		m := &tpmSASL{s: s}
		var err error
		var done bool
		for _, st := range tc.steps {
			if _, done, err = m.Step(st); done {
				break
			}
		}
		if !done || !errors.Is(err, wire.ErrSASLAuth) {
			t.Errorf("%s: done %v, err %v; want the SASL auth outcome", tc.name, done, err)
		}
	}
}
