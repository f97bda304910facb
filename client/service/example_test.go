package service_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/server"
)

// startDPSD runs a dpsd node in this process, on a port of its own, for
// the examples to talk to; a real program is given the service connection
// string and the CA certificate instead ("dpsd info" prints both).
func startDPSD() (info *server.Info, stop func()) {
	dir, err := os.MkdirTemp("", "dpsd-example-")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Start(ctx, server.Config{
		DataDir: dir, HostName: "localhost", HTTPSAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	return s.Info(), func() {
		cancel()
		<-done
		os.RemoveAll(dir)
	}
}

func ExampleClient_CreateEnrollmentGroup() {
	info, stop := startDPSD()
	defer stop()

	c, err := service.New(info.ServiceConnectionString, service.WithCAFile(info.CACertFile))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	// Without keys, the service generates them, as Azure does.
	g, err := c.CreateEnrollmentGroup(ctx, &dps.EnrollmentGroup{
		EnrollmentGroupID: "thermostats",
		Attestation:       &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(g.EnrollmentGroupID, g.Attestation.Type, g.Attestation.SymmetricKey.PrimaryKey != "")

	// Output: thermostats symmetricKey true
}

func ExampleClient_QueryEnrollments() {
	info, stop := startDPSD()
	defer stop()

	c, err := service.New(info.ServiceConnectionString, service.WithCAFile(info.CACertFile))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for _, id := range []string{"sensor-1", "sensor-2", "sensor-3"} {
		_, err := c.CreateEnrollment(ctx, &dps.IndividualEnrollment{
			RegistrationID: id,
			Attestation:    &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	// Page through every enrollment, two at a time.
	opts := service.QueryOptions{PageSize: 2}
	for {
		page, err := c.QueryEnrollments(ctx, opts)
		if err != nil {
			log.Fatal(err)
		}
		for _, e := range page.Items {
			fmt.Println(e.RegistrationID)
		}
		if page.Continuation == "" {
			break
		}
		opts.Continuation = page.Continuation
	}

	// Output:
	// sensor-1
	// sensor-2
	// sensor-3
}

func ExampleClient_GetRegistration() {
	info, stop := startDPSD()
	defer stop()

	c, err := service.New(info.ServiceConnectionString, service.WithCAFile(info.CACertFile))
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.GetRegistration(context.Background(), "never-registered")
	// Errors the service answers wrap a *dps.Error, with Azure's code.
	var de *dps.Error
	if errors.As(err, &de) {
		fmt.Println(de.ErrorCode, de.Status())
	}

	// Output: 404202 404
}
