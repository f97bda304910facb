package device_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
)

// The examples below need a provisioning service with an enrollment for the
// device and a linked hub, so they are compiled but not run; test/e2e runs
// the same calls against a real dpsd.

// A member of a symmetric-key enrollment group registers over HTTPS with a
// key derived from the group key.
func ExampleRegister() {
	ca, err := os.ReadFile("dpsd-data/tls/ca.pem") // dpsd's CA certificate
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)

	state, err := device.Register(context.Background(), device.Config{
		ProvisioningHost: "127.0.0.2",
		IDScope:          "0ne1A2B3C4D",
		RegistrationID:   "thermostat-001",
		GroupKey:         os.Getenv("GROUP_KEY"), // or SymmetricKey: the derived key
		Payload:          []byte(`{"firmware":"1.0.2"}`),
		Transport:        device.TransportHTTPS,
		RootCAs:          roots,
		Timeout:          time.Minute,
	})
	var de *device.Error
	switch {
	case errors.As(err, &de):
		log.Fatalf("the service refused the registration: %v", de)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Printf("connect to %s as %s\n", state.AssignedHub, state.DeviceID)
}

// A device with an X.509 certificate registers over MQTT: its registration
// id is the certificate's subject common name.
func ExampleRegister_x509() {
	cert, err := tls.LoadX509KeyPair("certs/sensor-001-full-chain.cert.pem", "certs/sensor-001.key.pem")
	if err != nil {
		log.Fatal(err)
	}
	state, err := device.Register(context.Background(), device.Config{
		ProvisioningHost: "127.0.0.2",
		IDScope:          "0ne1A2B3C4D",
		RegistrationID:   "sensor-001",
		Certificate:      &cert,
		Transport:        device.TransportMQTT,
		// Progress sees every step, as the Azure SDK samples print them.
		Progress: func(e device.Event) { log.Println(e.Kind) },
	})
	if err != nil {
		log.Fatal(err)
	}
	if state.Status == dps.StatusAssigned {
		fmt.Println("assigned to", state.AssignedHub)
	}
}
