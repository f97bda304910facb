package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/sas"
)

// APIVersion is the api-version every request of Azure's service API
// carries.
const APIVersion = "2021-10-01"

// DefaultUserAgent is sent when no WithUserAgent option is given.
const DefaultUserAgent = "dpsd-service-client/1.0"

// tokenTTL is how long each request's token is valid; the Azure SDKs use 1 h.
const tokenTTL = time.Hour

// Bounds on how much of a response the client reads, so a misbehaving server
// cannot exhaust memory.
const (
	maxBodyBytes  = 64 << 20
	maxErrorBytes = 64 << 10
)

// Client talks to one provisioning service. It is safe for concurrent use.
type Client struct {
	baseURL   string // "https://" + HostName
	resource  string // SAS sr: HostName without a port
	keyName   string
	key       string
	hc        *http.Client
	userAgent string
	now       func() time.Time
}

type options struct {
	caPool    *x509.CertPool
	caFiles   []string
	dialAddr  string
	hc        *http.Client
	userAgent string
}

// Option configures a Client.
type Option func(*options)

// WithCAPool makes the client trust the certificate authorities in pool
// instead of the system roots.
func WithCAPool(pool *x509.CertPool) Option {
	return func(o *options) { o.caPool = pool }
}

// WithCAFile makes the client trust the PEM certificates in path, in addition
// to the system roots (or the WithCAPool pool). It may be given more than once.
func WithCAFile(path string) Option {
	return func(o *options) { o.caFiles = append(o.caFiles, path) }
}

// WithDialAddr makes the client connect to addr ("host:port") while still
// using the connection string's HostName for TLS verification, the Host
// header and the token. This reaches a service whose name does not resolve,
// such as a local dpsd listening on a loopback address.
func WithDialAddr(addr string) Option {
	return func(o *options) { o.dialAddr = addr }
}

// WithHTTPClient makes the client send requests through hc. It cannot be
// combined with WithCAPool, WithCAFile or WithDialAddr, which configure the
// client's own transport.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) { o.hc = hc }
}

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option {
	return func(o *options) { o.userAgent = ua }
}

// New returns a client for the service named by a service connection string.
func New(connectionString string, opts ...Option) (*Client, error) {
	cs, err := sas.ParseConnectionString(connectionString)
	if err != nil {
		return nil, fmt.Errorf("service client: %w", err)
	}
	if cs.DeviceID != "" || cs.SharedAccessKeyName == "" {
		return nil, errors.New("service client: not a service connection string (needs SharedAccessKeyName, not DeviceId)")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	host := strings.TrimSpace(cs.HostName)
	if strings.ContainsAny(host, "/?#@ ") {
		return nil, fmt.Errorf("service client: HostName %q is not a host name", host)
	}
	resource := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		resource = h
	}
	hc := o.hc
	if hc != nil {
		if o.caPool != nil || len(o.caFiles) > 0 || o.dialAddr != "" {
			return nil, errors.New("service client: WithHTTPClient cannot be combined with CA or dial options")
		}
	} else {
		hc, err = newHTTPClient(&o)
		if err != nil {
			return nil, fmt.Errorf("service client: %w", err)
		}
	}
	ua := o.userAgent
	if ua == "" {
		ua = DefaultUserAgent
	}
	return &Client{
		baseURL:   "https://" + host,
		resource:  resource,
		keyName:   cs.SharedAccessKeyName,
		key:       cs.SharedAccessKey,
		hc:        hc,
		userAgent: ua,
		now:       time.Now,
	}, nil
}

// HostName is the service host name (with its port, if any) the client uses.
func (c *Client) HostName() string { return strings.TrimPrefix(c.baseURL, "https://") }

func newHTTPClient(o *options) (*http.Client, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.caPool != nil || len(o.caFiles) > 0 {
		// Keep the system roots so an explicit CA adds trust rather than
		// replacing it (a real Azure endpoint keeps working).
		pool, err := localca.PoolWithFiles(o.caPool, o.caFiles...)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	t.TLSClientConfig = tc
	if o.dialAddr != "" {
		addr := o.dialAddr
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		t.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
		// A proxy would be asked for HostName, which is the name that does
		// not resolve; the override means "go straight there".
		t.Proxy = nil
	}
	return &http.Client{Transport: t}, nil
}

// request is one call of the service API.
type request struct {
	op     string // for error messages: `get enrollment "x"`
	method string
	path   string     // already escaped, starting with '/'
	query  url.Values // nil for none
	// extraQuery is added to the query do sets.
	extraQuery url.Values
	ifMatch    string
	header     map[string]string
	body       any // JSON-encoded when not nil
	out        any // decoded from a 200 answer when not nil
}

// do sends r as a call of Azure's service API, which carries the
// api-version, and returns the response headers of a successful answer.
func (c *Client) do(ctx context.Context, r *request) (http.Header, error) {
	r.query = url.Values{"api-version": {APIVersion}}
	for k, v := range r.extraQuery {
		r.query[k] = v
	}
	h, err := c.send(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.op, err)
	}
	return h, nil
}

// Do sends one request to an endpoint the typed methods do not cover, such
// as dpsd's extension API under /dpsd/, signed, sent and decoded as theirs
// are. path is already escaped and starts with '/'. query is sent as it is
// (nil for none): no api-version is added, because the extension API is
// not versioned. body is sent as JSON when not nil; out is decoded from a
// 2xx answer other than 204 when not nil; ifMatch, when not empty, is sent
// as If-Match.
//
// Errors answered by the service are *dps.Error, as from the typed methods,
// but not wrapped with an operation: the caller knows what it was doing.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any, ifMatch string) error {
	_, err := c.send(ctx, &request{method: method, path: path, query: query, ifMatch: ifMatch, body: body, out: out})
	return err
}

func (c *Client) send(ctx context.Context, r *request) (http.Header, error) {
	var body io.Reader = http.NoBody
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := c.baseURL + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return nil, err
	}
	token, err := sas.New(c.resource, c.keyName, c.key, c.now().Add(tokenTTL))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", token)
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if r.ifMatch != "" {
		req.Header.Set("If-Match", r.ifMatch)
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeError(resp)
	}
	if r.out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxBodyBytes)).Decode(r.out); err != nil {
			return nil, fmt.Errorf("decode response (HTTP %d): %w", resp.StatusCode, err)
		}
	}
	// Drain so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBytes))
	return resp.Header, nil
}

// decodeError turns an error answer into a *dps.Error. Besides the DPS body it
// understands the gateway form {"Message":"ErrorCode:X;text"} and bodies that
// are not JSON at all, so callers always get an error code to test.
func decodeError(resp *http.Response) *dps.Error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	var body struct {
		ErrorCode    json.Number       `json:"errorCode"`
		Code         json.Number       `json:"code"`
		TrackingID   string            `json:"trackingId"`
		Message      string            `json:"message"`
		TimestampUTC string            `json:"timestampUtc"`
		Info         map[string]string `json:"info"`
		// Gateway format.
		GatewayMessage   string `json:"Message"`
		ExceptionMessage string `json:"ExceptionMessage"`
	}
	e := &dps.Error{}
	if json.Unmarshal(data, &body) == nil {
		e.TrackingID = body.TrackingID
		e.Message = body.Message
		e.Info = body.Info
		if ts, err := time.Parse(time.RFC3339Nano, body.TimestampUTC); err == nil {
			e.TimestampUTC = ts
		}
		for _, n := range []json.Number{body.ErrorCode, body.Code} {
			if v, err := n.Int64(); err == nil && v != 0 {
				e.ErrorCode = int(v)
				break
			}
		}
		if e.Message == "" && body.GatewayMessage != "" {
			e.Message = body.GatewayMessage
		}
	} else if s := strings.TrimSpace(string(data)); s != "" && len(s) < 512 {
		e.Message = s
	}
	if e.ErrorCode == 0 {
		if v, err := strconv.Atoi(resp.Header.Get(dps.HeaderErrorCode)); err == nil && v/1000 == resp.StatusCode {
			e.ErrorCode = v
		} else {
			e.ErrorCode = resp.StatusCode * 1000
		}
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
		if e.Message == "" {
			e.Message = "HTTP " + strconv.Itoa(resp.StatusCode)
		}
	}
	return e
}
