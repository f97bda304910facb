// Command contoso-allocator is the custom allocation webhook of the Azure
// "custom allocation policy" tutorial, written in Go so dpsd's walk-through
// needs nothing else:
//
//   - a registration id containing "-contoso-tstrsd-007" goes to the linked
//     hub whose name contains "-toasters-", with initial twin tags
//     {"deviceType":"toaster"} and desired properties
//     {"state":"ready","darknessSetting":"medium"};
//   - one containing "-contoso-hpsd-088" goes to the hub containing
//     "-heatpumps-", with tags {"deviceType":"heatpump"} and desired
//     {"state":"on","temperatureSetting":"65"};
//   - anything else is answered 400 "Unrecognized device registration.", as
//     are requests without a registration id, without linked hubs, or with
//     no matching hub.
//
// Every request and answer is logged. Run it with
//
//	go run ./examples/contoso-allocator --addr 127.0.0.1:8090
//
// and give the enrollment group the webhook URL http://127.0.0.1:8090/api/allocate
// (any path works). With --code KEY the webhook also demands ?code=KEY, like
// an Azure Function with function-level authorization, and answers 401
// without it. With --secret (or CONTOSO_WEBHOOK_SECRET) it verifies dpsd's
// request signature, printed by "dpsd webhook-secret show --show-secrets",
// and answers 401 to a request not signed with it (signature.go shows how);
// during a secret rotation give both, comma-separated.
//
// Mutual TLS: with --tls-cert, --tls-key and --client-ca pointing at dpsd's
// CA certificate (tls/ca.pem in dpsd's data directory; with several nodes,
// each node's, concatenated), the webhook accepts only TLS clients
// presenting a certificate issued by that CA, which "dpsd serve
// --webhook-client-cert" does; --client-cn ID_SCOPE also checks that its
// common name is the instance's ID scope, and answers 401 otherwise.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "contoso-allocator:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("contoso-allocator", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8090", "address to listen on")
	code := fs.String("code", "", "require this function key as the ?code= query parameter (answer 401 otherwise)")
	secret := fs.String("secret", os.Getenv("CONTOSO_WEBHOOK_SECRET"), "dpsd's webhook signing secret(s), comma-separated: answer 401 to requests not signed with one (env CONTOSO_WEBHOOK_SECRET)")
	certFile := fs.String("tls-cert", "", "serve HTTPS with this PEM certificate (with --tls-key)")
	keyFile := fs.String("tls-key", "", "PEM private key of --tls-cert")
	clientCA := fs.String("client-ca", "", "require a TLS client certificate issued by the CA in this PEM file (dpsd's tls/ca.pem); needs --tls-cert")
	clientCN := fs.String("client-cn", "", "with --client-ca, accept only the client certificate with this common name (dpsd's ID scope)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*certFile == "") != (*keyFile == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if (*clientCA != "" || *clientCN != "") && (*certFile == "" || *clientCA == "") {
		return errors.New("--client-ca needs --tls-cert, and --client-cn needs --client-ca")
	}
	tlsCfg, err := clientAuth(*clientCA)
	if err != nil {
		return err
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           &allocator{log: log, code: *code, secrets: splitSecrets(*secret), clientCN: *clientCN},
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         tlsCfg,
	}
	scheme := "http"
	if *certFile != "" {
		scheme = "https"
	}
	log.Info("contoso allocation webhook listening", "url", scheme+"://"+l.Addr().String()+"/api/allocate")

	errc := make(chan error, 1)
	go func() {
		if *certFile != "" {
			errc <- srv.ServeTLS(l, *certFile, *keyFile)
		} else {
			errc <- srv.Serve(l)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// clientAuth is the TLS configuration that requires client certificates
// from the CA in caFile, or nil without one.
func clientAuth(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--client-ca: no PEM certificate in %s", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}, nil
}

func splitSecrets(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
