package azurehub

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/dpsd/dpsd/internal/sas"
)

// Defaults of a Client.
const (
	DefaultMaxAttempts = 4
	DefaultBaseBackoff = 500 * time.Millisecond
	// maxBackoff caps one wait, including a Retry-After the hub asks for.
	maxBackoff = 30 * time.Second
	tokenTTL   = time.Hour
	// tokenMargin: a cached token is replaced this long before it expires.
	tokenMargin = 5 * time.Minute
	maxBody     = 1 << 20
	userAgent   = "dpsd-hub-client/1.0"
)

// Client is a service-side client of one IoT hub's REST API (identity
// registry and twins), authenticated with a shared access policy of the
// hub. It retries throttled (429) and failed (5xx, network) requests a
// bounded number of times with exponential backoff, honouring Retry-After.
// It is safe for concurrent use.
type Client struct {
	cs          sas.ConnectionString
	base        string
	hc          *http.Client
	maxAttempts int
	backoff     time.Duration

	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

// ClientOption configures a Client.
type ClientOption func(*clientOptions)

type clientOptions struct {
	hc          *http.Client
	roots       *x509.CertPool
	dialAddr    string
	maxAttempts int
	backoff     time.Duration
}

// WithHTTPClient sends requests through hc instead of a default client.
func WithHTTPClient(hc *http.Client) ClientOption {
	return func(o *clientOptions) { o.hc = hc }
}

// WithRootCAs makes the default transport trust only pool.
func WithRootCAs(pool *x509.CertPool) ClientOption {
	return func(o *clientOptions) { o.roots = pool }
}

// WithDialAddr makes the default transport connect to addr ("ip:port")
// while keeping the connection string's HostName for TLS, the Host header
// and the token: it reaches a hub whose name does not resolve.
func WithDialAddr(addr string) ClientOption {
	return func(o *clientOptions) { o.dialAddr = addr }
}

// WithRetry sets how many times a request is tried in all (1 = no retry)
// and the first backoff, which doubles with each retry.
func WithRetry(attempts int, backoff time.Duration) ClientOption {
	return func(o *clientOptions) { o.maxAttempts, o.backoff = attempts, backoff }
}

// NewClient returns a client for the hub named by a hub connection string
// ("HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."), whose
// policy needs RegistryWrite and ServiceConnect (iothubowner has both).
func NewClient(cs *sas.ConnectionString, opts ...ClientOption) (*Client, error) {
	if cs == nil || cs.HostName == "" || cs.SharedAccessKeyName == "" || cs.SharedAccessKey == "" {
		return nil, errors.New("hub: connection string needs HostName, SharedAccessKeyName and SharedAccessKey")
	}
	o := clientOptions{maxAttempts: DefaultMaxAttempts, backoff: DefaultBaseBackoff}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxAttempts < 1 {
		o.maxAttempts = 1
	}
	hc := o.hc
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.roots}
		if o.dialAddr != "" {
			d := &net.Dialer{Timeout: 10 * time.Second}
			addr := o.dialAddr
			tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			}
		}
		hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	return &Client{
		cs:          *cs,
		base:        "https://" + cs.HostName,
		hc:          hc,
		maxAttempts: o.maxAttempts,
		backoff:     o.backoff,
	}, nil
}

// HostName is the hub's host name.
func (c *Client) HostName() string { return c.cs.HostName }

// CreateDevice creates a device (PUT without If-Match).
func (c *Client) CreateDevice(ctx context.Context, d *Device) (*Device, error) {
	var out Device
	if err := c.do(ctx, http.MethodPut, "/devices/"+url.PathEscape(d.DeviceID), "", d, &out); err != nil {
		return nil, fmt.Errorf("create device %q: %w", d.DeviceID, err)
	}
	return &out, nil
}

// UpdateDevice replaces an existing device; etag "" is sent as "*".
func (c *Client) UpdateDevice(ctx context.Context, d *Device, etag string) (*Device, error) {
	var out Device
	if err := c.do(ctx, http.MethodPut, "/devices/"+url.PathEscape(d.DeviceID), ifMatch(etag), d, &out); err != nil {
		return nil, fmt.Errorf("update device %q: %w", d.DeviceID, err)
	}
	return &out, nil
}

// GetDevice returns a device identity.
func (c *Client) GetDevice(ctx context.Context, id string) (*Device, error) {
	var out Device
	if err := c.do(ctx, http.MethodGet, "/devices/"+url.PathEscape(id), "", nil, &out); err != nil {
		return nil, fmt.Errorf("get device %q: %w", id, err)
	}
	return &out, nil
}

// DeleteDevice deletes a device; etag "" is sent as "*".
func (c *Client) DeleteDevice(ctx context.Context, id, etag string) error {
	if err := c.do(ctx, http.MethodDelete, "/devices/"+url.PathEscape(id), ifMatch(etag), nil, nil); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	return nil
}

// GetTwin returns a device twin.
func (c *Client) GetTwin(ctx context.Context, id string) (*Twin, error) {
	var out Twin
	if err := c.do(ctx, http.MethodGet, "/twins/"+url.PathEscape(id), "", nil, &out); err != nil {
		return nil, fmt.Errorf("get twin %q: %w", id, err)
	}
	return &out, nil
}

// UpdateTwin merges patch into a twin (PATCH); etag "" is sent as "*".
func (c *Client) UpdateTwin(ctx context.Context, id string, patch *Twin, etag string) (*Twin, error) {
	var out Twin
	if err := c.do(ctx, http.MethodPatch, "/twins/"+url.PathEscape(id), ifMatch(etag), twinBody(patch), &out); err != nil {
		return nil, fmt.Errorf("update twin %q: %w", id, err)
	}
	return &out, nil
}

// ReplaceTwin replaces a twin's tags and desired properties (PUT); etag ""
// is sent as "*".
func (c *Client) ReplaceTwin(ctx context.Context, id string, twin *Twin, etag string) (*Twin, error) {
	var out Twin
	if err := c.do(ctx, http.MethodPut, "/twins/"+url.PathEscape(id), ifMatch(etag), twinBody(twin), &out); err != nil {
		return nil, fmt.Errorf("replace twin %q: %w", id, err)
	}
	return &out, nil
}

// twinBody keeps only what a twin write may carry: tags and desired.
func twinBody(t *Twin) *Twin {
	b := &Twin{Tags: t.Tags}
	if b.Tags == nil {
		b.Tags = map[string]any{}
	}
	desired := map[string]any{}
	if t.Properties != nil && t.Properties.Desired != nil {
		desired = t.Properties.Desired
	}
	b.Properties = &TwinProperties{Desired: desired}
	return b
}

// ifMatch formats an etag for If-Match: quoted, or a bare "*".
func ifMatch(etag string) string {
	if etag == "" || etag == "*" {
		return "*"
	}
	return `"` + strings.Trim(etag, `"`) + `"`
}

// do sends one request, retrying temporary failures, and decodes a JSON
// answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path, match string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	wait := c.backoff
	var lastErr error
	for attempt := 1; ; attempt++ {
		err := c.once(ctx, method, path, match, body, out)
		if err == nil {
			return nil
		}
		lastErr = err
		var he *Error
		retryable := !errors.As(err, &he) || he.Temporary()
		if ctx.Err() != nil || !retryable || attempt >= c.maxAttempts {
			return lastErr
		}
		d := wait + rand.N(wait/2+1) // jitter spreads out retrying callers
		if he != nil && he.RetryAfter > d {
			d = he.RetryAfter
		}
		d = min(d, maxBackoff)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return lastErr
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

func (c *Client) once(ctx context.Context, method, path, match string, body []byte, out any) error {
	u := c.base + path + "?api-version=" + APIVersion
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	tok, err := c.sasToken()
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Request-Id", uuid.NewString())
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if match != "" {
		req.Header.Set("If-Match", match)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode >= 300 {
		return parseError(resp.StatusCode, resp.Header, data)
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber() // twin values keep their exact numbers
		if err := dec.Decode(out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}

// sasToken returns a cached token for the hub, re-signed shortly before it
// expires. sr is the host name as the connection string spells it, as the
// Azure SDKs sign it.
func (c *Client) sasToken() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.token != "" && now.Add(tokenMargin).Before(c.tokenExp) {
		return c.token, nil
	}
	exp := now.Add(tokenTTL)
	tok, err := sas.New(url.QueryEscape(c.cs.HostName), c.cs.SharedAccessKeyName, c.cs.SharedAccessKey, exp)
	if err != nil {
		return "", err
	}
	c.token, c.tokenExp = tok, exp
	return tok, nil
}

// RegistryStatistics is the answer of GET /statistics/devices.
type RegistryStatistics struct {
	TotalDeviceCount    int64 `json:"totalDeviceCount"`
	EnabledDeviceCount  int64 `json:"enabledDeviceCount"`
	DisabledDeviceCount int64 `json:"disabledDeviceCount"`
}

// DeviceStatistics reads the hub's device registry statistics: the
// cheapest authenticated call of the REST API, which dpsd uses to check a
// hub's health. It is tried once, never retried: a health check wants to
// know whether the hub answers now.
func (c *Client) DeviceStatistics(ctx context.Context) (*RegistryStatistics, error) {
	var out RegistryStatistics
	if err := c.once(ctx, http.MethodGet, "/statistics/devices", "", nil, &out); err != nil {
		return nil, fmt.Errorf("registry statistics: %w", err)
	}
	return &out, nil
}

// MethodRequest is a direct method call (POST /twins/{id}/methods).
type MethodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload,omitempty"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds,omitempty"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds,omitempty"`
}

// MethodResult is the device's answer to a direct method.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// InvokeMethod calls a direct method on a connected device and returns its
// answer. It is not retried: a method may have effects.
func (c *Client) InvokeMethod(ctx context.Context, id string, req *MethodRequest) (*MethodResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	var out MethodResult
	if err := c.once(ctx, http.MethodPost, "/twins/"+url.PathEscape(id)+"/methods", "", body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
