package floor

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/internal/localca"
)

// TestFloorAnswersLikeDPSD registers a device of the floor's group over
// every transport with dpsd's device client and checks that it is
// assigned, and that a wrong key is refused as dpsd refuses it.
func TestFloorAnswersLikeDPSD(t *testing.T) {
	const host = "floor.test"
	ca, err := localca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate("server", []string{host})
	if err != nil {
		t.Fatal(err)
	}
	groupKey := []byte("0123456789abcdef0123456789abcdef")
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
