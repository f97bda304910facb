package allocate

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/webhooksig"
)

// Azure's retry policy for webhooks that answer 429 or 5xx: up to 10
// retries, the first after 1 s, each wait 9 s longer than the one before
// (1, 10, 19, …, 82 s; 415 s in all).
const (
	DefaultRetries       = 10
	DefaultInitialWait   = 1 * time.Second
	DefaultWaitIncrement = 9 * time.Second
)

// Bounds of one webhook call.
const (
	// DefaultAttemptTimeout bounds one attempt from dialing to the last
	// byte of the answer. Azure documents no timeout; 30 s leaves a slow
	// function cold start time to answer while bounding a dead one.
	DefaultAttemptTimeout = 30 * time.Second
	// DefaultMaxResponseBytes bounds the answer read; an allocation
	// response is a hub name, a twin and a payload.
	DefaultMaxResponseBytes = 64 << 10
)

// UserAgent is sent with every webhook request.
const UserAgent = "dpsd-custom-allocation/1.0"

// WebhookOptions configure a Webhook. The zero value is Azure's behaviour
// with the system's trusted CAs.
type WebhookOptions struct {
	// CAPool, when set, is the set of CAs trusted for HTTPS webhooks
	// instead of the system roots (build it from x509.SystemCertPool to
	// keep them).
	CAPool *x509.CertPool
	// CAFiles are PEM files of CA certificates trusted in addition to the
	// system roots (or to CAPool).
	CAFiles []string
	// HTTPClient replaces the built-in client (CAPool, CAFiles and
	// Targets are then ignored). Its redirects should be disabled, as the
	// built-in ones are.
	HTTPClient *http.Client
	// ClientCertificate, when set, gives the TLS client certificate
	// presented to HTTPS webhooks that ask for one (mutual TLS), at every
	// handshake; nil presents none.
	ClientCertificate func() (*tls.Certificate, error)
	// Targets decides which addresses webhooks may be called at; nil
	// means ParseTargets("") (TargetsLocal, nothing of the node's own).
	Targets *Targets

	AttemptTimeout   time.Duration // default DefaultAttemptTimeout
	MaxResponseBytes int64         // default DefaultMaxResponseBytes
	// Retries, InitialWait and WaitIncrement change the retry schedule
	// (defaults: Azure's). Retries < 0 means none.
	Retries                    int
	InitialWait, WaitIncrement time.Duration

	// Sleep waits d or until ctx ends, returning ctx.Err() then; Now reads
	// the clock. Tests replace both so no test waits for a retry.
	Sleep func(ctx context.Context, d time.Duration) error
	Now   func() time.Time

	// MaxConcurrent and MaxConcurrentPerGroup bound the calls in flight,
	// on the node and per enrollment group (individual enrollments: per
	// webhook URL); defaults DefaultMaxConcurrent and
	// DefaultMaxConcurrentPerGroup. A call that finds no slot within its
	// attempt timeout counts as a failed attempt and is retried on the
	// schedule, like a webhook that answered 429.
	MaxConcurrent, MaxConcurrentPerGroup int

	// Signer, when set, gives the secrets every request is signed with
	// (Standard Webhooks headers; see package webhooksig).
	Signer Signer

	// Audit, when set, records every custom allocation.
	Audit *alloclog.Log
	// Observer, when set, is told of every webhook call and policy
	// evaluation of a registration, and of how each custom allocation
	// ended (*metrics.Metrics is one). Trials (dpsd webhook test) are not
	// reported.
	Observer Observer
	Logger   *slog.Logger
}

// Observer is told about custom allocations, for metrics. group is the
// enrollment group's id, "" for an individual enrollment; method is
// MethodWebhook or MethodPolicy.
type Observer interface {
	// CustomAttempt: one webhook call (answered or not) or policy
	// evaluation took d.
	CustomAttempt(group, method string, d time.Duration)
	// CustomOutcome: a custom allocation ended, with outcome the row of
	// Azure's outcome table (OutcomeRow), after retries retries.
	CustomOutcome(group, method, outcome string, retries int)
}

// Methods of custom allocation, for Observer.
const (
	MethodWebhook = "webhook"
	MethodPolicy  = "policy"
)

// OutcomeRow names the row of Azure's custom allocation outcome table an
// allocation ended in: "assigned", or the error code the device saw
// ("400207" custom allocation failed, "400208" no hub in the answer,
// "400209" the webhook answered 401, "400210" a hub that is not linked).
func OutcomeRow(derr *dps.Error) string {
	if derr == nil {
		return admin.OutcomeAssigned
	}
	return strconv.Itoa(derr.ErrorCode)
}

// groupOf is the enrollment group of a request, "" for an individual
// enrollment.
func groupOf(req *dps.AllocationRequest) string {
	if req.EnrollmentGroup != nil {
		return req.EnrollmentGroup.EnrollmentGroupID
	}
	return ""
}

// Signer gives the secrets webhook requests are signed with now;
// *webhooksig.Keeper is one.
type Signer interface {
	Secrets(ctx context.Context) ([]string, error)
}

// Webhook calls custom allocation webhooks with Azure's contract:
// POST of a dps.AllocationRequest as application/json; 200 with
// iotHubHostName naming one of linkedHubs assigns the device (initialTwin and
// payload pass through); 200 with an empty or null hub fails with 400208;
// 401 fails with 400209; 429 and 5xx are retried on Azure's schedule and fail
// with 400207 "Custom allocation failed with status code: N" when retries
// run out; any other status fails at once with 400207. dpsd's choices where
// Azure documents nothing: timeouts and connection errors are retried like
// 5xx; an untrusted TLS certificate, an answer over MaxResponseBytes or an
// answer that is not an allocation response fail at once with 400207; a hub
// that is not one of linkedHubs fails with 400210; redirects are not
// followed (a 3xx fails with 400207); Retry-After headers are ignored, as
// Azure's fixed schedule is documented.
type Webhook struct {
	hc       *http.Client
	opt      WebhookOptions
	log      *slog.Logger
	inflight *inflight
}

// NewWebhook returns a webhook client.
func NewWebhook(opt WebhookOptions) (*Webhook, error) {
	if opt.AttemptTimeout <= 0 {
		opt.AttemptTimeout = DefaultAttemptTimeout
	}
	if opt.MaxResponseBytes <= 0 {
		opt.MaxResponseBytes = DefaultMaxResponseBytes
	}
	switch {
	case opt.Retries == 0:
		opt.Retries = DefaultRetries
	case opt.Retries < 0:
		opt.Retries = 0
	}
	if opt.InitialWait <= 0 {
		opt.InitialWait = DefaultInitialWait
	}
	if opt.WaitIncrement <= 0 {
		opt.WaitIncrement = DefaultWaitIncrement
	}
	if opt.Sleep == nil {
		opt.Sleep = sleep
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.MaxConcurrent <= 0 {
		opt.MaxConcurrent = DefaultMaxConcurrent
	}
	if opt.MaxConcurrentPerGroup <= 0 {
		opt.MaxConcurrentPerGroup = DefaultMaxConcurrentPerGroup
	}
	if opt.Targets == nil {
		opt.Targets = &Targets{mode: TargetsLocal}
	}
	hc := opt.HTTPClient
	if hc == nil {
		var err error
		if hc, err = newHTTPClient(opt.CAPool, opt.CAFiles, opt.Targets, opt.ClientCertificate); err != nil {
			return nil, err
		}
	}
	return &Webhook{hc: hc, opt: opt, log: opt.Logger, inflight: newInflight(opt.MaxConcurrent, opt.MaxConcurrentPerGroup)}, nil
}

func newHTTPClient(roots *x509.CertPool, files []string, targets *Targets, clientCert func() (*tls.Certificate, error)) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		// Called only when the webhook asks for a certificate: to others
		// dpsd stays anonymous, as without it.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return clientCert() }
	}
	if roots != nil || len(files) > 0 {
		// CA files add to the system roots, so public webhooks keep
		// working next to one signed by a private CA.
		pool, err := localca.PoolWithFiles(roots, files...)
		if err != nil {
			return nil, fmt.Errorf("allocate: webhook CA: %w", err)
		}
		tc.RootCAs = pool
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc
	// Every address dialled is checked, after resolution. A proxy would
	// dial in our place, out of reach of that check: webhooks are called
	// directly, whatever HTTPS_PROXY says.
	t.Proxy = nil
	t.DialContext = targets.dialContext(&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second})
	t.TLSHandshakeTimeout = 10 * time.Second
	return &http.Client{
		Transport: t,
		// A redirected POST would either lose its body (301/302) or go to a
		// place nobody configured (a refused target among them); the
		// webhook URL must be the real one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Call posts req to webhookURL and applies Azure's outcome rules. The
// chosen hub must be one of req.LinkedHubs; the allocation names it as
// spelled there. Every error is a *dps.Error the engine can record.
func (w *Webhook) Call(ctx context.Context, webhookURL string, req *dps.AllocationRequest) (*provision.Allocation, error) {
	return w.call0(ctx, webhookURL, req, nil)
}

// call0 is Call, with describe filling the allocation log entry's
// description once the outcome is known (hub "" for none).
func (w *Webhook) call0(ctx context.Context, webhookURL string, req *dps.AllocationRequest, describe func(e *alloclog.Entry, hub string)) (*provision.Allocation, error) {
	if req.LinkedHubs == nil {
		req.LinkedHubs = []string{} // Azure always sends the member
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("allocate: encode allocation request: %w", err)
	}
	regID := req.DeviceRuntimeContext.RegistrationID
	masked := MaskURL(webhookURL)
	rec := w.begin(ctx, regID, masked, body)
	key := webhookKey(webhookURL, req)
	// One message id for every attempt, as Standard Webhooks has it, so a
	// webhook can tell a retry from a new allocation.
	msgID := webhooksig.NewID()
	alloc, derr, retries := w.call(ctx, regID, webhookURL, key, masked, msgID, body, req.LinkedHubs, groupOf(req), rec)
	if o := w.opt.Observer; o != nil {
		o.CustomOutcome(groupOf(req), MethodWebhook, OutcomeRow(derr), retries)
	}
	if describe != nil {
		hub := ""
		if alloc != nil {
			hub = alloc.Hub
		}
		rec.Describe(func(e *alloclog.Entry) { describe(e, hub) })
	}
	if derr != nil {
		rec.Finish(ctx, "", derr.ErrorCode, derr.Message)
		w.log.Warn("custom allocation failed", "registrationId", regID, "webhook", masked, "errorCode", derr.ErrorCode, "message", derr.Message, "auditEntry", rec.ID())
		return nil, derr
	}
	rec.Finish(ctx, alloc.Hub, 0, "")
	w.log.Info("custom allocation", "registrationId", regID, "webhook", masked, "hub", alloc.Hub, "auditEntry", rec.ID())
	return alloc, nil
}

func (w *Webhook) begin(ctx context.Context, regID, masked string, body []byte) *alloclog.Recorder {
	if w.opt.Audit == nil {
		return nil
	}
	return w.opt.Audit.Begin(ctx, regID, masked, body)
}

// answer is what one attempt got.
type answer struct {
	status    int
	body      []byte
	tooLarge  bool
	err       error // no usable answer
	permanent bool  // err is not worth retrying
}

// call makes the attempts of one custom allocation and returns its result
// and how many attempts followed the first.
func (w *Webhook) call(ctx context.Context, regID, webhookURL, key, masked, msgID string, body []byte, candidates []string, group string, rec *alloclog.Recorder) (_ *provision.Allocation, _ *dps.Error, retries int) {
	if derr := checkURL(webhookURL, masked); derr != nil {
		return nil, derr, 0
	}
	for attempt := 0; ; attempt++ {
		start := w.opt.Now()
		ans := w.attempt(ctx, webhookURL, key, msgID, body)
		took := w.opt.Now().Sub(start)
		if o := w.opt.Observer; o != nil {
			o.CustomAttempt(group, MethodWebhook, took)
		}
		alloc, derr, retry := judge(ans, candidates, w.opt.AttemptTimeout)
		a := alloclog.Attempt{Started: start, Status: ans.status, DurationMs: took.Milliseconds()}
		if ans.err != nil {
			a.Error = ans.err.Error()
		}
		if derr == nil {
			// An accepted answer is the allocation itself: kept whole.
			a.Body, a.BodyTruncated = alloclog.Clip(ans.body, alloclog.MaxBodyBytes)
		} else {
			// Anything else is whatever the target sent: its start only,
			// as text, marked as the webhook's.
			a.WebhookText, a.BodyTruncated = alloclog.WebhookText(ans.body)
			a.BodyTruncated = a.BodyTruncated || ans.tooLarge
		}
		rec.Attempt(ctx, a)
		w.log.Debug("custom allocation webhook attempt", "registrationId", regID, "webhook", masked,
			"attempt", attempt+1, "status", ans.status, "err", ans.err, "took", took)

		if !retry {
			return alloc, derr, attempt
		}
		if ctx.Err() != nil {
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the registration timed out while calling the webhook (%v).", ctx.Err()), attempt
		}
		if attempt >= w.opt.Retries {
			return nil, derr, attempt
		}
		wait := w.opt.InitialWait + time.Duration(attempt)*w.opt.WaitIncrement
		rec.Waiting(ctx, wait)
		if err := w.opt.Sleep(ctx, wait); err != nil {
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the registration timed out waiting to retry the webhook (%v); last error: %s", err, derr.Message), attempt
		}
	}
}

// webhookKey is the key of the slots a call waits for: its group's, or
// for an individual enrollment its URL's.
func webhookKey(webhookURL string, req *dps.AllocationRequest) string {
	if req.EnrollmentGroup != nil {
		return "group " + req.EnrollmentGroup.EnrollmentGroupID
	}
	return "url " + webhookURL
}

// checkURL refuses a webhook URL that is not absolute http or https.
func checkURL(webhookURL, masked string) *dps.Error {
	if u, err := url.Parse(webhookURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook URL %s is not valid.", masked)
	}
	return nil
}

// attempt makes one bounded call, in a slot of key's; waiting for the
// slot counts against the attempt's timeout.
func (w *Webhook) attempt(ctx context.Context, webhookURL, key, msgID string, body []byte) answer {
	actx, cancel := context.WithTimeout(ctx, w.opt.AttemptTimeout)
	defer cancel()
	release, err := w.inflight.acquire(actx, key)
	if err != nil {
		return answer{err: err}
	}
	defer release()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, webhookURL, bytes.NewReader(body))
	if err != nil {
		// Checked in call already; not worth retrying either way.
		return answer{err: fmt.Errorf("build request: %w", err), permanent: true}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	if w.opt.Signer != nil {
		secrets, err := w.opt.Signer.Secrets(actx)
		if err != nil {
			return answer{err: fmt.Errorf("reading the signing secret: %w", err)}
		}
		ts := w.opt.Now()
		sig, err := webhooksig.Signature(secrets, msgID, ts, body)
		if err != nil {
			return answer{err: fmt.Errorf("signing the request: %w", err), permanent: true}
		}
		req.Header.Set(webhooksig.HeaderID, msgID)
		req.Header.Set(webhooksig.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
		req.Header.Set(webhooksig.HeaderSignature, sig)
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		var re *RefusedError
		return answer{err: err, permanent: untrusted(err) || errors.As(err, &re) || clientCertRefused(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, w.opt.MaxResponseBytes+1))
	ans := answer{status: resp.StatusCode, body: data}
	if int64(len(data)) > w.opt.MaxResponseBytes {
		ans.body, ans.tooLarge = data[:w.opt.MaxResponseBytes], true
	} else if err != nil {
		// The answer was cut off (timeout or reset mid-body): no answer.
		ans.err = fmt.Errorf("reading the answer: %w", err)
	}
	return ans
}

// untrusted reports whether err is a TLS verification failure, which
// retrying cannot fix.
func untrusted(err error) bool {
	var (
		cv *tls.CertificateVerificationError
		ua x509.UnknownAuthorityError
		he x509.HostnameError
		ci x509.CertificateInvalidError
	)
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}

// clientCertRefused reports whether the webhook ended the TLS handshake
// because it wants a client certificate dpsd did not present or does not
// trust: a configuration mistake that retrying cannot fix. Over TCP, crypto/tls
// reports the peer's alert only as text ("remote error: tls: …").
func clientCertRefused(err error) bool {
	s := err.Error()
	for _, alert := range []string{"certificate required", "bad certificate", "unknown certificate authority", "certificate unknown"} {
		if strings.Contains(s, "remote error: tls: "+alert) {
			return true
		}
	}
	return false
}

// judge applies the outcome table to one answer: an allocation, or an
// error and whether the attempt may be retried.
func judge(ans answer, candidates []string, timeout time.Duration) (*provision.Allocation, *dps.Error, bool) {
	if ans.err != nil {
		switch {
		case ans.permanent && untrusted(ans.err):
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's TLS certificate is not trusted."), false
		case ans.permanent && clientCertRefused(ans.err):
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook refused the TLS handshake for want of a client certificate it trusts (see --webhook-client-cert)."), false
		case ans.permanent && errors.As(ans.err, new(*RefusedError)):
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's address is not an allowed webhook target."), false
		case ans.permanent:
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook could not be called."), false
		case errors.Is(ans.err, context.DeadlineExceeded) || isTimeout(ans.err):
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook did not answer within %v.", timeout), true
		case errors.Is(ans.err, context.Canceled):
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the registration was cancelled while calling the webhook."), false
		}
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook could not be reached."), true
	}
	switch s := ans.status; {
	case s == http.StatusOK:
	case s == http.StatusUnauthorized:
		return nil, dps.Errorf(dps.CodeCustomAllocationUnauthorizedAccess, "Custom allocation failed with status code: 401. The webhook refused the request as unauthorized."), false
	case s >= http.StatusTooManyRequests:
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed with status code: %d", s), true
	default:
		// What the webhook said is not passed on: its answer is whatever
		// the URL's target sent, and the device is no place for it. The
		// allocation log keeps its start, marked as the webhook's text.
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed with status code: %d", s), false
	}
	if ans.tooLarge {
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's answer is larger than %d bytes.", len(ans.body)), false
	}
	alloc, derr := parseResponse(ans.body, candidates)
	return alloc, derr, false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// parseResponse checks a 200 answer's AllocationResponse.
func parseResponse(body []byte, candidates []string) (*provision.Allocation, *dps.Error) {
	var r dps.AllocationResponse
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &r); err != nil {
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's answer is not a valid allocation response (%v).", err)
		}
	}
	if r.IoTHubHostName == nil || strings.TrimSpace(*r.IoTHubHostName) == "" {
		return nil, dps.Errorf(dps.CodeCustomAllocationIoTHubNotSpecified, "Custom allocation failed: the webhook's answer names no IoT hub (iotHubHostName is empty or null).")
	}
	chosen := strings.TrimSpace(*r.IoTHubHostName)
	hub := ""
	for _, c := range candidates {
		if strings.EqualFold(c, chosen) {
			hub = c
			break
		}
	}
	if hub == "" {
		offered := strings.Join(candidates, ", ")
		if offered == "" {
			offered = "none"
		}
		return nil, dps.Errorf(dps.CodeIoTHubNotLinked, "Custom allocation failed: the webhook chose IoT hub %q, which is not one of the linked hubs offered to it (%s).", chosen, offered)
	}
	a := &provision.Allocation{Hub: hub}
	if t := r.InitialTwin; t != nil {
		tags, err1 := objectOrNil(t.Tags)
		var desired json.RawMessage
		var err2 error
		if t.Properties != nil {
			desired, err2 = objectOrNil(t.Properties.Desired)
		}
		if err := errors.Join(err1, err2); err != nil {
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's initialTwin tags and desired properties must be JSON objects.")
		}
		if tags != nil || desired != nil {
			a.InitialTwin = &dps.InitialTwin{Tags: tags}
			if desired != nil {
				a.InitialTwin.Properties = &dps.InitialTwinProperties{Desired: desired}
			}
		}
	}
	p, err := objectOrNil(r.Payload)
	if err != nil {
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's payload must be a JSON object.")
	}
	a.Payload = p
	return a, nil
}

// objectOrNil accepts a JSON object, or null/absent as nil.
func objectOrNil(raw json.RawMessage) (json.RawMessage, error) {
	t := bytes.TrimSpace(raw)
	switch {
	case len(t) == 0 || string(t) == "null":
		return nil, nil
	case t[0] == '{':
		return t, nil
	}
	return nil, errors.New("not a JSON object")
}

// MaskURL hides a webhook URL's secrets the way Azure shows them to the
// webhook: the whole query string reads "****" (Azure Functions keys are
// sent as ?code=...), user information reads "****" and any fragment is
// dropped.
func MaskURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// Do not echo something unparseable that may hold a key.
		if i := strings.IndexAny(raw, "?#@"); i >= 0 {
			return "****"
		}
		return raw
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = "****", false
	}
	u.Fragment, u.RawFragment = "", ""
	if u.User == nil {
		return u.String()
	}
	// url.URL would escape the asterisks of a "****" user; splice it in.
	u.User = nil
	s := u.String()
	if i := strings.Index(s, "//"); i >= 0 {
		return s[:i+2] + "****@" + s[i+2:]
	}
	return s
}

// custom builds the AllocationRequest for in and calls the webhook.
func (a *Allocator) custom(ctx context.Context, in *provision.AllocationInput, cands []*linkedhub.Hub) (*provision.Allocation, error) {
	req, webhookURL, err := BuildRequest(in, cands)
	if err != nil {
		return nil, err
	}
	desc := func(e *alloclog.Entry, hub string) {
		describe(e, in, dps.AllocationCustom, cands, hub)
		a.annotate(e, nil)
	}
	if name, ok := allocpolicy.NameOf(webhookURL); ok {
		return a.policy(ctx, name, req, desc)
	}
	return a.webhook.call0(ctx, webhookURL, req, desc)
}

// BuildRequest returns the body Azure sends a custom allocation webhook for
// in and candidates, and the webhook URL (unmasked, for calling). The
// enrollment copy carries no keys, and its webhook URL is masked.
func BuildRequest(in *provision.AllocationInput, candidates []*linkedhub.Hub) (*dps.AllocationRequest, string, error) {
	req := &dps.AllocationRequest{
		DeviceRuntimeContext: dps.DeviceRuntimeContext{
			RegistrationID: in.RegistrationID,
			Payload:        in.DevicePayload,
		},
		LinkedHubs: make([]string, 0, len(candidates)),
	}
	for _, h := range candidates {
		req.LinkedHubs = append(req.LinkedHubs, h.Name)
	}
	if p := in.Previous; p != nil && p.AssignedHub != "" {
		req.DeviceRuntimeContext.CurrentIoTHubHostName = p.AssignedHub
		req.DeviceRuntimeContext.CurrentDeviceID = p.DeviceID
	}
	var def *dps.CustomAllocationDefinition
	groupID := ""
	if e := in.Enrollment; e != nil {
		v := enroll.EnrollmentView(e, enroll.HideKeys)
		v.CustomAllocationDefinition = maskedDefinition(e.CustomAllocationDefinition)
		req.IndividualEnrollment, def = v, e.CustomAllocationDefinition
	} else if g := in.Group; g != nil {
		v := enroll.GroupView(g, enroll.HideKeys)
		v.CustomAllocationDefinition = maskedDefinition(g.CustomAllocationDefinition)
		req.EnrollmentGroup, def, groupID = v, g.CustomAllocationDefinition, g.EnrollmentGroupID
	}
	switch in.AttestationType {
	case dps.AttestationX509:
		if in.X509 != nil {
			x := *in.X509
			req.DeviceRuntimeContext.X509 = &x
		} else {
			req.DeviceRuntimeContext.X509 = &dps.X509RegistrationResult{EnrollmentGroupID: groupID}
		}
	case dps.AttestationTPM:
		if e := in.Enrollment; e != nil && e.Attestation != nil && e.Attestation.TPM != nil {
			t := *e.Attestation.TPM
			req.DeviceRuntimeContext.TPM = &t
		}
	default:
		// Symmetric key: Azure sends an empty object, never the keys.
		req.DeviceRuntimeContext.SymmetricKey = &struct{}{}
	}
	if def == nil || strings.TrimSpace(def.WebhookURL) == "" {
		return nil, "", dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the enrollment has no customAllocationDefinition webhook URL.")
	}
	return req, def.WebhookURL, nil
}

func maskedDefinition(d *dps.CustomAllocationDefinition) *dps.CustomAllocationDefinition {
	if d == nil {
		return nil
	}
	return &dps.CustomAllocationDefinition{WebhookURL: MaskURL(d.WebhookURL), APIVersion: d.APIVersion}
}
