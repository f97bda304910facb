package allocate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/webhooksig"
)

// Try decides where in's device would go without registering it or
// writing the allocation log: for a custom allocation, it builds exactly
// the request a registration would send, sends it once (signed) or
// evaluates the policy, and says which row of the outcome table the
// answer falls in; for the other policies, it reports their decision.
func (a *Allocator) Try(ctx context.Context, in *provision.AllocationInput) (*admin.WebhookTestResult, error) {
	policy, _, _, _, _ := in.Policy()
	if policy == "" {
		policy = a.defaultPolicy
	}
	policy = canonicalPolicy(policy)
	res := &admin.WebhookTestResult{AllocationPolicy: policy}
	start := time.Now()
	var (
		alloc *provision.Allocation
		derr  *dps.Error
		retry bool
	)
	if policy != dps.AllocationCustom {
		got, err := a.Allocate(ctx, in)
		if err != nil && !errors.As(err, &derr) {
			return nil, err
		}
		alloc = got
	} else {
		cands, err := a.Candidates(ctx, in)
		if err != nil && !errors.As(err, &derr) {
			return nil, err
		}
		if derr == nil {
			alloc, derr, retry, err = a.tryCustom(ctx, in, cands, res)
			if err != nil {
				return nil, err
			}
		}
	}
	res.LatencyMs = float64(time.Since(start).Microseconds()) / 1000
	switch {
	case retry:
		res.Outcome = "retried"
		res.Row = "429, 5xx or no answer → retried on Azure's schedule (1 s, then 9 s more each time, 10 retries), then 400207"
		res.ErrorCode, res.ErrorMessage = derr.ErrorCode, derr.Message
	case derr != nil:
		res.Outcome = admin.OutcomeFailed
		res.ErrorCode, res.ErrorMessage = derr.ErrorCode, derr.Message
		switch derr.ErrorCode {
		case dps.CodeCustomAllocationUnauthorizedAccess:
			res.Row = "401 → 400209"
		case dps.CodeCustomAllocationIoTHubNotSpecified:
			res.Row = "200 without iotHubHostName → 400208"
		case dps.CodeIoTHubNotLinked:
			res.Row = "a hub that is not linked → 400210"
		default:
			res.Row = fmt.Sprintf("%d", derr.ErrorCode)
			if derr.ErrorCode == dps.CodeCustomAllocationFailed {
				res.Row = "another status, a refusal or an unusable answer → 400207"
			}
		}
	default:
		res.Outcome = admin.OutcomeAssigned
		res.Hub = alloc.Hub
		res.Row = "assigned to " + alloc.Hub
		if alloc.InitialTwin != nil {
			res.InitialTwin, _ = json.Marshal(alloc.InitialTwin)
			res.Row += " with the answer's initial twin"
		}
		res.Payload = alloc.Payload
	}
	return res, nil
}

// tryCustom makes the one call (or evaluation) of a custom allocation,
// recording what it sent and got in res; retry says a registration
// would try again.
func (a *Allocator) tryCustom(ctx context.Context, in *provision.AllocationInput, cands []*linkedhub.Hub, res *admin.WebhookTestResult) (*provision.Allocation, *dps.Error, bool, error) {
	req, webhookURL, err := BuildRequest(in, cands)
	var de *dps.Error
	if errors.As(err, &de) {
		return nil, de, false, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	if req.LinkedHubs == nil {
		req.LinkedHubs = []string{}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, nil, false, fmt.Errorf("allocate: encode allocation request: %w", err)
	}
	res.Request = body
	if name, ok := allocpolicy.NameOf(webhookURL); ok {
		res.WebhookURL = allocpolicy.Prefix + name
		var at alloclog.Attempt
		alloc, derr, err := a.evalPolicy(ctx, name, req, &at)
		res.Status, res.Answer, res.Error = at.Status, at.Body, at.Error
		return alloc, derr, false, err
	}
	res.WebhookURL = MaskURL(webhookURL)
	if derr := checkURL(webhookURL, res.WebhookURL); derr != nil {
		return nil, derr, false, nil
	}
	w := a.webhook
	ans := w.attempt(ctx, webhookURL, webhookKey(webhookURL, req), webhooksig.NewID(), body)
	alloc, derr, retry := judge(ans, req.LinkedHubs, w.opt.AttemptTimeout)
	res.Status = ans.status
	if ans.err != nil {
		res.Error = ans.err.Error()
	}
	if derr == nil {
		res.Answer, _ = alloclog.Clip(ans.body, alloclog.MaxBodyBytes)
	} else {
		res.WebhookText, _ = alloclog.WebhookText(ans.body)
	}
	return alloc, derr, retry, nil
}
