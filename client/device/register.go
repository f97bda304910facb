package device

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/dpsd/dpsd/api/dps"
)

// answer is one response of the service, whatever the transport.
type answer struct {
	status        int // HTTP status, or the status in the MQTT response topic
	retryAfter    time.Duration
	hasRetryAfter bool
	body          []byte
}

// session is a transport connection carrying one registration.
type session interface {
	register(ctx context.Context, body []byte) (*answer, error)
	poll(ctx context.Context, operationID string) (*answer, error)
	close()
}

// Register provisions the device described by cfg and returns its
// registration state once the service assigned it to a hub. It returns an
// *Error when the service refuses the request or the registration ends
// "failed" or "disabled"; other errors (network, TLS, deadline) are wrapped
// as they are. The whole call is bounded by ctx and by cfg.Timeout.
func Register(ctx context.Context, cfg Config) (*dps.DeviceRegistrationState, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	// WithTimeout keeps the parent's deadline when it is earlier.
	ctx, cancel := context.WithTimeout(ctx, s.deadline)
	defer cancel()

	state, err := register(ctx, s)
	if err != nil {
		s.progress(Event{Kind: EventFailed, Err: err})
		return nil, err
	}
	return state, nil
}

func register(ctx context.Context, s *settings) (*dps.DeviceRegistrationState, error) {
	var sess session
	var err error
	switch s.Transport {
	case TransportHTTPS:
		sess, err = openHTTPS(s)
	case TransportMQTT, TransportMQTTWS:
		sess, err = openMQTT(ctx, s)
	case TransportAMQP, TransportAMQPWS:
		sess, err = openAMQP(ctx, s)
	}
	if err != nil {
		return nil, err
	}
	defer sess.close()

	reg := dps.DeviceRegistration{RegistrationID: s.RegistrationID, Payload: s.Payload}
	if len(s.CSR) > 0 {
		reg.CSR = base64.StdEncoding.EncodeToString(s.CSR)
	}
	if s.TPM != nil {
		reg.TPM = &dps.TPMAttestation{
			EndorsementKey: base64.StdEncoding.EncodeToString(s.TPM.EndorsementKey()),
			StorageRootKey: base64.StdEncoding.EncodeToString(s.TPM.StorageRootKey()),
		}
	}
	body, err := json.Marshal(reg)
	if err != nil {
		return nil, fmt.Errorf("device: encode register request: %w", err)
	}
	if s.TPM != nil {
		if err := tpmChallenge(ctx, s, sess, body); err != nil {
			return nil, err
		}
	}
	op := "register"
	a, err := sess.register(ctx, body)
	for polls := 0; ; polls++ {
		if err != nil {
			return nil, fmt.Errorf("device: %s %s: %w", op, s.RegistrationID, err)
		}
		o, derr := decodeAnswer(op, a)
		if derr != nil {
			return nil, derr
		}
		switch o.Status {
		case dps.StatusAssigned:
			if o.RegistrationState == nil {
				return nil, fmt.Errorf("device: %s %s: status assigned without registrationState", op, s.RegistrationID)
			}
			if len(s.CSR) > 0 && len(o.RegistrationState.IssuedCertificateChain) == 0 {
				return nil, fmt.Errorf("device: %s %s: a csr was sent, but the answer has no issuedCertificateChain", op, s.RegistrationID)
			}
			if s.TPM != nil && o.RegistrationState.TPM != nil {
				// The SDKs import the answer's blob too (the same key).
				if err := activate(s, o.RegistrationState.TPM.AuthenticationKey); err != nil {
					return nil, err
				}
			}
			s.progress(Event{Kind: EventAssigned, Status: o.Status, OperationID: o.OperationID})
			return o.RegistrationState, nil
		case dps.StatusFailed, dps.StatusDisabled:
			return nil, terminalError(op, a.status, o)
		case dps.StatusAssigning, dps.StatusUnassigned:
			// "unassigned" is polled like "assigning", as the C SDK does
			// on MQTT: the operation is not finished.
		default:
			return nil, fmt.Errorf("device: %s %s: unknown operation status %q", op, s.RegistrationID, o.Status)
		}
		if o.OperationID == "" {
			return nil, fmt.Errorf("device: %s %s: status %q without operationId", op, s.RegistrationID, o.Status)
		}
		if polls >= s.maxPolls {
			return nil, fmt.Errorf("device: %s still %s after %d polls", s.RegistrationID, o.Status, polls)
		}
		wait := s.pollWait
		if a.hasRetryAfter {
			wait = a.retryAfter
		}
		if s.MaxPollWait > 0 {
			wait = min(wait, s.MaxPollWait)
		}
		s.progress(Event{Kind: EventAssigning, Status: o.Status, OperationID: o.OperationID, RetryAfter: wait})
		if serr := sleep(ctx, wait); serr != nil {
			return nil, fmt.Errorf("device: waiting to poll %s: %w", s.RegistrationID, serr)
		}
		op = "poll"
		a, err = sess.poll(ctx, o.OperationID)
	}
}

// tpmChallenge sends the register request without a proof, activates the
// challenge of the 401 answer with the TPM and gives the session a token
// the TPM signs. Over AMQP the SASL exchange did this already.
func tpmChallenge(ctx context.Context, s *settings, sess session, body []byte) error {
	if _, ok := sess.(*amqpSession); ok {
		// The AMQP TPM mechanism activated the challenge in SASL.
		return nil
	}
	hs, ok := sess.(*httpsSession)
	if !ok {
		return fmt.Errorf("device: TPM attestation over %s is not supported", s.Transport)
	}
	a, err := hs.register(ctx, body)
	if err != nil {
		return fmt.Errorf("device: register %s (TPM challenge): %w", s.RegistrationID, err)
	}
	if a.status != http.StatusUnauthorized {
		if _, derr := decodeAnswer("register", a); derr != nil {
			return derr
		}
		return fmt.Errorf("device: register %s: the service answered %d instead of a TPM challenge", s.RegistrationID, a.status)
	}
	var ch struct {
		AuthenticationKey string `json:"authenticationKey"`
	}
	if json.Unmarshal(a.body, &ch) != nil || ch.AuthenticationKey == "" {
		// A plain 401: no TPM enrollment for this device and EK.
		_, derr := decodeAnswer("register", a)
		return derr
	}
	if err := activate(s, ch.AuthenticationKey); err != nil {
		return err
	}
	hs.token, err = s.token(time.Now())
	return err
}

// activate imports the identity key of a base64 activation blob.
func activate(s *settings, authenticationKey string) error {
	blob, err := base64.StdEncoding.DecodeString(authenticationKey)
	if err != nil {
		return fmt.Errorf("device: the TPM challenge is not base64: %w", err)
	}
	if err := s.TPM.ActivateIdentityKey(blob); err != nil {
		return fmt.Errorf("device: the TPM refused the challenge: %w", err)
	}
	s.tpmActivated = true
	return nil
}

// decodeAnswer turns a 2xx answer into the operation status and any other
// answer into an *Error.
func decodeAnswer(op string, a *answer) (*dps.RegistrationOperationStatus, error) {
	if a.status < 200 || a.status > 299 {
		var ra time.Duration
		if a.hasRetryAfter {
			ra = a.retryAfter
		}
		return nil, statusError(op, a.status, ra, a.body)
	}
	var o dps.RegistrationOperationStatus
	if err := json.Unmarshal(a.body, &o); err != nil {
		return nil, fmt.Errorf("device: %s: status %d with an invalid body: %w", op, a.status, err)
	}
	return &o, nil
}

// sleep waits d or until ctx ends; d <= 0 returns at once.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// parseRetryAfter reads a Retry-After value: delay seconds (what DPS sends)
// or an HTTP date. Negative or unparsable values count as absent.
func parseRetryAfter(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := time.Until(t)
		return min(max(d, 0), maxRetryAfter), true
	}
	return 0, false
}

// newRID returns a random (version 4) UUID as request id, as the Node and Python
// SDKs send in $rid.
func newRID() string { return uuid.NewString() }
