package server

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store"
)

// webhookTestHandler serves POST /dpsd/webhookTest (admin.WebhookTestRequest
// → admin.WebhookTestResult): the allocation a registration of that device
// would get, tried once without registering anything ("dpsd webhook test").
// It calls the webhook, so it needs ServiceConfig.
func webhookTestHandler(st store.Store, alloc *allocate.Allocator, authorize func(*http.Request) error, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httperr.Authorized(w, r, authorize) {
			return
		}
		if r.Method != http.MethodPost {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", r.Method, r.URL.Path))
			return
		}
		var req admin.WebhookTestRequest
		if err := httperr.DecodeBody(r, &req, 64<<10, true, "a webhook test request"); err != nil {
			httperr.Write(w, r, nil, err)
			return
		}
		in, err := webhookTestInput(r, st, &req)
		if err != nil {
			httperr.Write(w, r, log, err)
			return
		}
		res, err := alloc.Try(r.Context(), in)
		if err != nil {
			httperr.Write(w, r, log, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, res)
	})
}

// webhookTestInput builds the allocation input a registration of the
// device would: its enrollment, its current assignment, its payload.
func webhookTestInput(r *http.Request, st store.Store, req *admin.WebhookTestRequest) (*provision.AllocationInput, error) {
	ctx := r.Context()
	req.RegistrationID = strings.TrimSpace(req.RegistrationID)
	if req.RegistrationID == "" {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The registrationId is required.")
	}
	if (req.EnrollmentGroupID == "") == (req.EnrollmentID == "") {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "Name exactly one of enrollmentGroupId and enrollmentId.")
	}
	if p := req.Payload; len(p) > 0 && !strings.HasPrefix(strings.TrimSpace(string(p)), "{") && strings.TrimSpace(string(p)) != "null" {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The payload must be a JSON object.")
	}
	in := &provision.AllocationInput{RegistrationID: req.RegistrationID, DevicePayload: req.Payload, RemoteAddr: r.RemoteAddr}
	var att *dps.AttestationMechanism
	if req.EnrollmentGroupID != "" {
		g, err := enroll.GetGroup(ctx, st, req.EnrollmentGroupID)
		if err != nil {
			return nil, err
		}
		in.Group, att = g, g.Attestation
	} else {
		e, err := enroll.GetEnrollment(ctx, st, req.EnrollmentID)
		if err != nil {
			return nil, err
		}
		in.Enrollment, att = e, e.Attestation
		in.RegistrationID = e.RegistrationID
	}
	in.AttestationType = dps.AttestationSymmetricKey
	if att != nil && att.Type != "" {
		in.AttestationType = att.Type
	}
	prev, err := enroll.GetRegistration(ctx, st, in.RegistrationID)
	var de *dps.Error
	switch {
	case err == nil && prev.State.Status == dps.StatusAssigned:
		in.Previous = &prev.State
	case err != nil && !errors.Is(err, store.ErrNotFound) && !errors.As(err, &de):
		return nil, err
	}
	return in, nil
}
