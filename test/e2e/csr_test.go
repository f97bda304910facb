package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/testenv"
)

// csrPrefix is the loopback range of the certificate issuance tests.
const csrPrefix = "127.0.15"

// csrGroupKey is the enrollment group key of the issuance tests.
var csrGroupKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))

// TestCSRIssuance is certificate issuance end to end with the CLI: a group
// that names the local CA, "dpsd device provision --csr" over HTTPS, MQTT
// and AMQP, then the device connects to its built-in hub with the issued
// certificate (and a certificate of its own making, same name, is
// refused). An operator's intermediate ("dpsd issuing-ca create") issues
// for an individual enrollment from a given CSR and key file; a CSR on an
// enrollment without an issuing CA is refused with 400216.
func TestCSRIssuance(t *testing.T) {
	srv := startServerIn(t, csrPrefix)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", "csr-group",
		"--attestation-type", "symmetrickey", "--primary-key", csrGroupKey, "--secondary-key", csrGroupKey,
		"--allocation-policy", "static", "--iot-hubs", srv.Hub, "--issuing-ca", "local")

	for _, tr := range []string{"https", "mqtt", "amqp"} {
		regID := "csr-dev-" + tr
		out := dpsdCLI(t, srv, "device", "provision", "--registration-id", regID, "--group-key", csrGroupKey,
			"--transport", tr, "--csr", "--issued-cert-out", p(regID+".pem"), "--issued-key-out", p(regID+".key"))
		if !strings.Contains(out, "deviceId: "+regID) || !strings.Contains(out, "Issued certificate: serial ") {
			t.Fatalf("%s: device provision --csr:\n%s", tr, out)
		}
		cert, err := tls.LoadX509KeyPair(p(regID+".pem"), p(regID+".key"))
		if err != nil {
			t.Fatalf("%s: issued files: %v", tr, err)
		}
		if err := hubConnect(t, srv, regID, cert); err != nil {
			t.Fatalf("%s: the hub refused the issued certificate: %v", tr, err)
		}
		// The same name and key in a certificate no configured CA issued.
		forged := selfSigned(t, regID, cert.PrivateKey.(crypto.Signer))
		if err := hubConnect(t, srv, regID, forged); err == nil {
			t.Fatalf("%s: the hub accepted a self-made certificate", tr)
		}
	}
	show := dpsdCLI(t, srv, "registration", "show", "--registration-id", "csr-dev-mqtt")
	if !strings.Contains(show, "Issued certificate serial") || !strings.Contains(show, "Issuing CA") {
		t.Fatalf("registration show lacks the issued certificate:\n%s", show)
	}
	var rec dps.DeviceRegistrationState
	decodeJSON(t, "registration show", dpsdCLI(t, srv, "registration", "show", "--registration-id", "csr-dev-https", "-o", "json"), &rec)
	if ic := rec.IssuedCertificate; ic == nil || ic.SerialNumber == "" || len(ic.SHA256Thumbprint) != 64 || len(rec.IssuedCertificateChain) != 0 {
		t.Fatalf("service API registration state: %+v", rec)
	}

	// An operator's intermediate CA, with a CSR and key made elsewhere.
	cert := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, testenv.Binary(t), append([]string{"cert"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("dpsd cert %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	cert("root", "--out", p("factory-root"))
	cert("intermediate", "--ca", p("factory-root"), "--out", p("factory"))
	dpsdCLI(t, srv, "issuing-ca", "create", "factory", "--certificate", p("factory.cert.pem"), "--key", p("factory.key.pem"))
	if list := dpsdCLI(t, srv, "issuing-ca", "list"); !strings.Contains(list, "local") || !strings.Contains(list, "factory") {
		t.Fatalf("issuing-ca list:\n%s", list)
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	devKey := base64.StdEncoding.EncodeToString(key)
	dpsdCLI(t, srv, "enrollment", "create", "--registration-id", "csr-factory-1", "--attestation-type", "symmetrickey",
		"--primary-key", devKey, "--secondary-key", devKey, "--allocation-policy", "static", "--iot-hubs", srv.Hub, "--issuing-ca", "factory")
	csrFile, keyFile := writeCSR(t, dir, "csr-factory-1")
	dpsdCLI(t, srv, "device", "provision", "--registration-id", "csr-factory-1", "--symmetric-key", devKey, "--transport", "mqtt",
		"--csr-file", csrFile, "--csr-key-file", keyFile, "--issued-cert-out", p("factory-1.pem"))
	issued, err := tls.LoadX509KeyPair(p("factory-1.pem"), keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(issued.Certificate[0])
	if !strings.Contains(leaf.Issuer.String(), "factory") && len(issued.Certificate) != 2 {
		t.Fatalf("issued by %s, chain of %d", leaf.Issuer, len(issued.Certificate))
	}
	if err := hubConnect(t, srv, "csr-factory-1", issued); err != nil {
		t.Fatalf("the hub refused the factory-issued certificate: %v", err)
	}

	// An enrollment that names no issuing CA refuses a CSR.
	dpsdCLI(t, srv, "enrollment", "create", "--registration-id", "csr-none-1", "--attestation-type", "symmetrickey",
		"--primary-key", devKey, "--secondary-key", devKey, "--allocation-policy", "static", "--iot-hubs", srv.Hub)
	out, errOut, err := dpsdCLIResult(t, srv, "device", "provision", "--registration-id", "csr-none-1", "--symmetric-key", devKey,
		"--csr", "--issued-cert-out", p("none.pem"), "--issued-key-out", p("none.key"))
	if err == nil || !strings.Contains(out+errOut, "400216") {
		t.Fatalf("csr without an issuing CA: %v\n%s\n%s", err, out, errOut)
	}
}

// TestCSRWire sends the register request as the C SDK's preview branch
// does over HTTPS (api-version 2025-07-01-preview, its UserAgent header,
// the SAS token with a lower-case %2f in sr, the csr as base64 DER, the
// PUT and the GET on one kept-alive connection) and checks the answer's
// issuedCertificateChain, and the refusals in Azure's error shape.
func TestCSRWire(t *testing.T) {
	srv := startServerIn(t, csrPrefix)
	dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", "csr-wire",
		"--attestation-type", "symmetrickey", "--primary-key", csrGroupKey, "--secondary-key", csrGroupKey,
		"--allocation-policy", "static", "--iot-hubs", srv.Hub, "--issuing-ca", "local")
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: srv.roots(t), ServerName: srv.IP}}}
	scope := srv.Info.IDScope
	send := func(method, regID, path string, body []byte) (int, []byte) {
		t.Helper()
		devKey, err := sas.DeriveDeviceKey(csrGroupKey, regID)
		if err != nil {
			t.Fatal(err)
		}
		// The C SDK: sr URL-encoded with lower-case hex, then sig, se, skn.
		sr := strings.ReplaceAll(url.QueryEscape(scope+"/registrations/"+regID), "%2F", "%2f")
		se := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
		k, _ := base64.StdEncoding.DecodeString(devKey)
		m := hmac.New(sha256.New, k)
		m.Write([]byte(sr + "\n" + se))
		sig := base64.StdEncoding.EncodeToString(m.Sum(nil))
		req, _ := http.NewRequest(method, "https://"+srv.IP+"/"+scope+"/registrations/"+regID+path+"?api-version=2025-07-01-preview", bytes.NewReader(body))
		req.Header.Set("Authorization", "SharedAccessSignature sr="+sr+"&sig="+url.QueryEscape(sig)+"&se="+se+"&skn=registration")
		req.Header.Set("UserAgent", "prov_device_client/1.0")
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Connection", "keep-alive")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	register := func(regID, csr string) (int, []byte) {
		body, _ := json.Marshal(map[string]string{"registrationId": regID, "csr": csr})
		return send(http.MethodPut, regID, "/register", body)
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	status, body := register("csr-wire-1", csrB64(t, "csr-wire-1", key))
	var op dps.RegistrationOperationStatus
	if err := json.Unmarshal(body, &op); err != nil || status != http.StatusAccepted {
		t.Fatalf("register: %d %s", status, body)
	}
	for i := 0; op.Status == dps.StatusAssigning && i < 20; i++ {
		time.Sleep(500 * time.Millisecond)
		status, body = send(http.MethodGet, "csr-wire-1", "/operations/"+op.OperationID, nil)
		if err := json.Unmarshal(body, &op); err != nil {
			t.Fatalf("poll: %d %s", status, body)
		}
	}
	st := op.RegistrationState
	if op.Status != dps.StatusAssigned || st == nil || len(st.IssuedCertificateChain) != 2 {
		t.Fatalf("answer: %s", body)
	}
	der, _ := base64.StdEncoding.DecodeString(st.IssuedCertificateChain[0])
	leaf, err := x509.ParseCertificate(der)
	if err != nil || leaf.Subject.CommonName != "csr-wire-1" || !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatalf("issued leaf: %v", err)
	}
	caDER, _ := base64.StdEncoding.DecodeString(st.IssuedCertificateChain[1])
	ca, err := x509.ParseCertificate(caDER)
	if err != nil || leaf.CheckSignatureFrom(ca) != nil || ca.Subject.String() != srv.localCA(t).Subject.String() {
		t.Fatalf("the chain's second certificate is not the local CA that signed the leaf: %v", err)
	}
	if err := hubConnect(t, srv, "csr-wire-1", tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}); err != nil {
		t.Fatalf("hub connect with the issued certificate: %v", err)
	}

	weak := csrB64(t, "csr-wire-2", mustRSA(t, 1024))
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	badSig, _ := base64.StdEncoding.DecodeString(csrB64(t, "csr-wire-2", other))
	badSig[len(badSig)-3] ^= 0x55
	for _, tc := range []struct {
		name, csr string
		code      int
	}{
		{"wrong CN", csrB64(t, "someone-else", other), dps.CodeCSRSubjectMismatch},
		{"weak key", weak, dps.CodeCSRKeyNotAllowed},
		{"bad signature", base64.StdEncoding.EncodeToString(badSig), dps.CodeInvalidCSR},
		{"not base64", "%%%", dps.CodeInvalidCSR},
	} {
		status, body := register("csr-wire-2", tc.csr)
		var e dps.Error
		if err := json.Unmarshal(body, &e); err != nil || status != http.StatusBadRequest || e.ErrorCode != tc.code || e.TrackingID == "" || e.Message == "" {
			t.Errorf("%s: %d %s, want 400 with errorCode %d", tc.name, status, body, tc.code)
		}
	}
}

// hubConnect connects to the server's built-in hub over MQTT with cert as
// the device regID (X.509: no password) and publishes one telemetry message.
func hubConnect(t *testing.T, srv *dpsdServer, regID string, cert tls.Certificate) error {
	t.Helper()
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + net.JoinHostPort(srv.IP, "8883")).
		SetClientID(regID).
		SetUsername(srv.Hub + "/" + regID + "/?api-version=2021-04-12").
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: srv.roots(t), ServerName: srv.Hub, Certificates: []tls.Certificate{cert}})
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	defer c.Disconnect(100)
	pub := c.Publish("devices/"+regID+"/messages/events/", 1, false, `{"hello":"issued"}`)
	if !pub.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("publish timed out")
	}
	return pub.Error()
}

func (s *dpsdServer) localCA(t *testing.T) *x509.Certificate {
	b, err := os.ReadFile(s.Info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrB64(t *testing.T, cn string, key crypto.Signer) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

// writeCSR writes a PEM csr for cn and its PEM key, as openssl would.
func writeCSR(t *testing.T, dir, cn string) (csrFile, keyFile string) {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := base64.StdEncoding.DecodeString(csrB64(t, cn, key))
	kd, _ := x509.MarshalECPrivateKey(key)
	csrFile, keyFile = filepath.Join(dir, cn+".csr"), filepath.Join(dir, cn+".csr.key")
	if err := os.WriteFile(csrFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return csrFile, keyFile
}

func selfSigned(t *testing.T, cn string, key crypto.Signer) tls.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func mustRSA(t *testing.T, bits int) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestBenchTPMAndCSR runs the simulator with TPM devices on swtpm and with
// certificate signing requests, each device getting its certificate.
func TestBenchTPMAndCSR(t *testing.T) {
	srv := startServerIn(t, csrPrefix)
	a, b := testenv.StartSWTPM(t), testenv.StartSWTPM(t)
	var res struct {
		Succeeded int            `json:"succeeded"`
		Failed    int            `json:"failed"`
		Errors    map[string]int `json:"errors"`
	}
	out := dpsdCLI(t, srv, "bench", "--setup", "--tpm", a.Addr(), "--tpm", b.Addr(), "--csr",
		"--registrations", "4", "--concurrency", "2", "--hub", srv.Hub, "--id-prefix", "bench-tpm-", "-o", "json")
	decodeJSON(t, "bench --tpm --csr", out, &res)
	if res.Succeeded != 4 || res.Failed != 0 {
		t.Fatalf("bench --tpm --csr: %s", out)
	}
	var st dps.DeviceRegistrationState
	decodeJSON(t, "registration show", dpsdCLI(t, srv, "registration", "show", "--registration-id", "bench-tpm-tpm-001", "-o", "json"), &st)
	if st.Status != dps.StatusAssigned || st.IssuedCertificate == nil {
		t.Fatalf("TPM device of the bench: %+v", st)
	}

	out = dpsdCLI(t, srv, "bench", "--setup", "--group-id", "bench-csr", "--csr", "--transport", "mqtt",
		"--registrations", "6", "--concurrency", "3", "--hub", srv.Hub, "-o", "json")
	decodeJSON(t, "bench --csr", out, &res)
	if res.Succeeded != 6 || res.Failed != 0 {
		t.Fatalf("bench --csr: %s", out)
	}
}
