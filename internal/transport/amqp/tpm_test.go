package amqp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

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
	blob := bytes.Repeat([]byte("0123456789"), 110) // 1100 bytes: three segments
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
	if err != nil || done || !bytes.Equal(got, blob) || !bytes.Equal(ctrls, []byte{0x80, 0x81, 0xC2}) { // 1100 bytes: 367, 367, 366
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

// testEK is a TPM2B_PUBLIC of the TCG default EK template, as the early
// SDKs sent it alone.
func testEK(t testing.TB) []byte {
	t.Helper()
	return tpm2.Marshal(tpm2.New2B(tpm2.RSAEKTemplate))
}

// TestParseTPMInit reads the initial responses of every SDK's framing.
func TestParseTPMInit(t *testing.T) {
	ek := testEK(t)
	derived := ekRegistrationID(ek)
	if len(derived) != 52 || strings.ToLower(derived) != derived || strings.Contains(derived, "=") {
		t.Fatalf("derived registration id %q", derived)
	}
	for _, tc := range []struct {
		name, hostname string
		resp           []byte
		want           tpmInit
		err            string
	}{
		{name: "scoped (Node, current C, C#)", resp: append([]byte("\x000ne00ABC\x00dev-1\x00"), ek...),
			want: tpmInit{variant: tpmScoped, scope: "0ne00ABC", regID: "dev-1", ek: ek}},
		{name: "scoped, hostname ignored", hostname: "other/registrations/x", resp: []byte("\x000ne00ABC\x00dev-1\x00ek"),
			want: tpmInit{variant: tpmScoped, scope: "0ne00ABC", regID: "dev-1", ek: []byte("ek")}},
		{name: "EK alone, identity in the hostname (early C#)", hostname: "0ne00ABC/registrations/dev-2", resp: append([]byte{0}, ek...),
			want: tpmInit{variant: tpmEKOnly, scope: "0ne00ABC", regID: "dev-2", ek: ek}},
		{name: "EK alone, no hostname (early C)", resp: append([]byte{0}, ek...),
			want: tpmInit{variant: tpmEKOnly, scope: "0ne00SCOPE", regID: derived, ek: ek}},
		{name: "EK alone, bad hostname", hostname: "dpsd.example", resp: append([]byte{0}, ek...), err: "hostname"},
		{name: "chunked EK", resp: append([]byte{0x80}, ek[:100]...), err: "chunked"},
		{name: "empty", resp: nil, err: "empty"},
		{name: "control byte only", resp: []byte{0}, err: "idScope 0x00"},
		{name: "no EK", resp: []byte("\x000ne00ABC\x00dev-1\x00"), err: "idScope 0x00"},
		{name: "no registration id", resp: []byte("\x000ne00ABC\x00\x00ek"), err: "idScope 0x00"},
		{name: "bare TPMT_PUBLIC is not EK alone", resp: append([]byte{0}, ek[2:]...), err: "idScope 0x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTPMInit(tc.resp, tc.hostname, "0ne00SCOPE")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil || got.variant != tc.want.variant || got.scope != tc.want.scope || got.regID != tc.want.regID || !bytes.Equal(got.ek, tc.want.ek) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestTPMSASLEKOnly runs the early SDKs' framing: the EK alone, the blob
// as base64 text in sequence-numbered segments; and refuses a blob that
// needs more segments than they count.
func TestTPMSASLEKOnly(t *testing.T) {
	ek := testEK(t)
	blob := bytes.Repeat([]byte("0123456789"), 90) // 1200 base64 characters: three segments
	eng := &ekEngine{ek: ek, blob: blob}
	s, err := New(eng, Options{Logger: slog.New(slog.DiscardHandler), IDScope: "0ne00SCOPE"})
	if err != nil {
		t.Fatal(err)
	}
	m := &tpmSASL{s: s}
	ch, done, err := m.Step(append([]byte{0}, ek...))
	if done || err != nil || !bytes.Equal(ch, []byte{0}) {
		t.Fatalf("after init: %x %v %v", ch, done, err)
	}
	ch, done, err = m.Step([]byte("\x00srk"))
	var text, ctrls []byte
	for !done && err == nil && ch[0]&tpmCtrlSegment != 0 {
		ctrls = append(ctrls, ch[0])
		text = append(text, ch[1:]...)
		if ch[0]&tpmCtrlLast != 0 {
			break
		}
		ch, done, err = m.Step([]byte{0})
	}
	if err != nil || done || string(text) != base64.StdEncoding.EncodeToString(blob) || !bytes.Equal(ctrls, []byte{0x80, 0x81, 0xC2}) {
		t.Fatalf("segments %q (ctrl %x), done %v, err %v", text, ctrls, done, err)
	}
	if eng.got.IDScope != "0ne00SCOPE" || eng.got.RegistrationID != ekRegistrationID(ek) {
		t.Fatalf("engine asked with %+v", eng.got)
	}
	if _, done, err = m.Step([]byte("\x00SharedAccessSignature sr=x")); !done || err != nil || m.sasToken != "SharedAccessSignature sr=x" {
		t.Fatalf("final step: %v %v %q", done, err, m.sasToken)
	}

	// One byte of base64 more than four segments hold: more than the
	// early SDKs number.
	eng.blob = bytes.Repeat([]byte{7}, 4*tpmSegment*3/4+3)
	m = &tpmSASL{s: s}
	if _, _, err := m.Step(append([]byte{0}, ek...)); err != nil {
		t.Fatal(err)
	}
	if _, done, err := m.Step([]byte("\x00srk")); !done || !errors.Is(err, wire.ErrSASLAuth) {
		t.Fatalf("a five-segment blob: done %v, err %v", done, err)
	}
}

// ekEngine challenges any device that sends ek.
type ekEngine struct {
	ek, blob []byte
	got      provision.Request
}

func (e *ekEngine) Register(_ context.Context, req provision.Request) (provision.Result, error) {
	e.got = req
	if req.TPM == nil || req.TPM.EndorsementKey != base64.StdEncoding.EncodeToString(e.ek) {
		return provision.Result{}, dps.Errorf(dps.CodeUnauthorized, "Unauthorized.")
	}
	return provision.Result{}, &provision.TPMChallenge{AuthenticationKey: base64.StdEncoding.EncodeToString(e.blob)}
}

func (e *ekEngine) OperationStatus(context.Context, provision.Request, string) (provision.Result, error) {
	return provision.Result{}, errors.New("not used")
}

// FuzzTPMSASL feeds the mechanism an initial response, a hostname and the
// responses that follow (split at 0xff): it must never panic, must end
// within the responses it is given, and a finished exchange must have the
// device's identity and a token.
func FuzzTPMSASL(f *testing.F) {
	ek := testEK(f)
	f.Add([]byte("\x000ne00ABC\x00dev\x00ek"), "", []byte("\x00srk\xff\x00\xff\x00\xff\x00tok"))
	f.Add(append([]byte{0}, ek...), "", []byte("\x00srk\xff\x00\xff\x00\xff\x00tok"))
	f.Add(append([]byte{0}, ek...), "0ne00ABC/registrations/dev", []byte("\x00srk\xff\x00"))
	f.Add(append([]byte{0x80}, ek...), "", []byte{})
	s, err := New(&ekEngine{ek: ek, blob: bytes.Repeat([]byte{1}, 700)}, Options{Logger: slog.New(slog.DiscardHandler), IDScope: "0ne00SCOPE"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, init []byte, hostname string, rest []byte) {
		m := &tpmSASL{s: s, hostname: hostname}
		_, done, err := m.Step(init)
		for _, r := range bytes.Split(rest, []byte{0xff}) {
			if done {
				break
			}
			_, done, err = m.Step(r)
		}
		if !done || err != nil {
			return
		}
		if m.scope == "" || m.regID == "" || len(m.ek) == 0 || len(m.srk) == 0 || m.sasToken == "" || m.sent != len(m.segments) {
			t.Fatalf("finished without an identity or token: %+v", m)
		}
		if m.variant == tpmEKOnly && len(m.segments) > tpmMaxSequenced {
			t.Fatalf("%d segments sent to an early SDK", len(m.segments))
		}
	})
}

// TestTPMSegments checks how blobs are split: at least two segments (the
// Java SDK takes exactly two), equal sizes, none over tpmSegment.
func TestTPMSegments(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []int
	}{
		{1, []int{1}},
		{2, []int{1, 1}},
		{766, []int{383, 383}},
		{961, []int{481, 480}},
		{2 * tpmSegment, []int{tpmSegment, tpmSegment}},
		{2*tpmSegment + 1, []int{325, 325, 323}},
	} {
		var got []int
		for _, s := range tpmSegments(make([]byte, tc.n), tpmScoped) {
			got = append(got, len(s))
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%d bytes: segments %v, want %v", tc.n, got, tc.want)
		}
	}
	if segs := tpmSegments(make([]byte, 766), tpmEKOnly); len(segs) != 3 {
		t.Errorf("766 bytes as base64: %d segments, want 3", len(segs))
	}
}
