package device

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"time"
)

// maxBody bounds what is read of a response; real answers are below 4 KiB
// plus the custom allocation payload.
const maxBody = 1 << 20

// NewHTTPClient returns an HTTP client for the HTTPS transport built from
// cfg's TLS settings (TLSConfig, RootCAs, the server name of
// ProvisioningHost) and DialAddr. Set it as Config.HTTPClient of many
// registrations to share keep-alive connections; its Transport is an
// *http.Transport that callers may tune further (e.g. DisableKeepAlives).
func NewHTTPClient(cfg Config) (*http.Client, error) {
	c := cfg
	// settings() insists on an identity; the client does not need one.
	c.IDScope, c.RegistrationID, c.SymmetricKey = "x", "x", "eA=="
	c.Transport = TransportHTTPS
	s, err := c.settings()
	if err != nil {
		return nil, err
	}
	return newHTTPClient(s), nil
}

func newHTTPClient(s *settings) *http.Client {
	dialer := &net.Dialer{Timeout: s.reqTimeout, KeepAlive: 30 * time.Second}
	dialAddr := s.DialAddr
	tr := &http.Transport{
		// Never a proxy from the environment: the target is named exactly.
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if dialAddr != "" {
				addr = dialAddr
			}
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:     s.tlsConfig,
		TLSHandshakeTimeout: s.reqTimeout,
		// Many concurrent registrations against one host must be able to
		// keep their connections (the default keeps only 2 idle).
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: tr,
		// DPS never redirects; following one could leak the SAS token.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type httpsSession struct {
	s       *settings
	client  *http.Client
	own     bool   // client was built for this session
	base    string // https://host[:port]/{scope}/registrations/{id}
	token   string
	started bool // first request sent (the Connected event is due)
}

func openHTTPS(s *settings) (*httpsSession, error) {
	tok, err := s.token(time.Now())
	if err != nil {
		return nil, err
	}
	h := &httpsSession{s: s, client: s.HTTPClient, token: tok}
	if h.client == nil {
		h.client, h.own = newHTTPClient(s), true
	}
	h.base = "https://" + s.hostPort(defaultHTTPSPort) + "/" + url.PathEscape(s.IDScope) +
		"/registrations/" + url.PathEscape(s.RegistrationID)
	return h, nil
}

func (h *httpsSession) register(ctx context.Context, body []byte) (*answer, error) {
	return h.do(ctx, http.MethodPut, h.base+"/register", body)
}

func (h *httpsSession) poll(ctx context.Context, operationID string) (*answer, error) {
	return h.do(ctx, http.MethodGet, h.base+"/operations/"+url.PathEscape(operationID), nil)
}

func (h *httpsSession) close() {
	if h.own {
		h.client.CloseIdleConnections()
	}
}

func (h *httpsSession) do(ctx context.Context, method, u string, body []byte) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, h.s.reqTimeout)
	defer cancel()
	if !h.started && h.s.Progress != nil {
		// The connection the register request gets is the moment the SDKs
		// report "connected"; the request goes out right after.
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			GotConn: func(httptrace.GotConnInfo) {
				h.s.progress(Event{Kind: EventConnected})
				h.s.progress(Event{Kind: EventRegistering})
			},
		})
	}
	h.started = true
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u+"?api-version="+url.QueryEscape(h.s.APIVersion), rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if h.token != "" {
		req.Header.Set("Authorization", h.token)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", h.s.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("read %d response: %w", resp.StatusCode, err)
	}
	// Drain what is left so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	a := &answer{status: resp.StatusCode, body: data}
	a.retryAfter, a.hasRetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
	return a, nil
}
