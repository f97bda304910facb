package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/console"
	"github.com/dpsd/dpsd/internal/deadline"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/hubhealth"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/issuer"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/metrics"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/refusal"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/throttle"
	"github.com/dpsd/dpsd/internal/tlsmux"
	amqptransport "github.com/dpsd/dpsd/internal/transport/amqp"
	"github.com/dpsd/dpsd/internal/transport/https"
	"github.com/dpsd/dpsd/internal/transport/mqtt"
	"github.com/dpsd/dpsd/internal/transport/serviceapi"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
	"github.com/dpsd/dpsd/internal/webhooksig"
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
	// WebhookTargets decides where custom allocation webhooks may be
	// called (see allocate.ParseTargets): "" or "local" refuses
	// link-local and cloud metadata addresses and the node's own
	// listeners; "public" refuses loopback and private addresses too; a
	// list of CIDRs and host names allows only those.
	WebhookTargets string
	// WebhookClientCert makes the node present a TLS client certificate
	// issued by its local CA (common name: the ID scope) to HTTPS
	// webhooks that ask for one, for webhooks that authenticate dpsd by
	// mutual TLS.
	WebhookClientCert bool
	// WebhookMaxConcurrent and WebhookMaxConcurrentPerGroup bound the
	// webhook calls in flight, on the node and per enrollment group; zero
	// means allocate's defaults.
	WebhookMaxConcurrent, WebhookMaxConcurrentPerGroup int
	// HubHealthInterval is how often the node checks every linked hub
	// (see hubhealth); zero means hubhealth.DefaultInterval, a negative
	// value no checks (every hub then counts as healthy).
	// HubHealthTimeout bounds one check and HubHealthFailures is how many
	// failed checks in a row make a hub unhealthy; zero means hubhealth's
	// defaults.
	HubHealthInterval, HubHealthTimeout time.Duration
	HubHealthFailures                   int
	// AllocateToUnhealthyHubs keeps unhealthy hubs among the candidates of
	// hashed and geoLatency allocation; by default they are skipped while
	// another candidate is healthy.
	AllocateToUnhealthyHubs bool
	// DebugAddr, when set, serves /debug/pprof and the Prometheus
	// /metrics on a plain-HTTP listener; keep it on a loopback address.
	DebugAddr string
	// PollFirst answers every register with "assigning" and lets the device
	// poll for the result (see provision.Options.PollFirst).
	PollFirst bool
	// IssuedCertValidity is how long certificates issued from a device's
	// csr last; zero means 30 days. CSRMinRSABits is the smallest RSA key
	// a csr may hold; zero means 2048.
	IssuedCertValidity time.Duration
	CSRMinRSABits      int
	// DoctorInterval, when set, runs the consistency check (dpsd doctor)
	// that often; DoctorRepair lets it repair what it finds (never
	// pruning orphans, which needs an operator's word).
	DoctorInterval time.Duration
	DoctorRepair   bool
	// HubEventHubPartitions is the partition count of each built-in hub's
	// Event Hubs-compatible endpoint; zero means 4.
	HubEventHubPartitions int
	// Banner receives the human-readable start-up summary; nil for none.
	Banner io.Writer
	// MaxConns and MaxConnsPerSource cap the connections the node holds
	// open, in total and per source address, across its listeners and
	// those of its built-in hubs; zero means connlimit's defaults, a
	// negative value no cap.
	MaxConns, MaxConnsPerSource int
	// HubTelemetryMessages, HubTelemetryBytes and HubTelemetryMaxAge bound
	// the telemetry each built-in hub keeps (for dpsd hub messages,
	// monitor-events and the consoles): zero means 1000 messages, 64 MiB
	// and no age limit.
	HubTelemetryMessages int
	HubTelemetryBytes    int
	HubTelemetryMaxAge   time.Duration
	// ThrottleRegister, ThrottleLookup and ThrottlePerSource are the
	// device request rates (per second) allowed per registration id for
	// registers, per registration id for status lookups, and per source
	// address for every device request; zero means throttle's defaults, a
	// negative value no limit.
	ThrottleRegister, ThrottleLookup, ThrottlePerSource float64
	// BodyTimeout bounds the reading of a request body on the HTTPS
	// listener, from the end of its headers; zero means DefaultBodyTimeout.
	BodyTimeout time.Duration
	// ShutdownGrace bounds how long shutdown waits for registrations still
	// allocating (a slow webhook) while the listeners keep answering polls;
	// what is left then goes to the recovery path (provision.Engine.Close).
	// Zero means DefaultShutdownGrace, a negative value no wait.
	ShutdownGrace time.Duration
}

// DefaultShutdownGrace is Config.ShutdownGrace's default: long enough for a
// webhook that answers within Azure's 30 s timeout of one attempt, well
// inside systemd's 90 s stop timeout.
const DefaultShutdownGrace = 30 * time.Second

// DefaultBodyTimeout is Config.BodyTimeout's default. Device requests are
// a few KiB and service API bodies (bulk enrollment) at most a few MiB.
const DefaultBodyTimeout = 30 * time.Second

// Server is a running dpsd node.
type Server struct {
	cfg    Config
	log    *slog.Logger
	st     store.Store
	inst   *instance.Instance
	engine *provision.Engine
	doctor *doctor
	prom   *metrics.Metrics
	svc    http.Handler
	dev    *https.Handler
	mqtt   *mqtt.Server
	amqp   *amqptransport.Server
	hubs   *builtinhub.Manager
	// hubRouter is hubs, kept after shutdown clears hubs, for requests
	// still being routed.
	hubRouter *builtinhub.Manager
	linked    *linkedhub.Registry
	alog      *alloclog.Log
	// policies are the in-process allocation policies, read by the
	// allocator and written through /dpsd/allocationPolicies.
	policies *allocpolicy.Registry
	// signing keeps the secret webhook requests are signed with.
	signing *webhooksig.Keeper
	alloc   *allocate.Allocator
	// registrar puts devices into their hubs, and checks hubs and keys.
	registrar *hub.Registrar
	// health checks the linked hubs; nil when checks are off.
	health *hubhealth.Checker
	// refusals keeps the device requests this node refused lately.
	refusals *refusal.Log
	auth     *serviceapi.Authorizer
	web      *console.Console
	ca       *localca.CA
	// issuers are the CAs that issue certificates for devices' csrs: the
	// local CA, and those operators add through /dpsd/issuingCAs.
	issuers *issuer.Registry
	https   *http.Server
	httpsL  net.Listener
	mqttL   net.Listener
	amqpL   net.Listener
	conns   *connlimit.Limiter
	info    *Info
	// created says this start created the instance, and with it the
	// owner key: the only start whose banner shows the key.
	created bool
	lock    *os.File // flock on the data directory
	// effects are what writes cause besides themselves; see
	// notifyingStore and followChanges.
	effects *effects
}

// Start validates cfg, then opens the node in stages: the data directory
// and store (open), TLS and the listeners (listen), the engine, the
// transports and the extension endpoints (build), and info.json
// (writeInfo). Serve then serves until its context ends. Splitting the two
// lets callers report configuration and bind errors before anything is
// served; a failed stage closes what the earlier ones opened.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()
	if err := s.open(ctx); err != nil {
		return nil, err
	}
	tlsCfg, caFile, err := s.listen()
	if err != nil {
		return nil, err
	}
	if err := s.build(ctx, tlsCfg); err != nil {
		return nil, err
	}
	if err := s.writeInfo(caFile); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// open takes the data directory (created if need be, and locked) and opens
// the store and the instance identity it holds.
func (s *Server) open(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// The files inside are the owner's only, but a directory others may
	// list or enter is a mistake worth saying (one made before dpsd ran,
	// since MkdirAll leaves an existing directory as it is).
	if st, err := os.Stat(s.cfg.DataDir); err == nil && runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		s.log.Warn("the data directory is open to other users; it holds every key", "dir", s.cfg.DataDir,
			"mode", fmt.Sprintf("%#o", st.Mode().Perm()), "fix", "chmod 700 "+s.cfg.DataDir)
	}
	lock, err := lockDataDir(s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.lock = lock
	if s.st, err = openStore(ctx, s.cfg); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	if _, err := instance.Load(ctx, s.st); errors.Is(err, store.ErrNotFound) {
		s.created = true
	}
	if s.inst, err = instance.LoadOrCreate(ctx, s.st); err != nil {
		return err
	}
	return nil
}

// listen prepares TLS (the local CA, and the server certificate) and binds
// both listeners. It returns the TLS configuration and the CA file clients
// must trust, empty when the configured certificate is used.
func (s *Server) listen() (*tls.Config, string, error) {
	tlsCfg, caFile, err := s.tlsConfig()
	if err != nil {
		return nil, "", err
	}
	if s.httpsL, err = listen(s.cfg.HTTPSAddr, "--https-addr", "127.0.0.1:8443"); err != nil {
		return nil, "", err
	}
	if s.mqttL, err = listen(s.cfg.MQTTAddr, "--mqtt-addr", "127.0.0.1:8883"); err != nil {
		return nil, "", err
	}
	if s.amqpL, err = listen(s.cfg.AMQPAddr, "--amqp-addr", "127.0.0.1:5671"); err != nil {
		return nil, "", err
	}
	// Connections over a cap are closed as they are accepted, before any
	// TLS work is spent on them.
	s.conns = connlimit.New(s.cfg.MaxConns, s.cfg.MaxConnsPerSource, s.log)
	s.httpsL = s.conns.Listener(s.httpsL, "https")
	s.mqttL = s.conns.Listener(s.mqttL, "mqtt")
	s.amqpL = s.conns.Listener(s.amqpL, "amqp")
	return tlsCfg, caFile, nil
}

// build makes the node's parts, each from parts made before it: the
// allocation log, the list of linked hubs allocation reads, the allocator,
// the built-in hubs and the registrar, the engine, then what writes
// through the service API and the extension endpoints (whose effects on
// the engine's caches are written out in effects), and the transports.
func (s *Server) build(ctx context.Context, tlsCfg *tls.Config) error {
	st, cfg := s.st, s.cfg
	// First: the allocator reports its webhook calls to it.
	s.prom = metrics.New()
	s.auth = serviceapi.NewAuthorizer(s.inst, s.serviceHostNames(), nil)
	s.alog = alloclog.New(st, alloclog.Options{Logger: s.log})
	// Reads of linked hubs need no notification, so they go to the store
	// itself; writes go through the API's registry below.
	readLinked := linkedhub.New(st)
	hubList := newHubListCache(readLinked)
	s.policies = allocpolicy.New(st, 0)
	s.signing = webhooksig.NewKeeper(st, nil)
	// The secret exists from the first start, so it can be given to
	// webhooks before the first device registers.
	if _, err := s.signing.Get(ctx, false); err != nil {
		return fmt.Errorf("webhook signing secret: %w", err)
	}
	// The checks go through the registrar, made below with the built-in
	// hubs: what a check exercises is what registrations will use.
	var registrar *hub.Registrar
	if cfg.HubHealthInterval >= 0 {
		var err error
		s.health, err = hubhealth.New(hubhealth.Options{
			Hubs:     hubList,
			Probe:    func(ctx context.Context, host string) error { return registrar.Probe(ctx, host) },
			Interval: cfg.HubHealthInterval,
			Timeout:  cfg.HubHealthTimeout,
			Failures: cfg.HubHealthFailures,
			Logger:   s.log,
		})
		if err != nil {
			return err
		}
	}
	alloc, err := newAllocator(cfg, hubList, s.alog, s.policies, s.signing, s.health, s.prom, s.webhookClientCert(), s.log, []net.Addr{s.httpsL.Addr(), s.mqttL.Addr(), s.amqpL.Addr()})
	if err != nil {
		return err
	}
	s.alloc = alloc
	s.hubs, err = builtinhub.NewManager(st, builtinhub.Options{
		Logger:      s.log,
		Certificate: s.ca.ServerCertificate,
		Authorize:   func(r *http.Request) error { return s.auth.Authorize(r, instance.RightServiceConfig) },
		Listener:    s.conns.Listener,
		Shared:      s.sharedHubEndpoint(),

		MessageBuffer:      s.cfg.HubTelemetryMessages,
		MessageBufferBytes: s.cfg.HubTelemetryBytes,
		MessageMaxAge:      s.cfg.HubTelemetryMaxAge,
		OnDelete:           s.unlinkDeletedHub,
		EventHubPartitions: cfg.HubEventHubPartitions,
	})
	if err != nil {
		return fmt.Errorf("built-in hubs: %w", err)
	}
	s.hubRouter = s.hubs
	s.shareListeners(tlsCfg)
	if err := s.hubs.Start(ctx); err != nil {
		return fmt.Errorf("built-in hubs: %w", err)
	}
	registrar = hub.NewRegistrar(hub.RegistrarOptions{Credentials: readLinked, Local: s.hubs, Logger: s.log})
	s.registrar = registrar
	node, err := nodeName(cfg.DataDir)
	if err != nil {
		return err
	}
	s.engine = provision.New(st, provision.Options{
		IDScope:         s.inst.IDScope,
		Logger:          s.log,
		PollFirst:       cfg.PollFirst,
		DeviceKeySecret: deviceKeySecret(s.inst),
		Allocator:       alloc,
		Registrar:       registrar,
		Node:            node,
		Authorities:     s.issuers,
		Issuance:        issuer.Policy{Validity: cfg.IssuedCertValidity, MinRSABits: cfg.CSRMinRSABits},
	})
	s.doctor = &doctor{s: s}
	// The service API and the linked-hub endpoints write through svcStore,
	// so that their writes have their effects on this node at once; Serve
	// has the store tell the same effects about other nodes' writes.
	s.effects = &effects{engine: s.engine, hubList: hubList, alog: s.alog, log: s.log}
	svcStore := &notifyingStore{Store: st, effects: s.effects}
	s.linked = linkedhub.New(svcStore)

	// Both device transports see the engine through the metrics
	// decorator, so every device request is counted the same way.
	s.doctor.register(s.prom.Registry())
	if s.health != nil {
		s.prom.LinkedHubHealth(s.health.All)
	}
	// Throttled requests are counted too: the limits sit between the
	// metrics and the engine.
	prov := s.prom.Provisioner(throttle.New(s.engine, throttle.Options{
		Register:  throttle.DefaultRegister.Scaled(cfg.ThrottleRegister),
		Lookup:    throttle.DefaultLookup.Scaled(cfg.ThrottleLookup),
		PerSource: throttle.DefaultPerSource.Scaled(cfg.ThrottlePerSource),
	}))
	// With a store shared by several nodes, refusals go there too, so
	// that any node finds one whichever node refused the device.
	var refusalStore store.Store
	if _, shared := st.(store.Notifier); shared {
		refusalStore = st
	}
	s.refusals = refusal.New(refusal.Options{Logger: s.log, Store: refusalStore, Node: node})
	s.dev = https.New(prov, https.Options{Logger: s.log, Refusals: s.refusals})
	s.svc = s.prom.InstrumentService(serviceapi.New(svcStore, s.inst, serviceapi.Options{Logger: s.log, HostNames: s.serviceHostNames()}))
	s.mqtt, err = mqtt.New(prov, mqtt.Options{Logger: s.log, Refusals: s.refusals, TLSConfig: tlsCfg,
		// A device that dialled the address over WebSockets names its
		// hub only in its CONNECT's user name.
		ClaimWebSocket: s.hubs.ClaimMQTTWebSocket})
	if err != nil {
		return fmt.Errorf("mqtt: %w", err)
	}
	if s.amqp, err = amqptransport.New(prov, amqptransport.Options{Logger: s.log, Refusals: s.refusals, TLSConfig: tlsCfg, IDScope: s.inst.IDScope,
		// A device that dialled the address (no hub's TLS server name
		// or Host header) names its hub in its open frame, SASL user
		// name or first $cbs token.
		Claim:       s.hubs.ClaimAMQP,
		MaxSessions: s.hubs.AMQPMaxSessions()}); err != nil {
		return fmt.Errorf("amqp: %w", err)
	}
	// The console forwards its pages' calls to this node's own handlers,
	// as the signed-in policy, so they decide what the console may do.
	s.web = console.New(console.Options{
		Upstream: http.HandlerFunc(s.routeAPI),
		Policy:   s.inst.Policy,
		Audience: cfg.HostName,
		Info:     func() *Info { return s.info },
		Logger:   s.log,
	})
	s.https = &http.Server{
		Handler:           http.HandlerFunc(s.route),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// hubHealth is a linked hub's health for the linked-hub endpoints; nil
// when health checks are off.
func (s *Server) hubHealth(host string) *admin.LinkedHubHealth {
	if s.health == nil {
		return nil
	}
	h := s.health.Health(host)
	return &h
}

// writeInfo leaves in the data directory what clients need to reach the
// node: its last stage, so a complete info.json means a node that serves.
func (s *Server) writeInfo(caFile string) error {
	s.info = &Info{
		IDScope:                 s.inst.IDScope,
		ServiceConnectionString: s.inst.ServiceConnectionString(hostPort(s.cfg.HostName, s.httpsL.Addr(), "443")),
		CACertFile:              caFile,
		HTTPSEndpoint:           "https://" + hostPort(s.cfg.HostName, s.httpsL.Addr(), "443"),
		MQTTEndpoint:            "mqtts://" + hostPort(s.cfg.HostName, s.mqttL.Addr(), ""),
		AMQPEndpoint:            "amqps://" + hostPort(s.cfg.HostName, s.amqpL.Addr(), "5671"),
		HostName:                s.cfg.HostName,
		HTTPSAddr:               s.httpsL.Addr().String(),
		MQTTAddr:                s.mqttL.Addr().String(),
		AMQPAddr:                s.amqpL.Addr().String(),
	}
	return WriteInfo(s.cfg.DataDir, s.info)
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
	if s.health != nil {
		go s.health.Run(ctx)
	}
	// Refusals are written until the transports are closed, so those of
	// the drain are kept too.
	refusalsCtx, stopRefusals := context.WithCancel(context.WithoutCancel(ctx))
	refusalsDone := make(chan struct{})
	go func() {
		defer close(refusalsDone)
		s.refusals.Run(refusalsCtx)
	}()
	// Work an earlier run of this node left half done (a crash, a kill)
	// is finished or undone now rather than when its device comes back;
	// so is other nodes' work whose lease has run out.
	go s.doctor.recoverInterrupted(ctx)
	if s.cfg.DoctorInterval > 0 {
		go s.doctor.run(ctx, s.cfg.DoctorInterval, s.cfg.DoctorRepair)
	}
	if s.cfg.Banner != nil {
		s.printBanner(s.cfg.Banner)
	}
	s.log.Info("dpsd serving", "idScope", s.inst.IDScope, "https", s.info.HTTPSAddr, "mqtt", s.info.MQTTAddr, "amqp", s.info.AMQPAddr,
		"maxConns", s.conns.MaxTotal(), "maxConnsPerSource", s.conns.MaxPerSource())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.drain()
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
	stopRefusals()
	<-refusalsDone
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
		followChanges(ctx, n, s.effects, s.log)
	}()
	return func() {
		cancel()
		<-done
	}
}

// drain lets the registrations still allocating finish, up to the grace
// period, with the listeners open so that their devices' polls are
// answered; new registrations are refused with 503 meanwhile.
func (s *Server) drain() {
	grace := cmp.Or(s.cfg.ShutdownGrace, DefaultShutdownGrace)
	n := s.engine.Pending()
	if grace < 0 || n == 0 {
		s.engine.Drain(doneContext())
		return
	}
	s.log.Info("dpsd draining: waiting for registrations still allocating and their devices' polls", "registrations", n, "grace", grace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if !s.engine.Drain(ctx) {
		s.log.Warn("shutdown grace over: registrations still running go to the recovery path",
			"registrations", s.engine.Pending(), "grace", grace)
	}
}

// unlinkDeletedHub unlinks a built-in hub that is being deleted, so that
// allocation never sends a device to it; a hub that was not linked is fine.
func (s *Server) unlinkDeletedHub(ctx context.Context, hostName string) error {
	err := s.linked.Delete(ctx, hostName, "")
	if err != nil && !errors.Is(err, linkedhub.ErrNotFound) {
		return fmt.Errorf("unlink %s: %w", hostName, err)
	}
	if err == nil {
		s.log.Info("built-in hub unlinked as it is deleted", "hub", hostName)
	}
	return nil
}

// doneContext is a context that has already ended.
func doneContext() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
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
	if s.hubRouter != nil && s.hubRouter.ServesHost(r.Host) {
		// A built-in hub's request from a client that sent no TLS server
		// name (it dialled the address) but names the hub in Host.
		s.hubRouter.ServeHTTP(w, r)
		return
	}
	if mqtt.IsWebSocketUpgrade(r) {
		// One WebSocket endpoint for MQTT and AMQP, told apart by the
		// subprotocol the client offers.
		if wsconn.Offers(r, amqptransport.WebSocketSubprotocol) {
			s.amqp.WebSocketHandler().ServeHTTP(w, r)
			return
		}
		s.mqtt.WebSocketHandler().ServeHTTP(w, r)
		return
	}
	// The server sets no ReadTimeout, which would also end the WebSocket
	// connections above; each body gets its own deadline instead. Headers
	// are bounded by ReadHeaderTimeout.
	deadline.Body(w, r, cmp.Or(s.cfg.BodyTimeout, DefaultBodyTimeout))
	path := r.URL.EscapedPath()
	first, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if path == "/" || strings.EqualFold(first, "console") {
		// "/" is no device API path: it leads a browser to the console.
		s.web.ServeHTTP(w, r)
		return
	}
	s.routeAPI(w, r)
}

// routeAPI serves the service and device APIs and the extension
// endpoints: everything but the console and WebSockets.
func (s *Server) routeAPI(w http.ResponseWriter, r *http.Request) {
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
	case segs[1] == "issuingcas" && len(segs) <= 3:
		return s.issuers.Handler(issuer.HandlerOptions{Authorize: authorize(instance.RightServiceConfig), Logger: s.log})
	case segs[1] == "linkedhubs":
		return s.linked.Handler(linkedhub.HandlerOptions{Authorize: authorize(instance.RightServiceConfig), Health: s.hubHealth, Probe: s.registrar.ProbeCredentials, Logger: s.log})
	case segs[1] == "allocationpolicies" && len(segs) <= 3:
		return s.policies.Handler(allocpolicy.HandlerOptions{Authorize: authorize(instance.RightServiceConfig), Logger: s.log})
	case segs[1] == "webhooktest" && len(segs) == 2:
		return webhookTestHandler(s.st, s.alloc, authorize(instance.RightServiceConfig), s.log)
	case segs[1] == "webhooksigning" && len(segs) <= 3:
		return s.signing.Handler(webhooksig.HandlerOptions{Authorize: authorize(instance.RightServiceConfig), Logger: s.log})
	case segs[1] == "doctor" && len(segs) == 2:
		return s.doctor.handler()
	case segs[1] == "registrations" && len(segs) == 2:
		return s.registrationsHandler()
	case segs[1] == "stats" && len(segs) == 2:
		return s.statsHandler()
	case segs[1] == "registrations" && len(segs) == 4 && segs[3] == "allocationlog":
		return s.alog.Handler(alloclog.HandlerOptions{Authorize: authorize(instance.RightRegistrationStatusRead), Logger: s.log})
	case segs[1] == "refusals" && len(segs) == 2:
		return s.refusals.Handler(refusal.HandlerOptions{Authorize: authorize(instance.RightRegistrationStatusRead), Logger: s.log})
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
	s.issuers = issuer.NewRegistry(s.st, &issuer.Authority{Cert: ca.Cert, Key: ca.Signer()})
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

// helloTimeout bounds the wait for a connection's TLS ClientHello on the
// shared listeners.
const helloTimeout = 10 * time.Second

// sharedHubEndpoint is where the built-in hubs without an address of
// their own are served: the node's own listeners, whose connections for a
// hub's host name (TLS server name) shareListeners hands to the hubs.
func (s *Server) sharedHubEndpoint() *builtinhub.Shared {
	ip := "127.0.0.1" // a listener on every address is reached on loopback
	if h, _, err := net.SplitHostPort(s.httpsL.Addr().String()); err == nil && !net.ParseIP(h).IsUnspecified() {
		ip = h
	}
	return &builtinhub.Shared{
		Address:   ip,
		HTTPSAddr: s.httpsL.Addr().String(),
		MQTTAddr:  s.mqttL.Addr().String(),
		AMQPAddr:  s.amqpL.Addr().String(),
	}
}

// shareListeners puts the node's listeners in front of the built-in hubs
// too: each connection's TLS server name is read first, and those naming
// a hub go to it, the others to the provisioning service. Clients that
// name no server (a device dialling an IP address as GatewayHostName) are
// told apart later: over HTTPS by the Host header (route), over MQTT by
// the CONNECT's user name, read here after the node's own handshake, over
// AMQP (and AMQP over WebSockets) by the open frame, SASL user name or
// $cbs token the provisioning service's AMQP server offers the hubs
// (ClaimAMQP). While no hub runs, nothing is read: the listeners are the
// service's alone.
func (s *Server) shareListeners(tlsCfg *tls.Config) {
	hubs := s.hubs
	split := func(l net.Listener, p builtinhub.Protocol, noName func(net.Conn, *tlsmux.Listener)) *tlsmux.Listener {
		return tlsmux.Split(l, func(name string) func(net.Conn, *tlsmux.Listener) {
			switch {
			case name == "" && noName != nil && hubs.Running():
				return noName
			case name == "" || !hubs.ServesHost(name):
				return nil
			}
			return func(c net.Conn, _ *tlsmux.Listener) { hubs.ServeConn(p, c) }
		}, hubs.Running, helloTimeout, s.log)
	}
	s.httpsL = split(s.httpsL, builtinhub.ProtocolHTTPS, nil)
	s.mqttL = split(s.mqttL, builtinhub.ProtocolMQTT, func(c net.Conn, l *tlsmux.Listener) {
		tc := tls.Server(c, tlsCfg)
		ctx, cancel := context.WithTimeout(context.Background(), helloTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.log.Debug("mqtt TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		if rest, claimed := hubs.ClaimMQTT(tc); !claimed {
			l.Deliver(rest)
		}
	})
	s.amqpL = split(s.amqpL, builtinhub.ProtocolAMQP, nil)
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

// printBanner writes the start-up summary. The service connection string
// holds the owner key and stdout is often a journal kept for months, so
// the key is printed on the start that created it only; later starts say
// where it is (info.json, dpsd info).
func (s *Server) printBanner(w io.Writer) {
	i := *s.info
	if !s.created {
		i.ServiceConnectionString = "in " + filepath.Join(s.cfg.DataDir, InfoFile) + " (dpsd info prints it)"
	}
	fmt.Fprintf(w, `dpsd is ready
  ID scope:                    %s
  Service connection string:   %s
  CA certificate:              %s
  Device + service API:        %s   (HTTPS, MQTT and AMQP over WebSockets)
  Device API over MQTT:        %s
  Device API over AMQP:        %s
  Web console:                 %s/console/
Clients must trust the CA certificate, e.g. NODE_EXTRA_CA_CERTS=%s
`, i.IDScope, i.ServiceConnectionString, orNone(i.CACertFile), i.HTTPSEndpoint, i.MQTTEndpoint, i.AMQPEndpoint, i.HTTPSEndpoint, orNone(i.CACertFile))
}

func orNone(s string) string {
	if s == "" {
		return "(configured certificate)"
	}
	return s
}

// deviceKeySecret is the instance's secret for TPM identity keys, decoded.
func deviceKeySecret(in *instance.Instance) []byte {
	b, err := base64.StdEncoding.DecodeString(in.DeviceKeySecret)
	if err != nil {
		return nil
	}
	return b
}
