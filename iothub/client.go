package iothub

import (
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
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/dps"
	"github.com/dpsd/dpsd/hub"
	"github.com/dpsd/dpsd/sas"
)

// AdminClient talks to the built-in hub management API of a running dpsd
// with its service connection string. The CLI uses it.
type AdminClient struct {
	base     string
	resource string
	keyName  string
	key      string
	hc       *http.Client
}

// AdminClientOptions configure an AdminClient.
type AdminClientOptions struct {
	// CAFiles are PEM files of CAs to trust besides the system roots.
	CAFiles []string
	// DialAddr, when set, is dialed instead of the connection string's
	// host, which still names the service for TLS and the token.
	DialAddr string
}

// NewAdminClient returns a client for the dpsd named by a service
// connection string ("HostName=...;SharedAccessKeyName=...;SharedAccessKey=...").
func NewAdminClient(connectionString string, o AdminClientOptions) (*AdminClient, error) {
	cs, err := sas.ParseConnectionString(connectionString)
	if err != nil {
		return nil, err
	}
	if cs.SharedAccessKeyName == "" {
		return nil, errors.New("service connection string needs SharedAccessKeyName")
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	for _, f := range o.CAFiles {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", f)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if o.DialAddr != "" {
		d := &net.Dialer{Timeout: 10 * time.Second}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, o.DialAddr)
		}
	}
	// The service checks sr against its host name without the port.
	resource := cs.HostName
	if h, _, err := net.SplitHostPort(cs.HostName); err == nil {
		resource = h
	}
	return &AdminClient{
		base:     "https://" + cs.HostName + AdminPathPrefix,
		resource: resource,
		keyName:  cs.SharedAccessKeyName,
		key:      cs.SharedAccessKey,
		hc:       &http.Client{Transport: tr, Timeout: 60 * time.Second},
	}, nil
}

// List lists the hubs.
func (c *AdminClient) List(ctx context.Context) ([]*Info, error) {
	var out []*Info
	return out, c.do(ctx, http.MethodGet, "", nil, &out)
}

// Create creates a hub.
func (c *AdminClient) Create(ctx context.Context, name string, req CreateRequest) (*Info, error) {
	var out Info
	return &out, c.do(ctx, http.MethodPut, "/"+url.PathEscape(name), req, &out)
}

// Show describes a hub.
func (c *AdminClient) Show(ctx context.Context, name string) (*Info, error) {
	var out Info
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name), nil, &out)
}

// Delete deletes a hub and its devices.
func (c *AdminClient) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/"+url.PathEscape(name), nil, nil)
}

// Devices lists a page of a hub's devices.
func (c *AdminClient) Devices(ctx context.Context, name, after string, top int) (*DeviceList, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if top > 0 {
		q.Set("top", strconv.Itoa(top))
	}
	var out DeviceList
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/devices?"+q.Encode(), nil, &out)
}

// Device shows one device identity.
func (c *AdminClient) Device(ctx context.Context, name, id string) (*hub.Device, error) {
	var out hub.Device
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/devices/"+url.PathEscape(id), nil, &out)
}

// Twin shows one device twin.
func (c *AdminClient) Twin(ctx context.Context, name, id string) (*hub.Twin, error) {
	var out hub.Twin
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/devices/"+url.PathEscape(id)+"/twin", nil, &out)
}

// Messages lists telemetry a hub received.
func (c *AdminClient) Messages(ctx context.Context, name, deviceID string, after int64, top int) ([]Message, error) {
	q := url.Values{}
	if deviceID != "" {
		q.Set("deviceId", deviceID)
	}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	if top > 0 {
		q.Set("top", strconv.Itoa(top))
	}
	var out []Message
	return out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/messages?"+q.Encode(), nil, &out)
}

func (c *AdminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	tok, err := sas.New(c.resource, c.keyName, c.key, time.Now().Add(time.Hour))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var de dps.Error
		if json.Unmarshal(data, &de) == nil && de.Message != "" {
			return &de
		}
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil && len(data) > 0 {
		if err := decodeJSON(data, out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}
