package builtinhub

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

// DefaultDomain is appended to a hub's name to form its default host
// name. It is deliberately not azure-devices.net: a hosts-file line for a
// built-in hub must never shadow a real Azure hub of the same name, and
// ".internal" is reserved for private use, so it never leaks to public DNS
// (unlike ".local", it is not multicast DNS either).
const DefaultDomain = "azure-devices.internal"

// Default ports of a hub, those of Azure IoT Hub.
const (
	DefaultHTTPSPort = "443"
	DefaultMQTTPort  = "8883"
	DefaultAMQPPort  = "5671"
)

// firstAddress and lastAddress bound the loopback addresses given to hubs
// that are created without one; 127.0.0.1 stays dpsd's own.
var (
	firstAddress = [4]byte{127, 0, 0, 10}
	lastAddress  = [4]byte{127, 0, 0, 254}
)

// Errors of the manager.
var (
	ErrHubNotFound = errors.New("iothub: no such hub")
	ErrHubExists   = errors.New("iothub: hub already exists")
	ErrInvalid     = errors.New("iothub: invalid argument")
)

// Options configure a Manager.
type Options struct {
	Logger *slog.Logger
	// Certificate issues a hub's TLS certificate for names (its host name
	// and address); localca.(*CA).ServerCertificate fits. Required.
	Certificate func(name string, names []string) (tls.Certificate, error)
	// HTTPSPort, MQTTPort and AMQPPort are the ports every hub with an
	// address of its own listens on; empty means 443, 8883 and 5671, "0"
	// lets the system pick (tests).
	HTTPSPort, MQTTPort, AMQPPort string
	// Authorize authorizes requests to the management Handler; it is
	// called first and a non-nil error is answered 401 (or with the
	// error itself if it is a *dps.Error). Nil allows every request.
	Authorize func(*http.Request) error
	// MessageBuffer is how many telemetry messages each hub keeps
	// (default DefaultMessageBuffer).
	MessageBuffer int
	// MessageBufferBytes bounds the bytes of telemetry each hub keeps
	// (default DefaultMessageBufferBytes); the oldest messages go first.
	MessageBufferBytes int
	// MessageMaxAge, when set, drops telemetry older than it.
	MessageMaxAge time.Duration
	// EventHubPartitions is the partition count of each hub's Event
	// Hubs-compatible endpoint (default eventhub.DefaultPartitions, at
	// most eventhub.MaxPartitions); devices' telemetry is spread over
	// them by a hash of the device id.
	EventHubPartitions int
	// RESTRate and RESTBurst throttle each hub's REST API (requests per
	// second, bucket size) with 429 and Retry-After, as real hubs do.
	// Zero rate means no throttling.
	RESTRate  float64
	RESTBurst int
	// MethodTimeout is the default wait for a direct method's answer.
	MethodTimeout time.Duration
	// ConnectTimeout bounds a device connection's TLS handshake and the
	// wait for its CONNECT, over TLS and over WebSockets alike; zero
	// means 30 s.
	ConnectTimeout time.Duration
	// MaxKeepAlive is the longest MQTT keep-alive a device may ask for:
	// a longer one, or none (0), is cut to it, and a connection silent
	// for 1.5 times it is closed, so an authenticated device cannot hold
	// a connection without a sign of life forever. Zero means 1177 s,
	// IoT Hub's own maximum.
	MaxKeepAlive time.Duration
	// Listener, when set, wraps each hub's listeners (name "hub-https",
	// "hub-mqtt" or "hub-amqp"): the node's connection caps.
	Listener func(l net.Listener, name string) net.Listener
	// BodyTimeout bounds the reading of a REST request's body, from the
	// end of its headers; zero means 30 s.
	BodyTimeout time.Duration
	// Shared, when set, is the endpoint hubs created without an address
	// share (Manager.ServeConn takes its connections); when nil, such a
	// hub gets the next free loopback address.
	Shared *Shared
	// OnDelete, when set, is called with a hub's host name before the hub
	// is deleted, to unlink it from the provisioning service; an error
	// stops the delete.
	OnDelete func(ctx context.Context, hostName string) error
	Now      func() time.Time
}

// Manager runs the built-in hubs of a dpsd node. It is safe for
// concurrent use.
type Manager struct {
	st  store.Store
	opt Options
	log *slog.Logger

	front *front       // nil without Options.Shared
	amqp  *wire.Server // the shared endpoint's AMQP server, nil without Options.Shared

	// bus, for a store shared by several nodes, carries events between
	// them (cluster.go); run tells this node's from the others'. stop
	// ends the following of the others' events, and followed is closed
	// when it has ended.
	bus      store.Broadcaster
	run      string
	stop     context.CancelFunc
	followed chan struct{}

	mu     sync.Mutex
	hubs   map[string]*Hub   // running hubs by lower-cased name
	failed map[string]string // hubs that could not start: name → error
	closed bool
}

// NewManager returns a manager of the hubs kept in st. Call Start to run
// them.
func NewManager(st store.Store, opt Options) (*Manager, error) {
	if opt.Certificate == nil {
		return nil, errors.New("iothub: Options.Certificate is required")
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.HTTPSPort == "" {
		opt.HTTPSPort = DefaultHTTPSPort
	}
	if opt.MQTTPort == "" {
		opt.MQTTPort = DefaultMQTTPort
	}
	if opt.AMQPPort == "" {
		opt.AMQPPort = DefaultAMQPPort
	}
	if opt.MethodTimeout <= 0 {
		opt.MethodTimeout = defaultMethodTimeout
	}
	if opt.ConnectTimeout <= 0 {
		opt.ConnectTimeout = defaultConnectTimeout
	}
	if opt.MaxKeepAlive <= 0 {
		opt.MaxKeepAlive = defaultMaxKeepAlive
	}
	if opt.BodyTimeout <= 0 {
		opt.BodyTimeout = defaultBodyTimeout
	}
	m := &Manager{st: st, opt: opt, log: opt.Logger, hubs: make(map[string]*Hub), failed: make(map[string]string), run: newToken()}
	if b, ok := st.(store.Broadcaster); ok {
		m.bus = b
	}
	if opt.Shared != nil {
		m.front = newFront(m)
		m.amqp = m.newAMQPServer(nil)
	}
	return m, nil
}

// ServesHost reports whether name (a host name, with or without a port) is
// a running hub's: the node's listeners hand such connections to
// ServeConn.
func (m *Manager) ServesHost(name string) bool { return m.byHost(hostOnly(name)) != nil }

// Running reports whether any hub runs.
func (m *Manager) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.hubs) > 0
}

// ServeConn serves a connection accepted on the shared endpoint, before
// its TLS handshake, and returns when it ends. It is for connections whose
// TLS server name is a hub's (ServesHost), or any connection on listeners
// of the hubs alone; without Options.Shared it closes c.
func (m *Manager) ServeConn(p Protocol, c net.Conn) {
	if m.front == nil {
		c.Close()
		return
	}
	m.front.serveConn(p, c)
}

// ServeListener serves every connection of l, a listener of the hubs alone
// (an address the operator chose for all hubs), as the shared endpoint's
// protocol p, until l is closed.
func (m *Manager) ServeListener(p Protocol, l net.Listener) error {
	for {
		c, err := connlimit.Accept(l, m.log, "hub "+string(p))
		if err != nil {
			return err
		}
		go m.ServeConn(p, c)
	}
}

// ServeHTTP serves a request that reached the node's own HTTPS server but
// names a hub in its Host header (a client that dialled the address and
// sent no TLS server name); ServesHost says which requests those are.
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m.serveAMQPWebSocket(w, r) {
		return
	}
	if h := m.hubOfRequest(r); h != nil {
		h.serveHTTP(w, r)
		return
	}
	http.NotFound(w, r)
}

// Start runs every hub kept in the store. A hub that cannot start (its
// address is taken, say) is logged and listed with its error; the others
// run.
func (m *Manager) Start(ctx context.Context) error {
	cfgs, err := m.configs(ctx)
	if err != nil {
		return err
	}
	for _, cfg := range cfgs {
		if err := m.runHub(cfg); err != nil {
			m.log.Error("built-in hub not started", "hub", cfg.Name, "err", err)
		}
	}
	if m.bus != nil {
		fctx, stop := context.WithCancel(context.Background())
		m.stop, m.followed = stop, make(chan struct{})
		go func() {
			defer close(m.followed)
			m.follow(fctx)
		}()
	}
	return nil
}

// Close stops every hub.
func (m *Manager) Close(ctx context.Context) error {
	if m.stop != nil {
		m.stop()
		<-m.followed
	}
	m.mu.Lock()
	m.closed = true
	hubs := make([]*Hub, 0, len(m.hubs))
	for _, h := range m.hubs {
		hubs = append(hubs, h)
	}
	clear(m.hubs)
	m.mu.Unlock()
	var errs []error
	if m.front != nil {
		errs = append(errs, m.front.close(ctx))
	}
	for _, h := range hubs {
		errs = append(errs, h.close(ctx))
	}
	return errors.Join(errs...)
}

func (m *Manager) runHub(cfg Config) error {
	var shared *Shared
	if cfg.Address == "" {
		if shared = m.opt.Shared; shared == nil {
			err := errors.New("iothub: this node has no shared endpoint for hubs without an address")
			m.setFailed(cfg.Name, err)
			return err
		}
	}
	names := []string{cfg.HostName, cfg.Address}
	if shared != nil {
		names = []string{cfg.HostName, shared.Address}
	}
	cert, err := m.opt.Certificate("hub-"+cfg.Name, names)
	if err != nil {
		m.setFailed(cfg.Name, err)
		return fmt.Errorf("hub %s: certificate: %w", cfg.Name, err)
	}
	h, err := startHub(cfg, m.st, hubOptions{
		logger:         m.log,
		now:            m.opt.Now,
		cert:           cert,
		httpsPort:      m.opt.HTTPSPort,
		mqttPort:       m.opt.MQTTPort,
		amqpPort:       m.opt.AMQPPort,
		newAMQP:        m.newAMQPServer,
		messages:       m.opt.MessageBuffer,
		messageBytes:   m.opt.MessageBufferBytes,
		messageAge:     m.opt.MessageMaxAge,
		partitions:     m.opt.EventHubPartitions,
		rate:           m.opt.RESTRate,
		burst:          m.opt.RESTBurst,
		methodTimeout:  m.opt.MethodTimeout,
		connectTimeout: m.opt.ConnectTimeout,
		maxKeepAlive:   keepAliveSeconds(m.opt.MaxKeepAlive),
		bodyTimeout:    m.opt.BodyTimeout,
		listener:       m.opt.Listener,
		shared:         shared,
		bus:            m.broadcast,
		sharedStore:    m.bus != nil,
	})
	if err != nil {
		m.setFailed(cfg.Name, err)
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		go h.close(context.Background())
		return errors.New("iothub: manager closed")
	}
	if _, running := m.hubs[strings.ToLower(cfg.Name)]; running {
		// Started meanwhile (another node's event and this node's own
		// create crossing): one is enough.
		go h.close(context.Background())
		return nil
	}
	m.hubs[strings.ToLower(cfg.Name)] = h
	delete(m.failed, strings.ToLower(cfg.Name))
	return nil
}

func (m *Manager) setFailed(name string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failed[strings.ToLower(name)] = err.Error()
}

// configs reads every stored hub definition.
func (m *Manager) configs(ctx context.Context) ([]Config, error) {
	var out []Config
	opt := store.ListOptions{}
	for {
		recs, more, err := m.st.List(ctx, KindHub, opt)
		if err != nil {
			return nil, fmt.Errorf("list hubs: %w", err)
		}
		for _, rec := range recs {
			var c Config
			if err := json.Unmarshal(rec.Data, &c); err != nil {
				return nil, fmt.Errorf("hub %s: decode: %w", rec.ID, err)
			}
			out = append(out, c)
		}
		if !more || len(recs) == 0 {
			return out, nil
		}
		opt.After = recs[len(recs)-1].ID
	}
}

// CreateOptions are the optional settings of a new hub.
type CreateOptions struct {
	// HostName defaults to {name}.azure-devices.internal.
	HostName string
	// Address is an IP address of this machine for the hub alone, on
	// which it listens itself; default: the endpoint all hubs share
	// (Options.Shared), or without one the next free loopback address
	// from 127.0.0.10 on.
	Address string
}

// hubName is Azure's rule: 3–50 letters, digits and hyphens, starting
// with a letter and not ending with a hyphen.
var hubName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]{1,48}[A-Za-z0-9]$`)

var hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// Create defines a new hub, stores it and starts it.
func (m *Manager) Create(ctx context.Context, name string, o CreateOptions) (*Info, error) {
	if !hubName.MatchString(name) {
		return nil, fmt.Errorf("%w: hub name %q must have 3 to 50 letters, digits or hyphens, start with a letter and not end with a hyphen", ErrInvalid, name)
	}
	host := strings.ToLower(o.HostName)
	if host == "" {
		host = strings.ToLower(name) + "." + DefaultDomain
	}
	if !hostName.MatchString(host) || len(host) > 253 || net.ParseIP(host) != nil {
		return nil, fmt.Errorf("%w: %q is not a DNS host name", ErrInvalid, o.HostName)
	}
	existing, err := m.configs(ctx)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, c := range existing {
		if strings.EqualFold(c.Name, name) {
			return nil, fmt.Errorf("%w: %s", ErrHubExists, name)
		}
		if strings.EqualFold(c.HostName, host) {
			return nil, fmt.Errorf("%w: host name %s is taken by hub %s", ErrInvalid, host, c.Name)
		}
		used[c.Address] = true
	}
	addr := o.Address
	switch {
	case addr == "" && m.opt.Shared != nil:
		// Shared: nothing to bind, nothing to resolve but the one address.
	case addr == "":
		if addr, err = m.freeAddress(used); err != nil {
			return nil, err
		}
	default:
		ip := net.ParseIP(addr)
		if ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("%w: address %q must be a specific IP address", ErrInvalid, addr)
		}
		addr = ip.String()
		if used[addr] {
			return nil, fmt.Errorf("%w: address %s is taken by another hub", ErrInvalid, addr)
		}
	}
	cfg := Config{Name: name, HostName: host, Address: addr, Policies: defaultPolicies(), Created: m.opt.Now().UTC()}
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := m.st.Put(ctx, store.Record{Kind: KindHub, ID: name, Data: data}, store.Condition{MustNotExist: true}); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("%w: %s", ErrHubExists, name)
		}
		return nil, fmt.Errorf("store hub: %w", err)
	}
	if err := m.runHub(cfg); err != nil {
		// Keep nothing half-made: a hub that cannot listen is removed.
		_ = m.st.Delete(context.WithoutCancel(ctx), KindHub, name, store.Condition{})
		m.mu.Lock()
		delete(m.failed, strings.ToLower(name))
		m.mu.Unlock()
		var le *listenError
		if errors.As(err, &le) {
			// The operator's address: say why it cannot be used.
			return nil, fmt.Errorf("%w: %v", ErrInvalid, le)
		}
		return nil, err
	}
	m.broadcast(hubEvent{Event: eventHubs, Hub: name})
	m.log.Info("built-in hub created", "hub", name, "hostName", host, "address", m.address(cfg), "hosts", m.hostsLine(cfg))
	return m.info(cfg), nil
}

// freeAddress finds a loopback address no hub uses where its ports can be
// bound.
func (m *Manager) freeAddress(used map[string]bool) (string, error) {
	for i := int(firstAddress[3]); i <= int(lastAddress[3]); i++ {
		ip := net.IPv4(firstAddress[0], firstAddress[1], firstAddress[2], byte(i)).String()
		if used[ip] {
			continue
		}
		if m.bindable(ip) {
			return ip, nil
		}
	}
	return "", fmt.Errorf("%w: no free loopback address for a hub between %v and %v; give --address", ErrInvalid,
		net.IP(firstAddress[:]), net.IP(lastAddress[:]))
}

func (m *Manager) bindable(ip string) bool {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for _, port := range []string{m.opt.HTTPSPort, m.opt.MQTTPort, m.opt.AMQPPort} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
		if err != nil {
			return false
		}
		ls = append(ls, l)
	}
	return true
}

// Delete stops a hub and removes it with its devices and sessions.
func (m *Manager) Delete(ctx context.Context, name string) error {
	rec, err := m.st.Get(ctx, KindHub, name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrHubNotFound, name)
		}
		return err
	}
	var cfg Config
	if err := json.Unmarshal(rec.Data, &cfg); err != nil {
		return fmt.Errorf("hub %s: decode: %w", name, err)
	}
	// First out of allocation, so no device is sent to a hub going away.
	if m.opt.OnDelete != nil && cfg.HostName != "" {
		if err := m.opt.OnDelete(ctx, cfg.HostName); err != nil {
			return fmt.Errorf("delete hub %s: %w", name, err)
		}
	}
	m.mu.Lock()
	h := m.hubs[strings.ToLower(name)]
	delete(m.hubs, strings.ToLower(name))
	delete(m.failed, strings.ToLower(name))
	m.mu.Unlock()
	if h != nil {
		if err := h.close(ctx); err != nil {
			m.log.Warn("stopping hub", "hub", name, "err", err)
		}
	}
	for _, kind := range []store.Kind{KindDevice, KindModule, KindSession, KindCA, KindC2D, KindTelemetry, KindFeedback} {
		if err := m.deleteAll(ctx, kind, name); err != nil {
			return err
		}
	}
	if err := m.st.Delete(ctx, KindHub, name, store.Condition{}); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete hub %s: %w", name, err)
	}
	m.broadcast(hubEvent{Event: eventHubs, Hub: name})
	m.log.Info("built-in hub deleted", "hub", name)
	return nil
}

func (m *Manager) deleteAll(ctx context.Context, kind store.Kind, ref string) error {
	for range 100_000 { // bounded: each round deletes a page
		recs, _, err := m.st.List(ctx, kind, store.ListOptions{Ref: ref})
		if err != nil {
			return fmt.Errorf("delete hub %s: %w", ref, err)
		}
		if len(recs) == 0 {
			return nil
		}
		for _, rec := range recs {
			if err := m.st.Delete(ctx, kind, rec.ID, store.Condition{}); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("delete hub %s: %w", ref, err)
			}
		}
	}
	return fmt.Errorf("delete hub %s: too many records", ref)
}

// Info is the wire form of a built-in hub, defined in api/admin.
type Info = admin.Hub

// address is where clients reach a hub: its own address, or the shared
// endpoint's.
func (m *Manager) address(cfg Config) string {
	if cfg.Address == "" && m.opt.Shared != nil {
		return m.opt.Shared.Address
	}
	return cfg.Address
}

// hostsLine is the hosts-file line that makes a hub's host name resolve.
func (m *Manager) hostsLine(cfg Config) string { return m.address(cfg) + " " + cfg.HostName }

func (m *Manager) info(cfg Config) *Info {
	in := &Info{Name: cfg.Name, HostName: cfg.HostName, Address: m.address(cfg), HostsLine: m.hostsLine(cfg), Created: cfg.Created, Shared: cfg.Address == ""}
	if cs := cfg.ConnectionString(); cs != nil {
		in.ConnectionString = cs.String()
	}
	m.mu.Lock()
	h := m.hubs[strings.ToLower(cfg.Name)]
	failed := m.failed[strings.ToLower(cfg.Name)]
	m.mu.Unlock()
	in.EventHubConnectionString = m.eventHubConnectionString(cfg, h)
	if h != nil {
		in.Running, in.HTTPSAddr, in.MQTTAddr, in.AMQPAddr = true, h.HTTPSAddr(), h.MQTTAddr(), h.AMQPAddr()
	} else {
		in.Error = failed
		if in.Error == "" {
			in.Error = "not running on this node"
		}
	}
	return in
}

// List describes every hub, in name order.
func (m *Manager) List(ctx context.Context) ([]*Info, error) {
	cfgs, err := m.configs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*Info, 0, len(cfgs))
	for _, c := range cfgs {
		out = append(out, m.info(c))
	}
	slices.SortFunc(out, func(a, b *Info) int { return strings.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name)) })
	return out, nil
}

// Info describes one hub.
func (m *Manager) Info(ctx context.Context, name string) (*Info, error) {
	rec, err := m.st.Get(ctx, KindHub, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrHubNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	var c Config
	if err := json.Unmarshal(rec.Data, &c); err != nil {
		return nil, fmt.Errorf("hub %s: decode: %w", name, err)
	}
	return m.info(c), nil
}

// Hub returns a running hub by name.
func (m *Manager) Hub(name string) (*Hub, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.hubs[strings.ToLower(name)]
	return h, ok
}

// byHost returns the running hub with host name host.
func (m *Manager) byHost(host string) *Hub {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, h := range m.hubs {
		if strings.EqualFold(h.cfg.HostName, host) {
			return h
		}
	}
	return nil
}

// anyHub returns a running hub on the shared endpoint, the one first by
// name, or nil.
func (m *Manager) anyHub() *Hub {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first *Hub
	for _, h := range m.hubs {
		if h.shared != nil && (first == nil || h.cfg.Name < first.cfg.Name) {
			first = h
		}
	}
	return first
}

// Registry returns the built-in hub with host name hostName for in-process
// registration; it implements hub.Local.
func (m *Manager) Registry(hostName string) (azurehub.Registry, bool) {
	if h := m.byHost(hostName); h != nil {
		return h, true
	}
	return nil, false
}

// HubConnectionString returns the iothubowner connection string of the
// built-in hub with host name hostName; it implements hub.Credentials for
// built-in hubs, e.g. when linking one to the instance.
func (m *Manager) HubConnectionString(ctx context.Context, hostName string) (*sas.ConnectionString, error) {
	cfgs, err := m.configs(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range cfgs {
		if strings.EqualFold(c.HostName, hostName) {
			if cs := c.ConnectionString(); cs != nil {
				return cs, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: host name %s", ErrHubNotFound, hostName)
}
