package builtinhub

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
)

// adminTimeout bounds one management call, so a dpsd that accepts the
// connection but never answers does not hang the caller.
const adminTimeout = time.Minute

// AdminClient talks to the built-in hub management API of a running dpsd:
// a typed wrapper over a service client, which signs, sends and decodes
// errors for it. The CLI uses it.
type AdminClient struct {
	svc *service.Client
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
	var opts []service.Option
	for _, f := range o.CAFiles {
		opts = append(opts, service.WithCAFile(f))
	}
	if o.DialAddr != "" {
		opts = append(opts, service.WithDialAddr(o.DialAddr))
	}
	svc, err := service.New(connectionString, opts...)
	if err != nil {
		return nil, err
	}
	return AdminClientFor(svc), nil
}

// AdminClientFor returns a client that reaches the management API through
// svc, a client of the dpsd that runs the hubs.
func AdminClientFor(svc *service.Client) *AdminClient {
	return &AdminClient{svc: svc}
}

// List lists the hubs.
func (c *AdminClient) List(ctx context.Context) ([]*Info, error) {
	var out []*Info
	return out, c.do(ctx, http.MethodGet, "", nil, nil, &out)
}

// Create creates a hub.
func (c *AdminClient) Create(ctx context.Context, name string, req CreateRequest) (*Info, error) {
	var out Info
	return &out, c.do(ctx, http.MethodPut, "/"+url.PathEscape(name), nil, req, &out)
}

// Show describes a hub.
func (c *AdminClient) Show(ctx context.Context, name string) (*Info, error) {
	var out Info
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name), nil, nil, &out)
}

// Delete deletes a hub and its devices.
func (c *AdminClient) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/"+url.PathEscape(name), nil, nil, nil)
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
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/devices", q, nil, &out)
}

// Device shows one device identity.
func (c *AdminClient) Device(ctx context.Context, name, id string) (*azurehub.Device, error) {
	var out azurehub.Device
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/devices/"+url.PathEscape(id), nil, nil, &out)
}

// Twin shows one device twin.
func (c *AdminClient) Twin(ctx context.Context, name, id string) (*azurehub.Twin, error) {
	var out azurehub.Twin
	return &out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/devices/"+url.PathEscape(id)+"/twin", nil, nil, &out)
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
	return out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/messages", q, nil, &out)
}

// WaitMessages is Messages as a long poll: when there are no messages
// after after, the hub answers when one comes, or after wait with none.
func (c *AdminClient) WaitMessages(ctx context.Context, name, deviceID string, after int64, wait time.Duration) ([]Message, error) {
	q := url.Values{}
	if deviceID != "" {
		q.Set("deviceId", deviceID)
	}
	q.Set("after", strconv.FormatInt(after, 10))
	q.Set("wait", strconv.Itoa(max(1, int(wait/time.Second))))
	var out []Message
	return out, c.do(ctx, http.MethodGet, "/"+url.PathEscape(name)+"/messages", q, nil, &out)
}

// C2DSend is a cloud-to-device message to send: Body is text, or base64
// with BodyEncoding "base64".
type C2DSend struct {
	C2DMessage
	Body         string `json:"body"`
	BodyEncoding string `json:"bodyEncoding,omitempty"`
}

// SendC2D queues a cloud-to-device message for a device and returns its
// message id.
func (c *AdminClient) SendC2D(ctx context.Context, name, deviceID string, m *C2DSend) (string, error) {
	var out struct {
		MessageID string `json:"messageId"`
	}
	err := c.do(ctx, http.MethodPost, "/"+url.PathEscape(name)+"/devices/"+url.PathEscape(deviceID)+"/messages", nil, m, &out)
	return out.MessageID, err
}

// do sends one request below AdminPathPrefix. The answer is decoded here
// rather than by the service client, with numbers kept exact, as twins need.
func (c *AdminClient) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	return c.send(ctx, method, path, query, "", in, out)
}

// doMatch is do with an If-Match header.
func (c *AdminClient) doMatch(ctx context.Context, method, path, ifMatch string, in, out any) error {
	return c.send(ctx, method, path, nil, ifMatch, in, out)
}

func (c *AdminClient) send(ctx context.Context, method, path string, query url.Values, ifMatch string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	var raw json.RawMessage
	if err := c.svc.Do(ctx, method, AdminPathPrefix+path, query, in, &raw, ifMatch); err != nil {
		return err
	}
	if out != nil && len(raw) > 0 {
		if err := decodeJSON(raw, out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}
