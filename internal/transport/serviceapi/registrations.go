package serviceapi

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

func (h *handler) getRegistration(req *request) error {
	reg, err := enroll.GetRegistration(req.r.Context(), h.st, req.id)
	if err != nil {
		return err
	}
	req.w.Header().Set("ETag", reg.State.ETag)
	h.writeJSON(req, http.StatusOK, &reg.State)
	return nil
}

func (h *handler) deleteRegistration(req *request) error {
	if err := enroll.DeleteRegistration(req.r.Context(), h.st, req.id, req.r.Header.Get("If-Match")); err != nil {
		return err
	}
	req.w.WriteHeader(http.StatusNoContent)
	return nil
}

// queryRegistrations lists the registration states of a group's devices.
// An unknown group simply has none: the answer is [] rather than 404, since
// registration records outlive a deleted group.
func (h *handler) queryRegistrations(req *request) error {
	scope := "registrations/" + strings.ToLower(req.id)
	q, opt, err := queryOptions(req, scope)
	if err != nil {
		return err
	}
	out, last, more, err := filteredPage(req.r.Context(), q, opt,
		func(ctx context.Context, o store.ListOptions) ([]*enroll.Registration, bool, error) {
			return enroll.ListRegistrations(ctx, h.st, req.id, o)
		},
		func(r *enroll.Registration) (string, *dps.DeviceRegistrationState) {
			return r.State.RegistrationID, &r.State
		})
	if err != nil {
		return err
	}
	h.writePage(req, dps.ItemTypeDeviceRegistration, opt.Limit, scope, last, more, out)
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }
