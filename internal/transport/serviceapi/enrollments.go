package serviceapi

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/query"
	"github.com/dpsd/dpsd/internal/store"
)

// putEnrollment creates or replaces an individual enrollment. The answer is
// always 200 with the stored enrollment, keys included (SDKs derive device
// keys from it), certificates as info only.
func (h *handler) putEnrollment(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	e, err := enroll.DecodeEnrollment(body)
	if err != nil {
		return err
	}
	saved, err := enroll.PutEnrollment(req.r.Context(), h.st, req.id, e, req.r.Header.Get("If-Match"))
	if err != nil {
		return err
	}
	v := enroll.EnrollmentView(saved, enroll.ShowKeys)
	req.w.Header().Set("ETag", v.ETag)
	h.writeJSON(req, http.StatusOK, v)
	return nil
}

// getEnrollment returns an enrollment without its keys, with the device's
// registration state when it has registered.
func (h *handler) getEnrollment(req *request) error {
	ctx := req.r.Context()
	e, err := enroll.GetEnrollment(ctx, h.st, req.id)
	if err != nil {
		return err
	}
	v := enroll.EnrollmentView(e, enroll.HideKeys)
	reg, err := enroll.GetRegistration(ctx, h.st, e.RegistrationID)
	switch {
	case err == nil:
		v.RegistrationState = &reg.State
	case !errors.Is(err, enroll.ErrRegistrationNotFound):
		return err
	}
	req.w.Header().Set("ETag", v.ETag)
	h.writeJSON(req, http.StatusOK, v)
	return nil
}

func (h *handler) deleteEnrollment(req *request) error {
	if err := enroll.DeleteEnrollment(req.r.Context(), h.st, req.id, req.r.Header.Get("If-Match")); err != nil {
		return err
	}
	req.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *handler) enrollmentAttestation(req *request) error {
	e, err := enroll.GetEnrollment(req.r.Context(), h.st, req.id)
	if err != nil {
		return err
	}
	h.writeJSON(req, http.StatusOK, attestationAnswer(req, e.Attestation))
	return nil
}

// attestationAnswer is what an attestationmechanism request answers: with
// the dpsd extension includeCertificates=true, X.509 certificates as
// stored rather than only their info.
func attestationAnswer(req *request, a *dps.AttestationMechanism) *dps.AttestationMechanism {
	if req.r.URL.Query().Get("includeCertificates") == "true" {
		return enroll.AttestationWithCertificates(a)
	}
	return enroll.AttestationView(a)
}

func (h *handler) bulkEnrollments(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	var op dps.BulkEnrollmentOperation
	if err := enroll.DecodeJSON(body, &op); err != nil {
		return err
	}
	res, err := enroll.BulkEnrollments(req.r.Context(), h.st, &op)
	if err != nil {
		return err
	}
	h.writeJSON(req, http.StatusOK, res)
	return nil
}

func (h *handler) queryEnrollments(req *request) error {
	const scope = "enrollments"
	q, opt, err := queryOptions(req, scope)
	if err != nil {
		return err
	}
	out, last, more, err := filteredPage(req.r.Context(), q, opt,
		func(ctx context.Context, o store.ListOptions) ([]*dps.IndividualEnrollment, bool, error) {
			return enroll.ListEnrollments(ctx, h.st, o)
		},
		func(e *dps.IndividualEnrollment) (string, *dps.IndividualEnrollment) {
			return e.RegistrationID, enroll.EnrollmentView(e, enroll.HideKeys)
		})
	if err != nil {
		return err
	}
	h.writePage(req, dps.ItemTypeEnrollment, opt.Limit, scope, last, more, out)
	return nil
}

func (h *handler) putGroup(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	g, err := enroll.DecodeGroup(body)
	if err != nil {
		return err
	}
	saved, err := enroll.PutGroup(req.r.Context(), h.st, req.id, g, req.r.Header.Get("If-Match"))
	if err != nil {
		return err
	}
	v := enroll.GroupView(saved, enroll.ShowKeys)
	req.w.Header().Set("ETag", v.ETag)
	h.writeJSON(req, http.StatusOK, v)
	return nil
}

func (h *handler) getGroup(req *request) error {
	g, err := enroll.GetGroup(req.r.Context(), h.st, req.id)
	if err != nil {
		return err
	}
	v := enroll.GroupView(g, enroll.HideKeys)
	req.w.Header().Set("ETag", v.ETag)
	h.writeJSON(req, http.StatusOK, v)
	return nil
}

func (h *handler) deleteGroup(req *request) error {
	if err := enroll.DeleteGroup(req.r.Context(), h.st, req.id, req.r.Header.Get("If-Match")); err != nil {
		return err
	}
	req.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *handler) groupAttestation(req *request) error {
	g, err := enroll.GetGroup(req.r.Context(), h.st, req.id)
	if err != nil {
		return err
	}
	h.writeJSON(req, http.StatusOK, attestationAnswer(req, g.Attestation))
	return nil
}

func (h *handler) bulkGroups(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	var op dps.BulkEnrollmentGroupOperation
	if err := enroll.DecodeJSON(body, &op); err != nil {
		return err
	}
	res, err := enroll.BulkGroups(req.r.Context(), h.st, &op)
	if err != nil {
		return err
	}
	h.writeJSON(req, http.StatusOK, res)
	return nil
}

func (h *handler) queryGroups(req *request) error {
	const scope = "enrollmentGroups"
	q, opt, err := queryOptions(req, scope)
	if err != nil {
		return err
	}
	out, last, more, err := filteredPage(req.r.Context(), q, opt,
		func(ctx context.Context, o store.ListOptions) ([]*dps.EnrollmentGroup, bool, error) {
			return enroll.ListGroups(ctx, h.st, o)
		},
		func(g *dps.EnrollmentGroup) (string, *dps.EnrollmentGroup) {
			return g.EnrollmentGroupID, enroll.GroupView(g, enroll.HideKeys)
		})
	if err != nil {
		return err
	}
	h.writePage(req, dps.ItemTypeEnrollmentGroup, opt.Limit, scope, last, more, out)
	return nil
}

// queryOptions reads a query request: the optional QuerySpecification body
// (a subset of the query language, see package query: "*" and "SELECT *"
// mean everything, WHERE filters; the Azure CLI sends no body for
// registration queries) and the paging headers.
func queryOptions(req *request, scope string) (*query.Query, store.ListOptions, error) {
	body, err := readBody(req)
	if err != nil {
		return nil, store.ListOptions{}, err
	}
	var q *query.Query
	if len(strings.TrimSpace(string(body))) > 0 {
		var spec dps.QuerySpecification
		if err := enroll.DecodeJSON(body, &spec); err != nil {
			return nil, store.ListOptions{}, err
		}
		if q, err = query.Parse(spec.Query); err != nil {
			return nil, store.ListOptions{}, err
		}
	}
	n, err := pageSize(req)
	if err != nil {
		return nil, store.ListOptions{}, err
	}
	after, err := decodeContinuation(scope, req.r.Header.Get(dps.HeaderContinuation))
	if err != nil {
		return nil, store.ListOptions{}, err
	}
	return q, store.ListOptions{After: after, Limit: n}, nil
}

// writePage answers a query: always x-ms-item-type (the C# v1 client
// requires it), x-ms-continuation only when another page exists, and a JSON
// array — [] rather than an empty body when nothing matched.
func (h *handler) writePage(req *request, itemType string, limit int, scope, last string, more bool, items any) {
	hdr := req.w.Header()
	hdr.Set(dps.HeaderItemType, itemType)
	hdr.Set(dps.HeaderMaxItemCount, itoa(limit))
	if more && last != "" {
		hdr.Set(dps.HeaderContinuation, encodeContinuation(scope, last))
	}
	h.writeJSON(req, http.StatusOK, items)
}
