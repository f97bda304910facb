package server

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/store"
)

// Bounds of the listing endpoints: a page holds at most maxRegistrationPage
// items and reads at most maxRegistrationScan records to fill it (filters
// may skip many); the statistics read at most MaxStatsScan records of each
// kind.
const (
	maxRegistrationPage = 500
	maxRegistrationScan = 5000
	MaxStatsScan        = 100_000
)

// registrationsHandler serves GET /dpsd/registrations?group=&hub=&status=&after=&limit=,
// the registrations of every enrollment. Azure's service API lists a
// group's registrations only; an operator looking for a device by hub or
// status needs them all.
func (s *Server) registrationsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httperr.Authorized(w, r, func(r *http.Request) error { return s.auth.Authorize(r, instance.RightRegistrationStatusRead) }) {
			return
		}
		if r.Method != http.MethodGet {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s; use GET.", r.Method, r.URL.Path))
			return
		}
		q := r.URL.Query()
		limit := 100
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				httperr.Write(w, r, nil, dps.Errorf(dps.CodeBadRequest, "limit must be a positive whole number, not %q.", v))
				return
			}
			limit = min(n, maxRegistrationPage)
		}
		page, err := listRegistrations(r.Context(), s.st, q.Get("group"), q.Get("hub"), q.Get("status"), q.Get("after"), limit)
		if err != nil {
			httperr.Write(w, r, s.log, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, page)
	})
}

// listRegistrations reads registrations after after, keeping those that
// match every non-empty filter (compared case-insensitively), until it has
// limit of them or has read maxRegistrationScan records.
func listRegistrations(ctx context.Context, st store.Store, group, hub, status, after string, limit int) (*admin.RegistrationPage, error) {
	page := &admin.RegistrationPage{Items: []*dps.DeviceRegistrationState{}, Groups: map[string]string{}}
	scanned := 0
	for {
		regs, more, err := enroll.ListRegistrations(ctx, st, group, store.ListOptions{After: after, Limit: min(limit-len(page.Items)+1, store.DefaultListLimit)})
		if err != nil {
			return nil, err
		}
		for _, reg := range regs {
			scanned++
			after = reg.State.RegistrationID
			if (hub == "" || strings.EqualFold(reg.State.AssignedHub, hub)) && (status == "" || strings.EqualFold(reg.State.Status, status)) {
				if len(page.Items) == limit {
					// One more than the page: there is a next page.
					page.Continuation = page.Items[limit-1].RegistrationID
					return page, nil
				}
				st := reg.State
				page.Items = append(page.Items, &st)
				if reg.EnrollmentGroupID != "" {
					page.Groups[st.RegistrationID] = reg.EnrollmentGroupID
				}
			}
		}
		if !more {
			return page, nil
		}
		if scanned >= maxRegistrationScan {
			// Say where to go on from, even with a short page.
			page.Continuation = after
			return page, nil
		}
	}
}

// statsHandler serves GET /dpsd/stats (admin.Stats), for the console's
// overview. It needs EnrollmentRead and RegistrationStatusRead.
func (s *Server) statsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httperr.Authorized(w, r, func(r *http.Request) error {
			if err := s.auth.Authorize(r, instance.RightEnrollmentRead); err != nil {
				return err
			}
			return s.auth.Authorize(r, instance.RightRegistrationStatusRead)
		}) {
			return
		}
		if r.Method != http.MethodGet {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s; use GET.", r.Method, r.URL.Path))
			return
		}
		stats, err := computeStats(r.Context(), s.st, time.Now())
		if err != nil {
			httperr.Write(w, r, s.log, err)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, stats)
	})
}

func computeStats(ctx context.Context, st store.Store, now time.Time) (*admin.Stats, error) {
	stats := &admin.Stats{ByStatus: map[string]int{}, PerMinute: make([]int, 60)}
	count := func(kind store.Kind, each func(store.Record) error) (int, error) {
		n, after := 0, ""
		for {
			recs, more, err := st.List(ctx, kind, store.ListOptions{After: after, Limit: 1000})
			if err != nil {
				return 0, fmt.Errorf("counting %s: %w", kind, err)
			}
			for _, rec := range recs {
				if each != nil {
					if err := each(rec); err != nil {
						return 0, err
					}
				}
				after = rec.ID
			}
			n += len(recs)
			if !more {
				return n, nil
			}
			if n >= MaxStatsScan {
				stats.Truncated = true
				return n, nil
			}
		}
	}
	var err error
	if stats.Enrollments, err = count(store.KindEnrollment, nil); err != nil {
		return nil, err
	}
	if stats.EnrollmentGroups, err = count(store.KindEnrollmentGroup, nil); err != nil {
		return nil, err
	}
	// The minute buckets end at the end of the current minute.
	end := now.Truncate(time.Minute).Add(time.Minute)
	after := ""
	for {
		regs, more, err := enroll.ListRegistrations(ctx, st, "", store.ListOptions{After: after, Limit: 1000})
		if err != nil {
			return nil, fmt.Errorf("counting registrations: %w", err)
		}
		for _, reg := range regs {
			s := reg.State
			stats.ByStatus[s.Status]++
			if t := s.LastUpdatedDateTimeUTC; t != nil {
				if ago := int(end.Sub(*t) / time.Minute); ago >= 0 && ago < 60 {
					stats.PerMinute[59-ago]++
				}
			}
			after = s.RegistrationID
		}
		stats.Registrations += len(regs)
		if !more {
			break
		}
		if stats.Registrations >= MaxStatsScan {
			stats.Truncated = true
			break
		}
	}
	return stats, nil
}
