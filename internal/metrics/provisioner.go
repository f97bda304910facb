package metrics

import (
	"context"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// Engine is what Provisioner wraps: the provisioning engine's device-facing
// methods, as the HTTPS and MQTT transports call them.
type Engine interface {
	Register(ctx context.Context, req provision.Request) (provision.Result, error)
	OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error)
	Status(ctx context.Context, req provision.Request) (*dps.DeviceRegistrationState, error)
}

// Provisioner is an Engine that records every call in the device metrics
// and then answers exactly as the wrapped engine did. It satisfies both
// https.Provisioner and mqtt.Provisioner, so the transports are
// instrumented without knowing it.
type Provisioner struct {
	next Engine
	m    *Metrics
}

// Provisioner returns next wrapped so that its calls are counted and timed.
func (m *Metrics) Provisioner(next Engine) *Provisioner {
	return &Provisioner{next: next, m: m}
}

// Register calls the engine's Register and records its outcome.
func (p *Provisioner) Register(ctx context.Context, req provision.Request) (provision.Result, error) {
	start := time.Now()
	res, err := p.next.Register(ctx, req)
	p.observeResult(req.Transport, OpRegister, start, res, err)
	return res, err
}

// OperationStatus calls the engine's OperationStatus and records its outcome.
func (p *Provisioner) OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error) {
	start := time.Now()
	res, err := p.next.OperationStatus(ctx, req, operationID)
	p.observeResult(req.Transport, OpOperationStatus, start, res, err)
	return res, err
}

// Status calls the engine's Status and records its outcome. A status lookup
// reads a registration and ends none, so it is not counted in
// dpsd_registrations_total.
func (p *Provisioner) Status(ctx context.Context, req provision.Request) (*dps.DeviceRegistrationState, error) {
	start := time.Now()
	st, err := p.next.Status(ctx, req)
	status := ""
	if st != nil {
		status = st.Status
	}
	p.observe(req.Transport, OpStatusLookup, start, outcome(status, err))
	return st, err
}

func (p *Provisioner) observeResult(transport, op string, start time.Time, res provision.Result, err error) {
	status := ""
	if res.Operation != nil {
		status = res.Operation.Status
	}
	out := outcome(status, err)
	p.observe(transport, op, start, out)
	// A register answered at once and the poll that sees the end both
	// tell the device its operation is over; SDKs stop polling there, so
	// each registration operation is counted once.
	if err == nil && dps.Terminal(status) {
		p.m.registrations.WithLabelValues(status).Inc()
	}
}

func (p *Provisioner) observe(transport, op string, start time.Time, out string) {
	if transport == "" {
		transport = "unknown"
	}
	p.m.deviceDuration.WithLabelValues(transport, op).Observe(time.Since(start).Seconds())
	p.m.deviceRequests.WithLabelValues(transport, op, out).Inc()
}

// outcome names how a request was answered: the HTTP class of an error (as
// the transports would send it), or the registration status.
func outcome(status string, err error) string {
	if err != nil {
		if dps.AsError(err).Status() < 500 {
			return OutcomeError4xx
		}
		return OutcomeError5xx
	}
	switch status {
	case dps.StatusAssigned, dps.StatusAssigning, dps.StatusFailed, dps.StatusDisabled, dps.StatusUnassigned:
		return status
	}
	return OutcomeUnknown
}
