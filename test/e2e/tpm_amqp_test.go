package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/tpm"
	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/testenv"
)

// tpmAMQPPrefix is the loopback range of the AMQP TPM tests' servers.
const tpmAMQPPrefix = "127.0.25"

// cMaxFrameData is the C SDK's MAX_FRAME_DATA_LEN: the most bytes of a key
// or token it puts in one SASL frame before it would chunk.
const cMaxFrameData = 470

// cSASLTPM speaks the C SDK's TPM SASL mechanism byte for byte, as read
// from provisioning_client/src/prov_sasl_tpm.c (no C SDK builds here):
//
// Current revision (the mechanism holds the scope and registration id):
//   - sasl-init: mechanism "TPM", no hostname (uAMQP's saslclientio sets
//     none), initial response 0x00 ‖ idScope ‖ 0x00 ‖ registrationId ‖
//     0x00 ‖ EK (TPM2B_PUBLIC), at most 470 bytes after the control byte.
//   - a challenge whose control byte lacks bit 7: 0x00 ‖ SRK.
//   - a challenge with bit 7: its bytes after the control byte are
//     appended to the nonce, raw; its sequence number (control & 0x03)
//     must equal a counter that starts at 0 and is never wrapped, so the
//     SDK fails a fifth segment; without bit 6 the answer is 0x00 and the
//     counter grows; with bit 6 the nonce is the activation blob, the
//     challenge callback imports it and signs a SAS token, and the answer
//     is 0x00 ‖ token (at most 470 bytes).
//
// Early revision: the initial response is 0x00 ‖ EK alone (the scope and
// registration id are nowhere in SASL; the SDK's registration id for a TPM
// was base32(SHA-256(EK)) without padding), and the nonce segments are
// base64 text, decoded once the last arrives. The rest is the same.
//
// With java set it speaks the Java SDK's AmqpsProvisioningSaslHandler
// instead: the current C initial response, then exactly three challenges
// it checks byte for byte: 0x00 alone (answered 0x00 ‖ SRK), a segment
// with control byte 0x80 (answered 0x00) and one with 0xC1, the last
// (answered 0x00 ‖ SAS token).
type cSASLTPM struct {
	t            *testing.T
	early, java  bool
	scope, regID string
	dev          *tpm.Device
	nonce        []byte
	seq          int
	segments     int
	activated    bool
}

func (m *cSASLTPM) Name() wire.Symbol { return "TPM" }

func (m *cSASLTPM) Initial() ([]byte, error) {
	if m.early {
		if len(m.dev.EK) > cMaxFrameData {
			return nil, errors.New("the C SDK would chunk this EK")
		}
		return append([]byte{0}, m.dev.EK...), nil
	}
	b := append([]byte{0}, m.scope...)
	b = append(b, 0)
	b = append(b, m.regID...)
	b = append(b, 0)
	b = append(b, m.dev.EK...)
	if len(b)-1 > cMaxFrameData {
		return nil, errors.New("the C SDK would chunk this initial response")
	}
	return b, nil
}

func (m *cSASLTPM) Challenge(ch []byte) ([]byte, error) {
	if m.java {
		return m.javaChallenge(ch)
	}
	ctrl := ch[0]
	if ctrl&0x80 == 0 {
		return append([]byte{0}, m.dev.SRK...), nil
	}
	m.nonce = append(m.nonce, ch[1:]...)
	m.segments++
	if int(ctrl&0x03) != m.seq {
		return nil, fmt.Errorf("invalid sequence number: control byte 0x%02x, expected %d", ctrl, m.seq)
	}
	if ctrl&0x40 == 0 {
		m.seq++
		return []byte{0}, nil
	}
	blob := m.nonce
	if m.early {
		var err error
		if blob, err = base64.StdEncoding.DecodeString(string(m.nonce)); err != nil {
			return nil, fmt.Errorf("the nonce is not base64: %w", err)
		}
	}
	if err := m.dev.Activate(blob); err != nil {
		return nil, fmt.Errorf("the TPM refused the activation blob: %w", err)
	}
	m.activated = true
	tok := m.token()
	if len(tok) > cMaxFrameData {
		return nil, errors.New("SAS token too large for a SASL frame")
	}
	m.seq = 0
	return append([]byte{0}, tok...), nil
}

func (m *cSASLTPM) javaChallenge(ch []byte) ([]byte, error) {
	switch {
	case m.segments == 0 && m.nonce == nil && !m.activated:
		if len(ch) != 1 || ch[0] != 0 {
			return nil, fmt.Errorf("Java: unexpected first challenge % x", ch)
		}
		m.nonce = []byte{}
		return append([]byte{0}, m.dev.SRK...), nil
	case m.segments == 0:
		if ch[0] != 0x80 {
			return nil, fmt.Errorf("Java: second challenge control byte 0x%02x, want 0x80", ch[0])
		}
		m.segments++
		m.nonce = append(m.nonce, ch[1:]...)
		return []byte{0}, nil
	case m.segments == 1:
		if ch[0] != 0xC1 {
			return nil, fmt.Errorf("Java: third challenge control byte 0x%02x, want 0xC1", ch[0])
		}
		m.segments++
		m.nonce = append(m.nonce, ch[1:]...)
		if err := m.dev.Activate(m.nonce); err != nil {
			return nil, fmt.Errorf("the TPM refused the activation blob: %w", err)
		}
		m.activated = true
		return append([]byte{0}, m.token()...), nil
	}
	return nil, errors.New("Java: unexpected fourth challenge")
}

// token is the SAS token the C SDK's challenge callback has the TPM sign
// (prov_device_ll_client.c, prov_auth_client.c): sr is
// {scope}/registrations/{id} through the C utility's URL_EncodeString,
// whose escapes are lower-case hex, signed as sent; sig the URL-encoded
// base64 HMAC; skn "registration".
func (m *cSASLTPM) token() string {
	sr := cURLEncode(m.scope + "/registrations/" + m.regID)
	se := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	sig, err := m.dev.Sign([]byte(sr + "\n" + se))
	if err != nil {
		m.t.Fatalf("TPM HMAC: %v", err)
	}
	return "SharedAccessSignature sr=" + sr + "&sig=" + cURLEncode(base64.StdEncoding.EncodeToString(sig)) + "&se=" + se + "&skn=registration"
}

// cURLEncode percent-encodes as the C utility's URL_EncodeString does for
// the characters of scopes, registration ids and base64: lower-case hex.
func cURLEncode(s string) string {
	e := []byte(url.QueryEscape(s))
	for i := 0; i+2 < len(e); i++ {
		if e[i] == '%' {
			e[i+1], e[i+2] = byte(unicode.ToLower(rune(e[i+1]))), byte(unicode.ToLower(rune(e[i+2])))
		}
	}
	return string(e)
}

// cTPMRegister connects as the C SDK's AMQP transport does (TLS to 5671,
// the TPM SASL exchange, links to amqps://{host}/{scope}/registrations/{id})
// and registers; it returns the final operation status, or the SASL error.
func cTPMRegister(t *testing.T, srv *dpsdServer, m *cSASLTPM, body []byte) (*dps.RegistrationOperationStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{RootCAs: srv.roots(t), ServerName: srv.IP}}
	nc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(srv.IP, "5671"))
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := wire.ClientSASL(nc, "", m); err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	conn, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{HostName: srv.IP})
	if err != nil {
		nc.Close()
		t.Fatalf("AMQP open after TPM SASL: %v", err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("amqps://%s/%s/registrations/%s", srv.IP, m.scope, m.regID)
	props := map[string]any{"com.microsoft:api-version": "2019-03-31", "com.microsoft:client-version": "iothubclient/1.x (native; c)"}
	recv, err := sess.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{Properties: props, Credit: 1})
	if err != nil {
		t.Fatal(err)
	}
	send, err := sess.NewSender(ctx, addr, &goamqp.SenderOptions{Properties: props})
	if err != nil {
		t.Fatal(err)
	}
	req := func(props map[string]any, body []byte) *dps.RegistrationOperationStatus {
		msg := goamqp.NewMessage(body)
		msg.ApplicationProperties = props
		if err := send.Send(ctx, msg, nil); err != nil {
			t.Fatalf("request %v: %v", props, err)
		}
		ans, err := recv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = recv.AcceptMessage(ctx, ans)
		var op dps.RegistrationOperationStatus
		if err := json.Unmarshal(ans.GetData(), &op); err != nil {
			t.Fatalf("answer %s: %v", ans.GetData(), err)
		}
		return &op
	}
	op := req(map[string]any{"iotdps-operation-type": "iotdps-register"}, body)
	for polls := 0; op.Status == dps.StatusAssigning && polls < 10; polls++ {
		time.Sleep(time.Second)
		op = req(map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": op.OperationID}, nil)
	}
	return op, nil
}

// TestTPMAMQPSDKFramings provisions TPM devices over AMQP speaking the C
// SDK's SASL TPM mechanism (both revisions) and the Java SDK's against a
// real dpsd, with swtpm activating the credential, through to an assigned
// registration; and checks that a device whose EK is not enrolled gets the
// SASL outcome auth.
func TestTPMAMQPSDKFramings(t *testing.T) {
	srv := startServerIn(t, tpmAMQPPrefix)
	for _, tc := range []struct {
		name        string
		early, java bool
	}{{"c-current", false, false}, {"c-early", true, false}, {"java", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			sw := testenv.StartSWTPM(t)
			c, err := sw.Open()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			dev := testenv.NewTPMDevice(t, c)
			regID := "sdk-tpm-" + tc.name
			if tc.early {
				sum := sha256.Sum256(dev.EK)
				regID = strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))
			}
			m := &cSASLTPM{t: t, early: tc.early, java: tc.java, scope: srv.Info.IDScope, regID: regID, dev: dev}

			// Not enrolled yet: the SASL outcome is auth, no challenge.
			if _, err := cTPMRegister(t, srv, m, nil); !errors.Is(err, wire.ErrSASLAuth) || len(m.nonce) != 0 {
				t.Fatalf("unenrolled TPM: %v (nonce %d bytes)", err, len(m.nonce))
			}

			ek := base64.StdEncoding.EncodeToString(dev.EK)
			dpsdCLI(t, srv, "enrollment", "create", "--registration-id", regID, "--attestation-type", "tpm",
				"--endorsement-key", ek, "--allocation-policy", "static", "--iot-hubs", srv.Hub)
			*m = cSASLTPM{t: t, early: tc.early, java: tc.java, scope: srv.Info.IDScope, regID: regID, dev: dev}
			var body []byte
			if !tc.early {
				// The current C SDK's register body; the early one sent
				// an empty one.
				body, _ = json.Marshal(dps.DeviceRegistration{RegistrationID: regID, TPM: &dps.TPMAttestation{
					EndorsementKey: ek, StorageRootKey: base64.StdEncoding.EncodeToString(dev.SRK)}})
			}
			op, err := cTPMRegister(t, srv, m, body)
			if err != nil {
				t.Fatalf("TPM SASL as the C SDK: %v", err)
			}
			// Two segments raw, three as base64: the sequence numbers are
			// exercised.
			if !m.activated || m.segments < 2 {
				t.Fatalf("the SASL exchange ended after %d segments, activated %v", m.segments, m.activated)
			}
			t.Logf("activation blob: %d bytes in %d segments", len(m.nonce), m.segments)
			st := op.RegistrationState
			if op.Status != dps.StatusAssigned || st == nil || st.AssignedHub != srv.Hub || st.DeviceID != regID || st.TPM == nil {
				t.Fatalf("registration: %+v", op)
			}
			// The C SDK imports the answer's blob for the hub.
			final, err := base64.StdEncoding.DecodeString(st.TPM.AuthenticationKey)
			if err != nil {
				t.Fatal(err)
			}
			if err := dev.Activate(final); err != nil {
				t.Fatalf("the TPM refused the answer's activation blob: %v", err)
			}
		})
	}
}

// TestTPMAMQPClient is "dpsd device provision --tpm" and "dpsd bench --tpm"
// over AMQP and AMQP over WebSockets against swtpm: dpsd's Go client runs
// the TPM SASL mechanism before go-amqp opens the connection.
func TestTPMAMQPClient(t *testing.T) {
	sw := testenv.StartSWTPM(t)
	srv := startServerIn(t, tpmAMQPPrefix)
	out, err := exec.Command(testenv.Binary(t), "device", "endorsement-key", "--tpm", sw.Addr()).CombinedOutput()
	if err != nil {
		t.Fatalf("dpsd device endorsement-key: %v\n%s", err, out)
	}
	ek := strings.TrimSpace(string(out))
	dpsdCLI(t, srv, "enrollment", "create", "--registration-id", "tpm-amqp-1", "--attestation-type", "tpm",
		"--endorsement-key", ek, "--allocation-policy", "static", "--iot-hubs", srv.Hub)
	for _, tr := range []string{"amqp", "amqp-ws", "amqp"} { // again: the device keeps its identity key
		out := dpsdCLI(t, srv, "device", "provision", "--registration-id", "tpm-amqp-1", "--tpm", sw.Addr(), "--transport", tr)
		if !strings.Contains(out, "Registration Information received from service: "+srv.Hub+", deviceId: tpm-amqp-1") {
			t.Fatalf("device provision --tpm --transport %s:\n%s", tr, out)
		}
	}
	// Another TPM's key gets the SASL outcome auth, reported as the 401.
	other := testenv.StartSWTPM(t)
	stdout, errOut, err := dpsdCLIResult(t, srv, "device", "provision", "--registration-id", "tpm-amqp-1", "--tpm", other.Addr(), "--transport", "amqp")
	if err == nil || !strings.Contains(stdout+errOut, "401") || !strings.Contains(stdout+errOut, "SASL") {
		t.Fatalf("a foreign TPM over amqp: %v\n%s\n%s", err, stdout, errOut)
	}
	// MQTT has no TPM exchange, and the client says so.
	if _, errOut, err := dpsdCLIResult(t, srv, "device", "provision", "--registration-id", "tpm-amqp-1", "--tpm", sw.Addr(), "--transport", "mqtt"); err == nil || !strings.Contains(errOut, "https, amqp and amqp-ws") {
		t.Fatalf("--tpm over mqtt: %v\n%s", err, errOut)
	}

	a, b := testenv.StartSWTPM(t), testenv.StartSWTPM(t)
	var res struct {
		Succeeded int `json:"succeeded"`
		Failed    int `json:"failed"`
	}
	for i, tr := range []string{"amqp", "amqp-ws"} {
		args := []string{"bench", "--tpm", a.Addr(), "--tpm", b.Addr(), "--transport", tr,
			"--registrations", "4", "--concurrency", "2", "--hub", srv.Hub, "--id-prefix", "bench-amqp-tpm-", "-o", "json"}
		if i == 0 {
			args = append(args, "--setup")
		}
		out := dpsdCLI(t, srv, args...)
		decodeJSON(t, "bench --tpm --transport "+tr, out, &res)
		if res.Succeeded != 4 || res.Failed != 0 {
			t.Fatalf("bench --tpm --transport %s: %s", tr, out)
		}
	}
}
