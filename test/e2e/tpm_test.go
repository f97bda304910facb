package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/tpm"
	"github.com/dpsd/dpsd/internal/testenv"
)

// tpmPrefix is the loopback range of the TPM tests' servers.
const tpmPrefix = "127.0.13"

// hubAddress is the built-in test hub's address ("dpsd hub show").
func hubAddress(t *testing.T, srv *dpsdServer) string {
	t.Helper()
	var h struct {
		Address string `json:"address"`
	}
	decodeJSON(t, "dpsd hub show", dpsdCLI(t, srv, "hub", "show", "e2e-hub", "-o", "json"), &h)
	if h.Address == "" {
		t.Fatal("dpsd hub show: no address")
	}
	return h.Address
}

// TestTPMSDK runs test/sdk/tpm.test.js: the official Node TPM security
// client on Debian's swtpm, through the simulator-protocol bridge, over
// HTTPS, AMQP and AMQP over WebSockets (the SDKs offer no TPM over MQTT);
// then the device on the built-in hub with TPM-signed tokens.
func TestTPMSDK(t *testing.T) {
	nodeTool(t)
	sw := testenv.StartSWTPM(t)
	srv := startServerIn(t, tpmPrefix)
	br := testenv.StartSimulatorBridge(t, sw, srv.IP)
	t.Setenv("DPSD_TPM_HOST", br.Host)
	t.Setenv("DPSD_TPM_PORT", strconv.Itoa(br.Port))
	t.Setenv("DPSD_HUB_ADDR", hubAddress(t, srv))
	t.Setenv("DPSD_TPM_TRANSPORTS", "http,amqp,amqpws")
	runNodeTests(t, srv, "tpm.test.js")
}

// tpmWire is a TPM device speaking the HTTPS device API by hand, with its
// keys in swtpm (go-tpm doing what the SDKs do).
type tpmWire struct {
	t     *testing.T
	srv   *dpsdServer
	hc    *http.Client
	dev   *tpm.Device
	regID string
}

func (d *tpmWire) register(body any, auth string) (int, []byte) {
	d.t.Helper()
	b, _ := json.Marshal(body)
	u := fmt.Sprintf("https://%s/%s/registrations/%s/register?api-version=2021-06-01", d.srv.IP, d.srv.Info.IDScope, url.PathEscape(d.regID))
	req, err := http.NewRequest(http.MethodPut, u, bytes.NewReader(b))
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// sasToken is the registration SAS token signed by the TPM's identity key,
// as the SDKs make it.
func (d *tpmWire) sasToken() string {
	d.t.Helper()
	aud := url.QueryEscape(d.srv.Info.IDScope + "/registrations/" + d.regID)
	exp := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	sig, err := d.dev.Sign([]byte(aud + "\n" + exp))
	if err != nil {
		d.t.Fatalf("TPM HMAC: %v", err)
	}
	return "SharedAccessSignature sr=" + aud + "&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString(sig)) + "&se=" + exp + "&skn=registration"
}

// TestTPMWire checks the HTTPS exchange byte for byte where the SDKs look,
// and the refusals: a foreign endorsement key, a token not signed by the
// identity key, a TPM device without an enrollment.
func TestTPMWire(t *testing.T) {
	sw := testenv.StartSWTPM(t)
	conn, err := sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv := startServerIn(t, tpmPrefix)
	pool := srv.roots(t)
	d := &tpmWire{
		t: t, srv: srv, dev: testenv.NewTPMDevice(t, conn), regID: "tpm-wire-1",
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: srv.IP}}},
	}
	ek := base64.StdEncoding.EncodeToString(d.dev.EK)
	srk := base64.StdEncoding.EncodeToString(d.dev.SRK)
	keys := map[string]any{"registrationId": d.regID, "tpm": map[string]string{"endorsementKey": ek, "storageRootKey": srk}}

	// Not enrolled: a plain 401, no challenge.
	status, body := d.register(keys, "")
	if status != http.StatusUnauthorized || bytes.Contains(body, []byte("authenticationKey")) {
		t.Fatalf("unenrolled TPM: %d %s", status, body)
	}

	dpsdCLI(t, srv, "enrollment", "create", "--registration-id", d.regID, "--attestation-type", "tpm",
		"--endorsement-key", ek, "--allocation-policy", "static", "--iot-hubs", srv.Hub)

	// A foreign EK (the enrolled one with its modulus changed): no challenge.
	foreign := append([]byte(nil), d.dev.EK...)
	foreign[len(foreign)-1] ^= 0xff
	status, body = d.register(map[string]any{"registrationId": d.regID, "tpm": map[string]string{
		"endorsementKey": base64.StdEncoding.EncodeToString(foreign), "storageRootKey": srk}}, "")
	if status != http.StatusUnauthorized || bytes.Contains(body, []byte("authenticationKey")) {
		t.Fatalf("foreign EK: %d %s", status, body)
	}

	// The challenge: 401 with the error shape and the activation blob.
	status, body = d.register(keys, "")
	var ch struct {
		ErrorCode         int    `json:"errorCode"`
		TrackingID        string `json:"trackingId"`
		AuthenticationKey string `json:"authenticationKey"`
		KeyName           string `json:"keyName"`
	}
	if err := json.Unmarshal(body, &ch); err != nil || status != http.StatusUnauthorized || ch.ErrorCode != dps.CodeUnauthorized || ch.TrackingID == "" || ch.AuthenticationKey == "" || ch.KeyName != "registration" {
		t.Fatalf("challenge: %d %s (%v)", status, body, err)
	}

	// A token signed with some other key is refused before activation.
	bogus := "SharedAccessSignature sr=" + url.QueryEscape(srv.Info.IDScope+"/registrations/"+d.regID) + "&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString(make([]byte, 32))) + "&se=" + strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10) + "&skn=registration"
	if status, body = d.register(keys, bogus); status != http.StatusUnauthorized {
		t.Fatalf("bogus token: %d %s", status, body)
	}

	blob, err := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.dev.Activate(blob); err != nil {
		t.Fatalf("the TPM refused the activation blob: %v", err)
	}
	status, body = d.register(keys, d.sasToken())
	var op dps.RegistrationOperationStatus
	if err := json.Unmarshal(body, &op); err != nil || status != http.StatusAccepted || op.Status != dps.StatusAssigned {
		t.Fatalf("register with the TPM's token: %d %s (%v)", status, body, err)
	}
	st := op.RegistrationState
	if st.AssignedHub != srv.Hub || st.DeviceID != d.regID || st.TPM == nil || st.TPM.AuthenticationKey == "" {
		t.Fatalf("registration state %s", body)
	}
	// The answer's blob activates too (the SDKs import it again).
	final, _ := base64.StdEncoding.DecodeString(st.TPM.AuthenticationKey)
	if err := d.dev.Activate(final); err != nil {
		t.Fatalf("the TPM refused the answer's activation blob: %v", err)
	}

	// The hub identity holds the identity key: a token the TPM signs for
	// the hub verifies against the identity's primary key.
	var dev struct {
		Authentication struct {
			SymmetricKey struct {
				PrimaryKey string `json:"primaryKey"`
			} `json:"symmetricKey"`
		} `json:"authentication"`
	}
	decodeJSON(t, "dpsd hub device show", dpsdCLI(t, srv, "hub", "device", "show", "--hub-name", "e2e-hub", "--device-id", d.regID, "-o", "json"), &dev)
	key, err := base64.StdEncoding.DecodeString(dev.Authentication.SymmetricKey.PrimaryKey)
	if err != nil || len(key) != 32 {
		t.Fatalf("hub identity key %q: %v", dev.Authentication.SymmetricKey.PrimaryKey, err)
	}
	msg := []byte(srv.Hub + "/devices/" + d.regID + "\n1800000000")
	sig, err := d.dev.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	if !hmac.Equal(sig, m.Sum(nil)) {
		t.Fatal("the hub identity's primary key is not the TPM's identity key")
	}

	// Polling the operation is authorized by the same token.
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://%s/%s/registrations/%s/operations/%s?api-version=2021-06-01", srv.IP, srv.Info.IDScope, d.regID, op.OperationID), nil)
	req.Header.Set("Authorization", d.sasToken())
	resp, err := d.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(pb), `"assigned"`) {
		t.Fatalf("operation status: %d %s", resp.StatusCode, pb)
	}
}

// TestTPMSimulator is "dpsd device provision --tpm" against swtpm, as a
// user runs it: the endorsement key printed by "dpsd device
// endorsement-key" enrolled with the CLI, then provisioned.
func TestTPMSimulator(t *testing.T) {
	sw := testenv.StartSWTPM(t)
	srv := startServerIn(t, tpmPrefix)
	out, err := exec.Command(testenv.Binary(t), "device", "endorsement-key", "--tpm", sw.Addr()).CombinedOutput()
	if err != nil {
		t.Fatalf("dpsd device endorsement-key: %v\n%s", err, out)
	}
	ek := strings.TrimSpace(string(out))
	dpsdCLI(t, srv, "enrollment", "create", "--registration-id", "tpm-sim-1", "--attestation-type", "tpm",
		"--endorsement-key", ek, "--allocation-policy", "static", "--iot-hubs", srv.Hub)
	for range 2 { // the second registration keeps the identity key
		out := dpsdCLI(t, srv, "device", "provision", "--registration-id", "tpm-sim-1", "--tpm", sw.Addr())
		if !strings.Contains(out, "Registration Information received from service: "+srv.Hub+", deviceId: tpm-sim-1") {
			t.Fatalf("device provision --tpm:\n%s", out)
		}
	}
	// Another TPM's key is refused with the Azure error.
	other := testenv.StartSWTPM(t)
	stdout, errOut, err := dpsdCLIResult(t, srv, "device", "provision", "--registration-id", "tpm-sim-1", "--tpm", other.Addr())
	if err == nil || !strings.Contains(stdout+errOut, "401") {
		t.Fatalf("a foreign TPM: %v\n%s\n%s", err, stdout, errOut)
	}
}
