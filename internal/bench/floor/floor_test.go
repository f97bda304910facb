package floor

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/internal/localca"
)

// host and groupKey are the floor's in these tests.
const host = "floor.test"

var groupKey = []byte("0123456789abcdef0123456789abcdef")

// testCA is a CA of the test's own and a server certificate for host.
func testCA(t *testing.T) (*localca.CA, tls.Certificate) {
	t.Helper()
	ca, err := localca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate("server", []string{host})
	if err != nil {
		t.Fatal(err)
	}
	return ca, cert
}

// TestFloorAnswersLikeDPSD registers a device of the floor's group over
// every transport with dpsd's device client and checks that it is
// assigned, and that a wrong key is refused as dpsd refuses it.
func TestFloorAnswersLikeDPSD(t *testing.T) {
	ca, cert := testCA(t)
	for _, pollFirst := range []bool{false, true} {
		s, err := Start(Options{
			IP:        "127.0.9.90",
			TLS:       &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
			IDScope:   "0ne00F10012",
			GroupKey:  groupKey,
			Hub:       "floor-hub.example",
			PollFirst: pollFirst,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		for _, tc := range []struct {
			tr   device.Transport
			addr string
		}{
			{device.TransportHTTPS, s.HTTPSAddr()},
			{device.TransportMQTT, s.MQTTAddr()},
			{device.TransportMQTTWS, s.HTTPSAddr()},
			{device.TransportAMQP, s.AMQPAddr()},
			{device.TransportAMQPWS, s.HTTPSAddr()},
		} {
			cfg := device.Config{
				ProvisioningHost: host, DialAddr: tc.addr, RootCAs: ca.Pool(), Transport: tc.tr,
				IDScope: "0ne00F10012", RegistrationID: "dev-" + string(tc.tr),
				GroupKey: base64.StdEncoding.EncodeToString(groupKey),
			}
			st, err := device.Register(t.Context(), cfg)
			if err != nil {
				t.Fatalf("%s (poll first %v): %v", tc.tr, pollFirst, err)
			}
			if st.Status != dps.StatusAssigned || st.AssignedHub != "floor-hub.example" || st.DeviceID != cfg.RegistrationID {
				t.Errorf("%s: %+v, want assigned to floor-hub.example", tc.tr, st)
			}
			cfg.GroupKey = base64.StdEncoding.EncodeToString([]byte("another key entirely, 32 bytes.."))
			_, err = device.Register(t.Context(), cfg)
			var de *dps.Error
			if !errors.As(err, &de) || de.ErrorCode != dps.CodeUnauthorized {
				t.Errorf("%s, wrong key: %v, want errorCode %d", tc.tr, err, dps.CodeUnauthorized)
			}
		}
	}
}

// childEnv makes the test binary serve as the floor's child process.
const childEnv = "DPSD_FLOOR_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := ServeProcess(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestProcess runs the floor as a child process, as bench --floor does:
// it serves a device of its group, reports the CPU it used, and is gone
// once Close returns.
func TestProcess(t *testing.T) {
	ca, cert := testCA(t)
	t.Setenv(childEnv, "1")
	p, err := StartProcess(t.Context(), os.Args[0], nil, ProcessOptions{
		IP: "127.0.9.90", Certificate: cert, IDScope: "0ne00F10013", GroupKey: groupKey, Hub: "floor-hub.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() == os.Getpid() || p.PID() <= 0 {
		t.Fatalf("floor pid %d, this process %d", p.PID(), os.Getpid())
	}
	for _, tr := range []device.Transport{device.TransportHTTPS, device.TransportMQTT, device.TransportAMQP} {
		addr := map[device.Transport]string{device.TransportHTTPS: p.HTTPSAddr(), device.TransportMQTT: p.MQTTAddr(), device.TransportAMQP: p.AMQPAddr()}[tr]
		st, err := device.Register(t.Context(), device.Config{
			ProvisioningHost: host, DialAddr: addr, RootCAs: ca.Pool(), Transport: tr,
			IDScope: "0ne00F10013", RegistrationID: "dev-" + string(tr),
			GroupKey: base64.StdEncoding.EncodeToString(groupKey),
		})
		if err != nil || st.Status != dps.StatusAssigned || st.AssignedHub != "floor-hub.example" {
			t.Fatalf("%s: %+v, %v", tr, st, err)
		}
	}
	cpu, err := p.Close()
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
	if cpu <= 0 {
		t.Errorf("floor CPU %v, want the child's time", cpu)
	}
	// Signal 0 checks whether the process still exists.
	if err := syscall.Kill(p.PID(), 0); err == nil {
		t.Errorf("floor process %d still runs after Close", p.PID())
	}
	if _, err := net.DialTimeout("tcp", p.HTTPSAddr(), time.Second); err == nil {
		t.Errorf("floor still listens on %s after Close", p.HTTPSAddr())
	}
}

// TestServeProcessBadInput: a child given no options or broken ones says
// so rather than serving.
func TestServeProcessBadInput(t *testing.T) {
	for _, in := range []string{"", "{not json\n", `{"certPEM":"x","keyPEM":"y"}` + "\n"} {
		var out bytes.Buffer
		if err := ServeProcess(strings.NewReader(in), &out); err == nil || out.Len() != 0 {
			t.Errorf("input %q: err %v, output %q; want an error and no address line", in, err, out.String())
		}
	}
}
