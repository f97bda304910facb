package device

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/internal/sas"
)

// Transport selects the wire protocol.
type Transport string

// Transports a device can provision over.
const (
	TransportHTTPS  Transport = "https"
	TransportMQTT   Transport = "mqtt"
	TransportMQTTWS Transport = "mqtt-ws"
	TransportAMQP   Transport = "amqp"
	TransportAMQPWS Transport = "amqp-ws"
)

// Defaults applied to a zero Config field.
const (
	// DefaultProvisioningHost is Azure's global device endpoint.
	DefaultProvisioningHost = "global.azure-devices-provisioning.net"
	// DefaultAPIVersion is what the Node, C# and Python SDKs send.
	DefaultAPIVersion = "2019-03-31"
	// CSRAPIVersion is the preview that adds certificate issuance (csr in
	// the request, issuedCertificateChain in the answer); it is the
	// default when Config.CSR is set.
	CSRAPIVersion = "2025-07-01-preview"
	// DefaultRequestTimeout bounds one request/response exchange.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultTimeout bounds a whole registration when ctx has no deadline.
	DefaultTimeout = 2 * time.Minute
	// DefaultPollInterval is the wait before a poll when the service did not
	// send a Retry-After (the Node SDK's choice).
	DefaultPollInterval = 2 * time.Second
	// DefaultMaxPolls bounds the operation-status requests of one registration,
	// so that a service answering "assigning" with Retry-After 0 forever
	// cannot keep the client spinning until the deadline.
	DefaultMaxPolls = 1000
	// DefaultTokenLifetime is how long the SAS token stays valid (1 h, as in
	// the Node and Python SDKs).
	DefaultTokenLifetime = time.Hour
	// DefaultClientVersion is the ClientVersion sent in the MQTT user name.
	DefaultClientVersion = "dpsd-device-client/1.0"

	defaultHTTPSPort = "443"
	defaultMQTTPort  = "8883"
	defaultAMQPPort  = "5671"
	// maxRetryAfter caps a service-chosen wait; the C SDK uses 300 s.
	maxRetryAfter = 5 * time.Minute
)

// Config describes one device registration.
type Config struct {
	// ProvisioningHost is the service's host name, optionally with a port
	// ("dps.example.net" or "127.0.0.2:8443"). The host part is the TLS
	// server name. Without a port, HTTPS and MQTT and AMQP over WebSockets
	// use 443, MQTT uses 8883 and AMQP 5671. Empty means
	// DefaultProvisioningHost.
	ProvisioningHost string
	// DialAddr, when set, is the host:port actually connected to, while
	// ProvisioningHost still names the server for TLS and in URLs. It lets a
	// client reach a server whose name does not resolve to it.
	DialAddr string

	IDScope        string
	RegistrationID string
	// SymmetricKey is the device's own base64 key (individual enrollment,
	// or an already derived group member key).
	SymmetricKey string
	// GroupKey is an enrollment group's base64 key; the device key is
	// derived from it and RegistrationID. Used when SymmetricKey is empty.
	GroupKey string
	// Certificate, when set, makes the device attest with X.509: it is
	// presented as the TLS client certificate (leaf first, then its
	// intermediates), and no SAS token is sent. Its subject CN must be the
	// registration id.
	Certificate *tls.Certificate
	// TPM, when set, makes the device attest with its TPM (an individual
	// TPM enrollment), as the SDKs do: the register request carries its
	// endorsement and storage root keys, the service answers with a
	// challenge that the TPM activates, and the SAS tokens are signed by
	// the TPM with the identity key it imported. Over HTTPS the challenge
	// is a 401 answer; over AMQP and AMQP/WS the TPM SASL mechanism
	// carries it. No SDK offers TPM over MQTT, nor does this client.
	// client/tpm implements it.
	TPM TPM
	// CSR, when set, is a certificate signing request (DER PKCS#10, subject
	// CN = RegistrationID) sent as the register request's "csr": the
	// service issues a certificate for it, returned in the registration
	// state's IssuedCertificateChain (see IssuedCertificate). Register
	// fails when an assigned answer carries no chain, as the C SDK's
	// preview does.
	CSR []byte
	// Payload is sent as the "payload" member of the register request, for
	// custom allocation. Nil sends none.
	Payload json.RawMessage

	// Transport is the protocol; empty means TransportHTTPS.
	Transport Transport
	// TLSConfig is cloned and used for every connection; its ServerName is
	// set from ProvisioningHost when empty. Nil means a default config.
	TLSConfig *tls.Config
	// RootCAs, when set, replaces the trusted roots (e.g. dpsd's local CA).
	RootCAs *x509.CertPool

	// APIVersion is sent with every request; empty means DefaultAPIVersion.
	APIVersion string
	// ClientVersion is the ClientVersion of the MQTT user name and the
	// HTTP User-Agent; empty means DefaultClientVersion.
	ClientVersion string
	// RequestTimeout bounds each request and its answer (and the MQTT
	// connect); zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Timeout bounds the whole registration when ctx has no earlier
	// deadline; zero means DefaultTimeout.
	Timeout time.Duration
	// PollInterval is the wait before polling when the service sends no
	// Retry-After; zero means DefaultPollInterval.
	PollInterval time.Duration
	// MaxPollWait, when positive, caps the wait before each poll below the
	// service's Retry-After (a load generator may want to poll sooner than
	// a well-behaved device). Zero honours Retry-After (up to 5 minutes).
	MaxPollWait time.Duration
	// MaxPolls bounds the number of operation-status requests; zero means
	// DefaultMaxPolls.
	MaxPolls int
	// TokenLifetime is the SAS token's validity; zero means
	// DefaultTokenLifetime.
	TokenLifetime time.Duration

	// HTTPClient, when set, is used for the HTTPS transport instead of a
	// client built for this registration. Share one (see NewHTTPClient)
	// across many registrations to reuse keep-alive connections.
	HTTPClient *http.Client

	// Progress, when set, is called synchronously as the registration
	// advances; it must not block for long.
	Progress func(Event)
}

// EventKind names a step of a registration.
type EventKind int

// Registration steps reported through Config.Progress, named after the
// Azure C SDK's PROV_DEVICE_REG_STATUS values.
const (
	// EventConnected: the transport connection is up (TLS, and for MQTT
	// the CONNACK).
	EventConnected EventKind = iota + 1
	// EventRegistering: the register request is being sent.
	EventRegistering
	// EventAssigning: the service answered "assigning" (or "unassigned");
	// the client waits Event.RetryAfter and polls.
	EventAssigning
	// EventAssigned: the registration ended with status "assigned".
	EventAssigned
	// EventFailed: the registration ended with an error.
	EventFailed
)

// String returns the Azure C SDK's name for the step.
func (k EventKind) String() string {
	switch k {
	case EventConnected:
		return "PROV_DEVICE_REG_STATUS_CONNECTED"
	case EventRegistering:
		return "PROV_DEVICE_REG_STATUS_REGISTERING"
	case EventAssigning:
		return "PROV_DEVICE_REG_STATUS_ASSIGNING"
	case EventAssigned:
		return "PROV_DEVICE_REG_STATUS_ASSIGNED"
	case EventFailed:
		return "PROV_DEVICE_REG_STATUS_ERROR"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event reports progress of a registration.
type Event struct {
	Kind EventKind
	// Status is the operation status the service reported, if any.
	Status string
	// OperationID is the operation being polled, once known.
	OperationID string
	// RetryAfter is the wait before the next poll (EventAssigning).
	RetryAfter time.Duration
	// Err is the failure (EventFailed).
	Err error
}

// settings is a validated Config with defaults applied.
type settings struct {
	Config
	host       string // ProvisioningHost without port, the TLS server name
	port       string // port of ProvisioningHost, or ""
	deviceKey  string // base64
	deadline   time.Duration
	tlsConfig  *tls.Config
	resource   string // {scope}/registrations/{id}, unescaped
	userAgent  string
	pollWait   time.Duration
	maxPolls   int
	reqTimeout time.Duration
	// tpmActivated is set once the TPM imported the identity key.
	tpmActivated bool
}

// TPM is a device's TPM as TPM attestation uses it (client/tpm.Device).
type TPM interface {
	// EndorsementKey and StorageRootKey are the keys' public areas
	// (TPM2B_PUBLIC), as the SDKs send them.
	EndorsementKey() []byte
	StorageRootKey() []byte
	// ActivateIdentityKey imports the identity key of the service's
	// activation blob (authenticationKey).
	ActivateIdentityKey(blob []byte) error
	// Sign is the TPM's HMAC-SHA256 with the identity key.
	Sign(data []byte) ([]byte, error)
}

func (c *Config) settings() (*settings, error) {
	s := &settings{Config: *c}
	if s.IDScope == "" {
		return nil, errors.New("device: IDScope is required")
	}
	if s.RegistrationID == "" {
		return nil, errors.New("device: RegistrationID is required")
	}
	switch {
	case s.TPM != nil:
		switch s.Transport {
		case "", TransportHTTPS, TransportAMQP, TransportAMQPWS:
		default:
			// As in the SDKs: the TPM mechanism exists for HTTPS and AMQP.
			return nil, fmt.Errorf("device: TPM attestation is supported over https, amqp and amqp-ws, not %s", s.Transport)
		}
	case s.Certificate != nil:
		// X.509: the TLS handshake is the proof.
	case s.SymmetricKey != "":
		s.deviceKey = s.SymmetricKey
	case s.GroupKey != "":
		k, err := sas.DeriveDeviceKey(s.GroupKey, s.RegistrationID)
		if err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
		s.deviceKey = k
	default:
		return nil, errors.New("device: SymmetricKey, GroupKey, Certificate or TPM is required")
	}
	switch s.Transport {
	case "":
		s.Transport = TransportHTTPS
	case TransportHTTPS, TransportMQTT, TransportMQTTWS, TransportAMQP, TransportAMQPWS:
	default:
		return nil, fmt.Errorf("device: unknown transport %q (want https, mqtt, mqtt-ws, amqp or amqp-ws)", s.Transport)
	}
	if s.ProvisioningHost == "" {
		s.ProvisioningHost = DefaultProvisioningHost
	}
	host, port, err := splitHostPort(s.ProvisioningHost)
	if err != nil {
		return nil, fmt.Errorf("device: provisioning host: %w", err)
	}
	s.host, s.port = host, port
	if s.APIVersion == "" && len(s.CSR) > 0 {
		s.APIVersion = CSRAPIVersion
	}
	if s.APIVersion == "" {
		s.APIVersion = DefaultAPIVersion
	}
	if s.ClientVersion == "" {
		s.ClientVersion = DefaultClientVersion
	}
	s.userAgent = s.ClientVersion
	s.reqTimeout = orDefault(s.RequestTimeout, DefaultRequestTimeout)
	s.deadline = orDefault(s.Timeout, DefaultTimeout)
	s.pollWait = orDefault(s.PollInterval, DefaultPollInterval)
	s.TokenLifetime = orDefault(s.TokenLifetime, DefaultTokenLifetime)
	s.maxPolls = s.MaxPolls
	if s.maxPolls <= 0 {
		s.maxPolls = DefaultMaxPolls
	}
	s.tlsConfig = buildTLSConfig(s.TLSConfig, s.RootCAs, host)
	if s.Certificate != nil {
		s.tlsConfig.Certificates = []tls.Certificate{*s.Certificate}
	}
	s.resource = s.IDScope + "/registrations/" + s.RegistrationID
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// splitHostPort accepts "host", "host:port", "[v6]" and "[v6]:port".
func splitHostPort(hp string) (host, port string, err error) {
	if h, p, err := net.SplitHostPort(hp); err == nil {
		if h == "" {
			return "", "", fmt.Errorf("%q has no host", hp)
		}
		return h, p, nil
	}
	h := strings.TrimSuffix(strings.TrimPrefix(hp, "["), "]")
	if h == "" || strings.ContainsAny(h, "/?#@ ") {
		return "", "", fmt.Errorf("invalid host %q", hp)
	}
	return h, "", nil
}

// buildTLSConfig clones base (or starts empty), installs roots and sets the
// server name so that DialAddr overrides keep verifying the real name.
func buildTLSConfig(base *tls.Config, roots *x509.CertPool, serverName string) *tls.Config {
	var c *tls.Config
	if base != nil {
		c = base.Clone()
	} else {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if roots != nil {
		c.RootCAs = roots
	}
	if c.ServerName == "" {
		c.ServerName = serverName
	}
	return c
}

// addr returns the host:port to connect to for the transport's default port.
func (s *settings) addr(defaultPort string) string {
	if s.DialAddr != "" {
		return s.DialAddr
	}
	return net.JoinHostPort(s.host, s.portOr(defaultPort))
}

func (s *settings) portOr(def string) string {
	if s.port != "" {
		return s.port
	}
	return def
}

// hostPort is ProvisioningHost as it goes into URLs and Host headers: the
// default port is left out, as browsers and SDKs do.
func (s *settings) hostPort(defaultPort string) string {
	p := s.portOr(defaultPort)
	if p == defaultPort {
		if strings.Contains(s.host, ":") {
			return "[" + s.host + "]"
		}
		return s.host
	}
	return net.JoinHostPort(s.host, p)
}

// token returns a fresh SAS token for the registration. sr is percent-encoded
// the way the C# and Python SDKs do it; the service signs sr as sent.
// A device that attests with a certificate has no token: "" is returned.
func (s *settings) token(now time.Time) (string, error) {
	if s.Certificate != nil {
		return "", nil
	}
	if s.TPM != nil {
		if !s.tpmActivated {
			// The first request carries no proof: its answer is the
			// challenge.
			return "", nil
		}
		sr := url.QueryEscape(s.resource)
		se := strconv.FormatInt(now.Add(s.TokenLifetime).Unix(), 10)
		sig, err := s.TPM.Sign([]byte(sr + "\n" + se))
		if err != nil {
			return "", fmt.Errorf("device: sign SAS token with the TPM: %w", err)
		}
		return "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString(sig)) + "&se=" + se + "&skn=registration", nil
	}
	tok, err := sas.New(url.QueryEscape(s.resource), "registration", s.deviceKey, now.Add(s.TokenLifetime))
	if err != nil {
		return "", fmt.Errorf("device: sign SAS token: %w", err)
	}
	return tok, nil
}

func (s *settings) progress(e Event) {
	if s.Progress != nil {
		s.Progress(e)
	}
}

// DialAddress returns the host:port Register connects to for c's transport:
// DialAddr when set, else ProvisioningHost with the transport's default
// port. Load generators use it to check where their traffic goes.
func (c Config) DialAddress() (string, error) {
	cc := c
	// settings() insists on an identity; the address does not depend on it.
	cc.IDScope, cc.RegistrationID, cc.SymmetricKey = "x", "x", "eA=="
	s, err := cc.settings()
	if err != nil {
		return "", err
	}
	switch s.Transport {
	case TransportMQTT:
		return s.addr(defaultMQTTPort), nil
	case TransportAMQP:
		return s.addr(defaultAMQPPort), nil
	}
	return s.addr(defaultHTTPSPort), nil
}
