package serviceapi

import (
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/instance"
)

// route is one operation of the API and the right it needs.
type route struct {
	right  instance.Right
	handle func(h *handler, req *request) error
}

// routeError is a path that matched nothing (404) or a method the path does
// not take (405, with the methods it does take).
type routeError struct {
	err   error
	allow []string
}

// Routes of the API, by collection and shape. Collection segments and the
// "query" and "attestationmechanism" segments match in any case (the npm
// client says "enrollmentgroups" for one call and "enrollmentGroups" for the
// others); a trailing slash is ignored (npm posts bulk to "/enrollments/").
var (
	enrollmentByID = map[string]route{
		http.MethodPut:    {instance.RightEnrollmentWrite, (*handler).putEnrollment},
		http.MethodGet:    {instance.RightEnrollmentRead, (*handler).getEnrollment},
		http.MethodDelete: {instance.RightEnrollmentWrite, (*handler).deleteEnrollment},
	}
	groupByID = map[string]route{
		http.MethodPut:    {instance.RightEnrollmentWrite, (*handler).putGroup},
		http.MethodGet:    {instance.RightEnrollmentRead, (*handler).getGroup},
		http.MethodDelete: {instance.RightEnrollmentWrite, (*handler).deleteGroup},
	}
	enrollmentBulk     = map[string]route{http.MethodPost: {instance.RightEnrollmentWrite, (*handler).bulkEnrollments}}
	groupBulk          = map[string]route{http.MethodPost: {instance.RightEnrollmentWrite, (*handler).bulkGroups}}
	enrollmentQuery    = route{instance.RightEnrollmentRead, (*handler).queryEnrollments}
	groupQuery         = route{instance.RightEnrollmentRead, (*handler).queryGroups}
	enrollmentAttest   = map[string]route{http.MethodPost: {instance.RightEnrollmentRead, (*handler).enrollmentAttestation}}
	groupAttest        = map[string]route{http.MethodPost: {instance.RightEnrollmentRead, (*handler).groupAttestation}}
	registrationByID   = map[string]route{http.MethodGet: {instance.RightRegistrationStatusRead, (*handler).getRegistration}, http.MethodDelete: {instance.RightRegistrationStatusWrite, (*handler).deleteRegistration}}
	registrationsQuery = map[string]route{http.MethodPost: {instance.RightRegistrationStatusRead, (*handler).queryRegistrations}}
)

// resolve finds the route of r and the id in its path. Ids are
// percent-decoded per segment, so an encoded "/" cannot split an id.
func resolve(r *http.Request) (*route, string, *routeError) {
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	if len(segs) > 1 && segs[len(segs)-1] == "" {
		segs = segs[:len(segs)-1]
	}
	for i, s := range segs {
		d, err := url.PathUnescape(s)
		if err != nil {
			return nil, "", &routeError{err: dps.Errorf(dps.CodeBadRequest, "The request path %q is not valid.", r.URL.EscapedPath())}
		}
		if d == "" {
			return nil, "", &routeError{err: dps.Errorf(dps.CodeNotFound, "No service API operation has the path %q.", r.URL.EscapedPath())}
		}
		segs[i] = d
	}
	var table map[string]route
	id := ""
	if len(segs) > 1 {
		id = segs[1]
	}
	switch col := strings.ToLower(segs[0]); {
	case col == "enrollments" || col == "enrollmentgroups":
		group := col == "enrollmentgroups"
		switch {
		case len(segs) == 1:
			table = pick(group, groupBulk, enrollmentBulk)
		case len(segs) == 2 && strings.EqualFold(segs[1], "query"):
			// POST .../query is the query; other methods address an
			// enrollment that is literally named "query".
			table = map[string]route{http.MethodPost: pickRoute(group, groupQuery, enrollmentQuery)}
			for m, rt := range pick(group, groupByID, enrollmentByID) {
				table[m] = rt
			}
		case len(segs) == 2:
			table = pick(group, groupByID, enrollmentByID)
		case len(segs) == 3 && strings.EqualFold(segs[2], "attestationmechanism"):
			table = pick(group, groupAttest, enrollmentAttest)
		}
	case col == "registrations":
		switch {
		case len(segs) == 2:
			table = registrationByID
		case len(segs) == 3 && strings.EqualFold(segs[2], "query"):
			table = registrationsQuery
		}
	}
	if table == nil {
		return nil, "", &routeError{err: dps.Errorf(dps.CodeNotFound, "No service API operation has the path %q.", r.URL.EscapedPath())}
	}
	rt, ok := table[r.Method]
	if !ok {
		allow := make([]string, 0, len(table))
		for m := range table {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		return nil, id, &routeError{
			err:   dps.Errorf(dps.CodeMethodNotAllowed, "The method %s is not allowed on %q; use %s.", r.Method, r.URL.EscapedPath(), strings.Join(allow, ", ")),
			allow: allow,
		}
	}
	return &rt, id, nil
}

func pick(group bool, g, e map[string]route) map[string]route {
	if group {
		return g
	}
	return e
}

func pickRoute(group bool, g, e route) route {
	if group {
		return g
	}
	return e
}
