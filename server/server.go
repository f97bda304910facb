package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dpsd/dpsd/audit"
	"github.com/dpsd/dpsd/certs"
	"github.com/dpsd/dpsd/deviceapi"
	"github.com/dpsd/dpsd/hub"
	"github.com/dpsd/dpsd/instance"
	amqptransport "github.com/dpsd/dpsd/internal/transport/amqp"
	"github.com/dpsd/dpsd/iothub"
	"github.com/dpsd/dpsd/linkedhub"
	"github.com/dpsd/dpsd/localca"
	"github.com/dpsd/dpsd/metrics"
	"github.com/dpsd/dpsd/mqttdps"
	"github.com/dpsd/dpsd/mqttws"
	"github.com/dpsd/dpsd/provision"
	"github.com/dpsd/dpsd/serviceapi"
	"github.com/dpsd/dpsd/store"
)

// Config is how a dpsd node is run.
type Config struct {
	DataDir   string
	HostName  string // the name clients use; goes into certificates and connection strings
	HTTPSAddr string // device API, service API and MQTT over WebSockets
	MQTTAddr  string // MQTT over TLS
	AMQPAddr  string // AMQP 1.0 over TLS
	// Store is "sqlite" (or empty) for the embedded database in DataDir,
	// or a postgres:// URL shared by several nodes.
	Store string
	// TLSCertFile and TLSKeyFile, when both set, replace the local CA's
	// server certificate.
	TLSCertFile, TLSKeyFile string
	Logger                  *slog.Logger
	// AllocationPolicy is the instance's default policy for enrollments
	// that set none: hashed (default), geoLatency or static.
	AllocationPolicy string
	// GeoNetworks maps device networks to hub locations for geoLatency
	// (see allocate.ParseNetworkMap).
	GeoNetworks string
	// WebhookCAFiles are PEM files of CAs trusted, beside the system
	// roots, for HTTPS custom allocation webhooks.
	WebhookCAFiles []string
	// DebugAddr, when set, serves /debug/pprof and the Prometheus
	// /metrics on a plain-HTTP listener; keep it on a loopback address.
	DebugAddr string
	// PollFirst answers every register with "assigning" and lets the device
	// poll for the result (see provision.Options.PollFirst).
	PollFirst bool
	// Banner receives the human-readable start-up summary; nil for none.
	Banner io.Writer
}

// Server is a running dpsd node.
type Server struct {
	cfg    Config
	log    *slog.Logger
	st     store.Store
	inst   *instance.Instance
	engine *provision.Engine
	prom   *metrics.Metrics
	svc    http.Handler
	dev    *deviceapi.Handler
	mqtt   *mqttdps.Server
	amqp   *amqptransport.Server
	hubs   *iothub.Manager
	linked *linkedhub.Registry
	alog   *audit.Log
	auth   *serviceapi.Authorizer
	ca     *localca.CA
	https  *http.Server
	httpsL net.Listener
	mqttL  net.Listener
	amqpL  net.Listener
	info   *Info
	lock   *os.File // flock on the data directory
	// onChange drops the caches a change of a record makes stale; see
	// notifyingStore and followChanges.
	onChange func(kind store.Kind, id string, deleted bool)
}

// Start opens the store, prepares TLS and binds the listeners; Serve then
// serves until its context ends. Splitting the two lets callers report bind
// errors before anything else happens.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HostName == "" {
		cfg.HostName = "localhost"
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s.lock = lock

	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s.st = st
	if s.inst, err = instance.LoadOrCreate(ctx, st); err != nil {
		return nil, err
	}

	tlsCfg, caFile, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	if s.httpsL, err = listen(cfg.HTTPSAddr, "--https-addr", "127.0.0.1:8443"); err != nil {
		return nil, err
	}
	if s.mqttL, err = listen(cfg.MQTTAddr, "--mqtt-addr", "127.0.0.1:8883"); err != nil {
		return nil, err
	}
	if s.amqpL, err = listen(cfg.AMQPAddr, "--amqp-addr", "127.0.0.1:5671"); err != nil {
		return nil, err
	}

	s.auth = serviceapi.NewAuthorizer(s.inst, s.serviceHostNames(), nil)
	// The service API and the linked-hub endpoints write through svcStore,
	// which tells the engine's caches about changes made on this node;
	// Serve has the store tell them about other nodes' changes too.
	hubList := newHubListCache(func() *linkedhub.Registry { return s.linked })
	s.onChange = func(kind store.Kind, id string, deleted bool) {
		switch {
		case kind == store.KindEnrollmentGroup:
			s.engine.InvalidateEnrollments()
		case kind == linkedhub.Kind:
			hubList.Invalidate()
		case kind == store.KindRegistration && deleted:
			if err := s.alog.Delete(context.WithoutCancel(ctx), id); err != nil {
				s.log.Warn("deleting allocation log", "registrationId", id, "err", err)
			}
		}
	}
	svcStore := &notifyingStore{Store: st, onChange: s.onChange}
	s.hubs, err = iothub.NewManager(st, iothub.Options{
		Logger:      s.log,
		Certificate: s.ca.ServerCertificate,
		Authorize:   func(r *http.Request) error { return s.auth.Authorize(r, instance.RightServiceConfig) },
	})
	if err != nil {
		return nil, fmt.Errorf("built-in hubs: %w", err)
	}
	if err := s.hubs.Start(ctx); err != nil {
		return nil, fmt.Errorf("built-in hubs: %w", err)
	}
	s.linked = linkedhub.New(svcStore)
	s.alog = audit.New(st, audit.Options{Logger: s.log})
	alloc, err := newAllocator(cfg, hubList, s.alog, s.log)
	if err != nil {
		return nil, err
	}
	registrar := hub.NewRegistrar(hub.RegistrarOptions{Credentials: s.linked, Local: s.hubs, Logger: s.log})
	s.engine = provision.New(st, provision.Options{
		IDScope:   s.inst.IDScope,
		Logger:    s.log,
		PollFirst: cfg.PollFirst,
		Allocator: alloc,
		Registrar: registrar,
	})
	// Both device transports see the engine through the metrics
	// decorator, so every device request is counted the same way.
	s.prom = metrics.New()
	prov := s.prom.Provisioner(s.engine)
	s.dev = deviceapi.New(prov, s.log)
	s.svc = s.prom.InstrumentService(serviceapi.New(svcStore, s.inst, serviceapi.Options{Logger: s.log, HostNames: s.serviceHostNames()}))
	s.mqtt, err = mqttdps.New(prov, mqttdps.Options{Logger: s.log, TLSConfig: tlsCfg})
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	if s.amqp, err = amqptransport.New(prov, amqptransport.Options{Logger: s.log, TLSConfig: tlsCfg}); err != nil {
		return nil, fmt.Errorf("amqp: %w", err)
	}
	s.https = &http.Server{
		Handler:           http.HandlerFunc(s.route),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}

	s.info = &Info{
		IDScope:                 s.inst.IDScope,
		ServiceConnectionString: s.inst.ServiceConnectionString(hostPort(cfg.HostName, s.httpsL.Addr(), "443")),
		CACertFile:              caFile,
		HTTPSEndpoint:           "https://" + hostPort(cfg.HostName, s.httpsL.Addr(), "443"),
		MQTTEndpoint:            "mqtts://" + hostPort(cfg.HostName, s.mqttL.Addr(), ""),
		AMQPEndpoint:            "amqps://" + hostPort(cfg.HostName, s.amqpL.Addr(), "5671"),
		HostName:                cfg.HostName,
		HTTPSAddr:               s.httpsL.Addr().String(),
		MQTTAddr:                s.mqttL.Addr().String(),
		AMQPAddr:                s.amqpL.Addr().String(),
	}
	if err := WriteInfo(cfg.DataDir, s.info); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// Info returns what clients need to reach this node.
func (s *Server) Info() *Info { return s.info }

// Serve serves until ctx ends, then shuts down gracefully: listeners close,
// requests and registrations in flight finish (bounded), the store closes.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 3)
	go func() { errc <- s.https.Serve(tls.NewListener(s.httpsL, s.https.TLSConfig)) }()
	go func() { errc <- s.mqtt.Serve(s.mqttL) }()
	go func() { errc <- s.amqp.Serve(s.amqpL) }()
	if s.cfg.DebugAddr != "" {
		dbg := &http.Server{Addr: s.cfg.DebugAddr, Handler: debugHandler(s.prom.Handler()), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := dbg.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("debug listener", "addr", s.cfg.DebugAddr, "err", err)
			}
		}()
		defer dbg.Close()
	}
	stopFollowing := s.followChanges(ctx)
	if s.cfg.Banner != nil {
		s.printBanner(s.cfg.Banner)
	}
	s.log.Info("dpsd serving", "idScope", s.inst.IDScope, "https", s.info.HTTPSAddr, "mqtt", s.info.MQTTAddr, "amqp", s.info.AMQPAddr)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.log.Info("dpsd shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.https.Shutdown(sctx); err != nil {
		s.log.Warn("https shutdown", "err", err)
	}
	if err := s.mqtt.Close(sctx); err != nil {
		s.log.Warn("mqtt shutdown", "err", err)
	}
	if err := s.amqp.Close(sctx); err != nil {
		s.log.Warn("amqp shutdown", "err", err)
	}
	if err := s.engine.Close(sctx); err != nil {
		s.log.Warn("registrations still running at shutdown", "err", err)
	}
	s.closeHubs(sctx)
	stopFollowing()
	s.closeAll()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, net.ErrClosed) {
		return serveErr
	}
	return nil
}

// followChanges starts following the changes other nodes make, when the
// store is shared (store.Notifier), and returns the function that stops
// it and waits until it has.
func (s *Server) followChanges(ctx context.Context) (stop func()) {
	n, ok := s.st.(store.Notifier)
	if !ok {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		followChanges(ctx, n, s.onChange, s.log)
	}()
	return func() {
		cancel()
		<-done
	}
}

// closeHubs stops the built-in hubs, once.
func (s *Server) closeHubs(ctx context.Context) {
	if s.hubs == nil {
		return
	}
	if err := s.hubs.Close(ctx); err != nil {
		s.log.Warn("built-in hubs shutdown", "err", err)
	}
	s.hubs = nil
}

func (s *Server) closeAll() {
	defer func() {
		if s.lock != nil {
			s.lock.Close() // releases the flock
			s.lock = nil
		}
	}()
	if s.httpsL != nil {
		s.httpsL.Close()
	}
	if s.mqttL != nil {
		s.mqttL.Close()
	}
	if s.amqpL != nil {
		s.amqpL.Close()
	}
	// After a failed Start the hubs may already listen.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.closeHubs(ctx)
	if s.st != nil {
		if err := s.st.Close(); err != nil {
			s.log.Warn("closing store", "err", err)
		}
		s.st = nil
	}
}

// route sends a request to the API it belongs to. Azure serves the device
// and service APIs on different host names; dpsd serves both on one
// listener and tells them apart by path, which never overlap.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if mqttdps.IsWebSocketUpgrade(r) {
		// One WebSocket endpoint for MQTT and AMQP, told apart by the
		// subprotocol the client offers.
		if mqttws.Offers(r, amqptransport.WebSocketSubprotocol) {
			s.amqp.WebSocketHandler().ServeHTTP(w, r)
			return
		}
		s.mqtt.WebSocketHandler().ServeHTTP(w, r)
		return
	}
	path := r.URL.EscapedPath()
	first, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch strings.ToLower(first) {
	case "enrollments", "enrollmentgroups", "registrations":
		s.svc.ServeHTTP(w, r)
		return
	case "dpsd":
		if h := s.extension(path); h != nil {
			h.ServeHTTP(w, r)
			return
		}
	case "healthz":
		s.healthz(w, r)
		return
	}
	// Everything else is the device API's, which answers 404 for what is
	// not one of its paths.
	s.dev.ServeHTTP(w, r)
}

// extension returns the handler of a dpsd extension endpoint (built-in
// hubs, linked hubs, CA certificates, allocation logs), all under /dpsd/ and authorized with
// the service API's tokens; nil when path is none of them.
func (s *Server) extension(path string) http.Handler {
	segs := strings.Split(strings.ToLower(strings.Trim(path, "/")), "/")
	if len(segs) < 2 {
		return nil
	}
	authorize := func(right instance.Right) func(*http.Request) error {
		return func(r *http.Request) error { return s.auth.Authorize(r, right) }
	}
	switch {
	case segs[1] == "hubs":
		return s.hubs.Handler()
	case segs[1] == "certificates":
		return certs.New(s.st, nil).Handler(certs.HandlerOptions{Authorize: authorize(instance.RightServiceConfig), Logger: s.log})
	case segs[1] == "linkedhubs":
		return s.linked.Handler(linkedhub.HandlerOptions{Authorize: authorize(instance.RightServiceConfig), Logger: s.log})
	case segs[1] == "registrations" && len(segs) == 4 && segs[3] == "allocationlog":
		return s.alog.Handler(audit.HandlerOptions{Authorize: authorize(instance.RightRegistrationStatusRead), Logger: s.log})
	}
	return nil
}

func (s *Server) tlsConfig() (*tls.Config, string, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12, // the Python SDK pins TLS 1.2
		// Devices that attest with certificates present them; others
		// present none, so ask but do not require, and verify per
		// enrollment in the engine.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"http/1.1"},
	}
	// The local CA also issues the built-in hubs' certificates, so it
	// exists even when the service itself uses a configured certificate.
	ca, err := localca.LoadOrCreate(filepath.Join(s.cfg.DataDir, "tls"))
	if err != nil {
		return nil, "", err
	}
	s.ca = ca
	if s.cfg.TLSCertFile != "" || s.cfg.TLSKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
		if err != nil {
			return nil, "", fmt.Errorf("TLS certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		return cfg, "", nil
	}
	names := []string{s.cfg.HostName, "localhost", "127.0.0.1"}
	for _, a := range []string{s.cfg.HTTPSAddr, s.cfg.MQTTAddr, s.cfg.AMQPAddr} {
		if h, _, err := net.SplitHostPort(a); err == nil && net.ParseIP(h) != nil && !net.ParseIP(h).IsUnspecified() {
			names = append(names, h)
		}
	}
	cert, err := ca.ServerCertificate("server", names)
	if err != nil {
		return nil, "", err
	}
	cfg.Certificates = []tls.Certificate{cert}
	abs, err := filepath.Abs(ca.CertFile())
	if err != nil {
		abs = ca.CertFile()
	}
	return cfg, abs, nil
}

// serviceHostNames are the SAS audiences the service API accepts: the
// configured host name, with and without the port, and the loopback names.
func (s *Server) serviceHostNames() []string {
	names := []string{s.cfg.HostName, "localhost", "127.0.0.1"}
	_, port, _ := net.SplitHostPort(s.httpsL.Addr().String())
	for _, n := range names[:3] {
		names = append(names, net.JoinHostPort(n, port))
	}
	if h, _, err := net.SplitHostPort(s.cfg.HTTPSAddr); err == nil && h != "" {
		names = append(names, h, net.JoinHostPort(h, port))
	}
	return names
}

// hostPort joins the public host name with the port a listener got,
// leaving the port out when it is the protocol's default.
func hostPort(host string, addr net.Addr, defaultPort string) string {
	_, port, _ := net.SplitHostPort(addr.String())
	if port == defaultPort {
		return host
	}
	return net.JoinHostPort(host, port)
}

func listen(addr, flag, suggestion string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		return l, nil
	}
	switch {
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("cannot listen on %s: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE); try %s %s", addr, flag, suggestion)
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("cannot listen on %s: the address is already in use; try another, e.g. %s %s", addr, flag, suggestion)
	}
	return nil, fmt.Errorf("cannot listen on %s: %w (set %s)", addr, err, flag)
}

func (s *Server) printBanner(w io.Writer) {
	i := s.info
	fmt.Fprintf(w, `dpsd is ready
  ID scope:                    %s
  Service connection string:   %s
  CA certificate:              %s
  Device + service API:        %s   (HTTPS, MQTT and AMQP over WebSockets)
  Device API over MQTT:        %s
  Device API over AMQP:        %s
Clients must trust the CA certificate, e.g. NODE_EXTRA_CA_CERTS=%s
`, i.IDScope, i.ServiceConnectionString, orNone(i.CACertFile), i.HTTPSEndpoint, i.MQTTEndpoint, i.AMQPEndpoint, orNone(i.CACertFile))
}

func orNone(s string) string {
	if s == "" {
		return "(configured certificate)"
	}
	return s
}
