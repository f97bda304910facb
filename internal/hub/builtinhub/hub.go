package builtinhub

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/deadline"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// Right is a permission of a hub's shared access policy.
type Right string

// The rights of IoT hub shared access policies.
const (
	RightRegistryRead   Right = "RegistryRead"
	RightRegistryWrite  Right = "RegistryWrite"
	RightServiceConnect Right = "ServiceConnect"
	RightDeviceConnect  Right = "DeviceConnect"
)

// OwnerPolicy is the policy with every right, as on a real hub.
const OwnerPolicy = "iothubowner"

// Policy is a shared access policy of a hub.
type Policy struct {
	KeyName      string  `json:"keyName"`
	PrimaryKey   string  `json:"primaryKey"`
	SecondaryKey string  `json:"secondaryKey"`
	Rights       []Right `json:"rights"`
}

func (p *Policy) has(r Right) bool {
	for _, x := range p.Rights {
		if strings.EqualFold(string(x), string(r)) {
			return true
		}
	}
	return false
}

// defaultPolicies are the policies a new Azure IoT hub has.
func defaultPolicies() []Policy {
	mk := func(name string, rights ...Right) Policy {
		return Policy{KeyName: name, PrimaryKey: sas.GenerateKey(32), SecondaryKey: sas.GenerateKey(32), Rights: rights}
	}
	return []Policy{
		mk(OwnerPolicy, RightRegistryRead, RightRegistryWrite, RightServiceConnect, RightDeviceConnect),
		mk("service", RightServiceConnect),
		mk("device", RightDeviceConnect),
		mk("registryRead", RightRegistryRead),
		mk("registryReadWrite", RightRegistryRead, RightRegistryWrite),
	}
}

// Config is the stored definition of a built-in hub.
type Config struct {
	Name string `json:"name"`
	// HostName is the name devices and services use; it need not resolve
	// (clients can dial Address), but the hosts-file line makes it.
	HostName string `json:"hostName"`
	// Address, when set, is the IP address the hub listens on by itself,
	// with the standard ports (443 and 8883) unless the manager says
	// otherwise. Empty: the hub is served on the endpoint all hubs share.
	Address  string    `json:"address,omitempty"`
	Policies []Policy  `json:"policies"`
	Created  time.Time `json:"created"`
}

func (c *Config) policy(name string) (*Policy, bool) {
	for i := range c.Policies {
		if strings.EqualFold(c.Policies[i].KeyName, name) {
			return &c.Policies[i], true
		}
	}
	return nil, false
}

// ConnectionString is the owner policy's connection string.
func (c *Config) ConnectionString() *sas.ConnectionString {
	p, ok := c.policy(OwnerPolicy)
	if !ok {
		return nil
	}
	return &sas.ConnectionString{HostName: c.HostName, SharedAccessKeyName: p.KeyName, SharedAccessKey: p.PrimaryKey}
}

func decodeKey(k string) []byte {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		return nil
	}
	return b
}

// Hub is one running built-in IoT hub. Its registry methods implement
// azurehub.Registry (and azurehub.ReportedImporter) for in-process callers.
type Hub struct {
	cfg     Config
	st      store.Store
	log     *slog.Logger
	now     func() time.Time
	limiter *limiter
	msgs    *messageBuffer
	tlog    *telemetryLog // nil without a store
	c2d     *c2dQueues
	fb      *feedbackHub
	// bus tells the other nodes sharing the store of an event (cluster.go);
	// nil without other nodes.
	bus func(hubEvent)
	// remote are the direct methods this node asked another to invoke.
	remote remoteCalls

	broker *mqtt.Server
	http   *http.Server
	httpsL net.Listener
	mqttL  net.Listener
	amqpL  net.Listener
	tls    *tls.Config
	cert   tls.Certificate
	hook   *deviceHook
	shared *Shared // the shared endpoint, or nil for a hub with its own listeners
	// amqp serves the AMQP connections of the hub's own listeners (over
	// TLS and WebSockets), each the hub's whatever names it uses; they
	// end when amqpCtx does, at close. Nil for a shared hub.
	amqp     *wire.Server
	amqpCtx  context.Context
	amqpStop context.CancelFunc

	methodTimeout  time.Duration
	connectTimeout time.Duration
	bodyTimeout    time.Duration
	maxKeepAlive   uint16 // seconds

	mu      sync.Mutex
	closing bool
	conns   map[net.Conn]*connInfo   // open device connections
	devices map[string]*devState     // by lower-cased device id
	methods map[string]pendingMethod // by request id
	amqpC2D map[string]*wire.Link    // devices' AMQP cloud-to-device links, by lower-cased id
	// mqttC2D are the locks of the cloud-to-device messages in flight
	// over MQTT, by connection and packet id, and mqttPacketID the last
	// packet id given out; under mu.
	mqttC2D      map[mqttInflight]string
	mqttPacketID uint16
	amqpDev      amqpDeviceLinks // devices' AMQP twin and method links
	wg           sync.WaitGroup
}

var (
	_ azurehub.Registry         = (*Hub)(nil)
	_ azurehub.ReportedImporter = (*Hub)(nil)
)

// devState is what the hub knows about a device's connection, in memory.
type devState struct {
	cl           *mqtt.Client
	connected    bool
	stateChanged time.Time
	lastActivity time.Time
}

// Config returns the hub's definition.
func (h *Hub) Config() Config { return h.cfg }

// Name is the hub's name.
func (h *Hub) Name() string { return h.cfg.Name }

// HTTPSAddr is the address the REST API and MQTT over WebSockets listen on.
func (h *Hub) HTTPSAddr() string {
	if h.shared != nil {
		return h.shared.HTTPSAddr
	}
	return h.httpsL.Addr().String()
}

// MQTTAddr is the address MQTT over TLS listens on.
func (h *Hub) MQTTAddr() string {
	if h.shared != nil {
		return h.shared.MQTTAddr
	}
	return h.mqttL.Addr().String()
}

// AMQPAddr is the address AMQP over TLS listens on, and the hub's Event
// Hubs-compatible endpoint with it.
func (h *Hub) AMQPAddr() string {
	if h.shared != nil {
		return h.shared.AMQPAddr
	}
	return h.amqpL.Addr().String()
}

// aliases are the names clients may address the hub by, in tokens and
// MQTT user names: its host name and address, with or without a port.
func (h *Hub) aliases() []string {
	addr := h.cfg.Address
	if h.shared != nil {
		addr = h.shared.Address
	}
	out := []string{h.cfg.HostName, addr}
	for _, a := range []string{h.HTTPSAddr(), h.MQTTAddr(), h.AMQPAddr()} {
		if _, port, err := net.SplitHostPort(a); err == nil {
			out = append(out, net.JoinHostPort(h.cfg.HostName, port), net.JoinHostPort(addr, port))
		}
	}
	return out
}

// enter counts a connection handed over by the shared endpoint in the
// hub's wait group; false means the hub is closing.
func (h *Hub) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.wg.Add(1)
	return true
}

// listenError is a hub's failure to bind its own address.
type listenError struct {
	addr string
	err  error
}

func (e *listenError) Error() string {
	switch {
	case errors.Is(e.err, os.ErrPermission):
		return fmt.Sprintf("cannot listen on %s: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE, e.g. sudo setcap cap_net_bind_service=+ep on the dpsd binary); or create the hub without --address to share dpsd's own listeners", e.addr)
	case errors.Is(e.err, syscall.EADDRINUSE):
		return fmt.Sprintf("cannot listen on %s: the address is already in use; choose another --address, or none to share dpsd's own listeners", e.addr)
	case errors.Is(e.err, syscall.EADDRNOTAVAIL):
		return fmt.Sprintf("cannot listen on %s: the address is not one of this machine's", e.addr)
	}
	return fmt.Sprintf("cannot listen on %s: %v", e.addr, e.err)
}

func (e *listenError) Unwrap() error { return e.err }

func listenTCP(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, &listenError{addr: addr, err: err}
	}
	return l, nil
}

// hubOptions are the manager's settings a hub uses.
type hubOptions struct {
	logger    *slog.Logger
	now       func() time.Time
	cert      tls.Certificate
	httpsPort string
	mqttPort  string
	amqpPort  string
	// newAMQP returns the AMQP server of a hub's own listeners.
	newAMQP        func(*Hub) *wire.Server
	messages       int
	messageBytes   int
	messageAge     time.Duration
	partitions     int
	rate           float64
	burst          int
	methodTimeout  time.Duration
	connectTimeout time.Duration
	bodyTimeout    time.Duration
	maxKeepAlive   uint16
	listener       func(net.Listener, string) net.Listener
	shared         *Shared // set: no listeners of its own
	bus            func(hubEvent)
	// sharedStore is set when other nodes share the store (and bus
	// reaches them).
	sharedStore bool
}

// startHub binds the hub's listeners and serves them.
func startHub(cfg Config, st store.Store, o hubOptions) (_ *Hub, err error) {
	h := &Hub{
		cfg:            cfg,
		st:             st,
		log:            o.logger.With("hub", cfg.Name),
		now:            o.now,
		limiter:        newLimiter(o.rate, o.burst),
		msgs:           newMessageBuffer(o.messages, o.messageBytes, o.messageAge, o.now),
		c2d:            newC2DQueues(st, cfg.Name, o.logger.With("hub", cfg.Name)),
		fb:             newFeedbackHub(),
		methodTimeout:  o.methodTimeout,
		connectTimeout: o.connectTimeout,
		bodyTimeout:    o.bodyTimeout,
		maxKeepAlive:   max(o.maxKeepAlive, 1),
		conns:          make(map[net.Conn]*connInfo),
		devices:        make(map[string]*devState),
		methods:        make(map[string]pendingMethod),
		cert:           o.cert,
		shared:         o.shared,
		bus:            o.bus,
	}
	h.msgs.setPartitions(o.partitions)
	if st != nil {
		var notify func(int64)
		if o.sharedStore {
			notify = h.announceTelemetry
		}
		h.tlog = newTelemetryLog(st, cfg.Name, h.msgs, h.log, notify)
	}
	h.c2d.dead = h.feedback
	h.tls = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{o.cert},
		// X.509 devices present a certificate; SAS devices do not.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"http/1.1"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = h.c2d.load(ctx)
	if err == nil && h.tlog != nil {
		err = h.tlog.load(ctx)
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	if h.tlog != nil {
		h.tlog.start()
		defer func() {
			if err != nil {
				_ = h.tlog.close(context.Background())
			}
		}()
	}
	if h.shared != nil {
		if err := h.startBroker(); err != nil {
			return nil, err
		}
		h.log.Info("built-in hub serving on the shared endpoint", "hostName", cfg.HostName, "https", h.HTTPSAddr(), "mqtt", h.MQTTAddr())
		return h, nil
	}
	if h.httpsL, err = listenTCP(net.JoinHostPort(cfg.Address, o.httpsPort)); err != nil {
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	if h.mqttL, err = listenTCP(net.JoinHostPort(cfg.Address, o.mqttPort)); err != nil {
		h.httpsL.Close()
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	if h.amqpL, err = listenTCP(net.JoinHostPort(cfg.Address, o.amqpPort)); err != nil {
		h.httpsL.Close()
		h.mqttL.Close()
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	if o.listener != nil {
		h.httpsL = o.listener(h.httpsL, "hub-https")
		h.mqttL = o.listener(h.mqttL, "hub-mqtt")
		h.amqpL = o.listener(h.amqpL, "hub-amqp")
	}
	if err := h.startBroker(); err != nil {
		h.httpsL.Close()
		h.mqttL.Close()
		h.amqpL.Close()
		return nil, err
	}
	h.amqp = o.newAMQP(h)
	h.amqpCtx, h.amqpStop = context.WithCancel(context.Background())
	h.http = &http.Server{
		Handler:           http.HandlerFunc(h.serveHTTP),
		TLSConfig:         h.tls,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	h.wg.Add(3)
	go func() {
		defer h.wg.Done()
		err := h.http.Serve(tls.NewListener(h.httpsL, h.tls))
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("hub https listener failed", "err", err)
		}
	}()
	go func() {
		defer h.wg.Done()
		h.acceptMQTT()
	}()
	go func() {
		defer h.wg.Done()
		h.acceptAMQP()
	}()
	h.log.Info("built-in hub serving", "hostName", cfg.HostName, "https", h.HTTPSAddr(), "mqtt", h.MQTTAddr(), "amqp", h.AMQPAddr())
	return h, nil
}

// serveHTTP routes the HTTPS listener: AMQP or MQTT over WebSockets, or
// REST.
func (h *Hub) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if h.serveAMQPWebSocket(w, r) {
		return
	}
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		h.serveWebSocket(w, r)
		return
	}
	// No ReadTimeout on the server, which would also end the WebSocket
	// connections: each body gets its own deadline.
	deadline.Body(w, r, h.bodyTimeout)
	h.serveREST(w, r)
}

// close stops the listeners and ends every device connection. Persistent
// sessions stay in the store for the next start.
func (h *Hub) close(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	var err error
	if h.http != nil {
		h.amqpStop()
		h.amqpL.Close()
		err = h.http.Shutdown(ctx)
		h.mqttL.Close()
		h.http.Close()
	}
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		err = errors.Join(err, ctx.Err())
	}
	_ = h.broker.Close()
	if h.tlog != nil {
		// After the connections: what they sent is written before the
		// hub stops.
		err = errors.Join(err, h.tlog.close(ctx))
	}
	return err
}

// connection returns a device's connection state, when it last changed and
// its last activity, formatted for the registry API.
func (h *Hub) connection(id string) (state, changed, activity string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.devices[strings.ToLower(id)]
	if s == nil {
		return azurehub.Disconnected, neverTime, neverTime
	}
	state = azurehub.Disconnected
	if s.connected {
		state = azurehub.Connected
	}
	return state, formatTime(s.stateChanged), formatTime(s.lastActivity)
}

func (h *Hub) setConnected(id string, cl *mqtt.Client, connected bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := strings.ToLower(id)
	s := h.devices[key]
	if s == nil {
		if !connected {
			return // a deleted device's connection ending
		}
		s = &devState{}
		h.devices[key] = s
	}
	if !connected && s.cl != cl {
		return // an older connection ended after a newer one took over
	}
	now := h.now()
	s.connected, s.stateChanged = connected, now
	if connected {
		s.cl, s.lastActivity = cl, now
	} else {
		s.cl = nil // let the ended connection be collected
	}
}

// forget drops what the hub remembers of a deleted device's connections.
func (h *Hub) forget(id string) {
	h.mu.Lock()
	delete(h.devices, strings.ToLower(id))
	h.mu.Unlock()
}

func (h *Hub) touch(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.devices[strings.ToLower(id)]; s != nil {
		s.lastActivity = h.now()
	}
}

// client returns a device's live MQTT connection, or nil.
func (h *Hub) client(id string) *mqtt.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.devices[strings.ToLower(id)]
	if s == nil || !s.connected || s.cl == nil || s.cl.Closed() {
		return nil
	}
	return s.cl
}

// disconnect closes a device's connection, if it has one.
func (h *Hub) disconnect(id string) {
	if cl := h.client(id); cl != nil {
		cl.Stop(packets.ErrNotAuthorized)
	}
}
