package allocate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/provision"
)

// policy evaluates the in-process allocation policy name on req, as the
// webhook would be called: same request, same outcome rules on its
// answer, same allocation log entry (its "webhook" reads policy:NAME).
// What the device sees of a refusal or a failure is Azure's 400207; the
// policy's reason and errors are in the allocation log.
func (a *Allocator) policy(ctx context.Context, name string, req *dps.AllocationRequest, describe func(e *alloclog.Entry, hub string)) (*provision.Allocation, error) {
	if req.LinkedHubs == nil {
		req.LinkedHubs = []string{}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("allocate: encode allocation request: %w", err)
	}
	regID := req.DeviceRuntimeContext.RegistrationID
	var at alloclog.Attempt
	alloc, derr, err := a.evalPolicy(ctx, name, req, &at)
	// An evaluation is instant: its entry is written once, complete.
	e := alloclog.Entry{RegistrationID: regID, WebhookURL: allocpolicy.Prefix + name, Attempts: []alloclog.Attempt{at}}
	e.Request, e.RequestTruncated = alloclog.Clip(body, alloclog.MaxRequestBytes)
	hub := ""
	if alloc != nil {
		hub = alloc.Hub
	}
	if describe != nil {
		describe(&e, hub)
	}
	switch {
	case err != nil:
		// The store failed, not the policy: the registration is retried.
		e.Outcome, e.ErrorCode, e.ErrorMessage = alloclog.OutcomeFailed, dps.CodeCustomAllocationFailed, err.Error()
	case derr != nil:
		e.Outcome, e.ErrorCode, e.ErrorMessage = alloclog.OutcomeFailed, derr.ErrorCode, derr.Message
	default:
		e.Outcome, e.Hub = alloclog.OutcomeAssigned, hub
	}
	if log := a.webhook.opt.Audit; log != nil {
		if err == nil && derr == nil {
			// Kept by the engine with the registration it explains.
			alloc.Note = log.Pending(e)
		} else {
			log.Record(ctx, e)
		}
	}
	if err != nil {
		return nil, err
	}
	if derr != nil {
		a.log.Warn("allocation policy failed", "registrationId", regID, "policy", name, "errorCode", derr.ErrorCode, "message", derr.Message)
		return nil, derr
	}
	a.log.Debug("allocation policy", "registrationId", regID, "policy", name, "hub", alloc.Hub)
	return alloc, nil
}

// evalPolicy evaluates the policy once, describing the evaluation in at.
func (a *Allocator) evalPolicy(ctx context.Context, name string, req *dps.AllocationRequest, at *alloclog.Attempt) (*provision.Allocation, *dps.Error, error) {
	now := a.webhook.opt.Now
	start := now()
	at.Started = start
	defer func() { at.DurationMs = now().Sub(start).Milliseconds() }()
	if a.policies == nil {
		at.Error = "allocation policies are not enabled on this node"
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the allocation policy %s does not exist.", name), nil
	}
	prg, etag, err := a.policies.Program(ctx, name)
	switch {
	case errors.Is(err, allocpolicy.ErrNotFound):
		at.Error = err.Error()
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the allocation policy %s does not exist.", name), nil
	case errors.As(err, new(*allocpolicy.CompileError)):
		at.Error = err.Error()
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the allocation policy %s does not compile.", name), nil
	case err != nil:
		at.Error = err.Error()
		return nil, nil, fmt.Errorf("allocate: %w", err)
	}
	res, err := prg.Eval(ctx, req)
	if err != nil {
		at.Error = fmt.Sprintf("policy %s (etag %s) failed: %v", name, etag, err)
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the allocation policy %s failed.", name), nil
	}
	if res.Refusal != "" {
		at.Error = fmt.Sprintf("policy %s (etag %s) refused the device: %s", name, etag, res.Refusal)
		return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the allocation policy %s refused the device.", name), nil
	}
	at.Status = 200 // an answer, as a webhook's 200
	at.Body, at.BodyTruncated = alloclog.Clip(res.Response, alloclog.MaxBodyBytes)
	alloc, derr := parseResponse(res.Response, req.LinkedHubs)
	if derr != nil {
		at.Error = fmt.Sprintf("policy %s (etag %s): %s", name, etag, derr.Message)
	}
	return alloc, derr, nil
}
