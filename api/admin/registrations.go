package admin

import "github.com/dpsd/dpsd/api/dps"

// RegistrationPage is the answer of GET /dpsd/registrations: the
// registration states of every enrollment (individual and group) that
// match the query's filters, in order of registration id. Continuation,
// when not empty, is the "after" of the next page.
type RegistrationPage struct {
	Items        []*dps.DeviceRegistrationState `json:"items"`
	Continuation string                         `json:"continuation,omitempty"`
	// Groups maps each listed registration id to the enrollment group it
	// belongs to; individual enrollments' registrations are absent.
	Groups map[string]string `json:"groups,omitempty"`
}

// Stats is the answer of GET /dpsd/stats: counts for an overview page.
type Stats struct {
	Enrollments      int            `json:"enrollments"`
	EnrollmentGroups int            `json:"enrollmentGroups"`
	Registrations    int            `json:"registrations"`
	ByStatus         map[string]int `json:"byStatus"`
	// PerMinute counts the registrations last updated in each of the last
	// 60 minutes, oldest first (index 59 is the current minute).
	PerMinute []int `json:"perMinute"`
	// Truncated says the counts stopped at the scan bound (MaxStatsScan
	// records of a kind) and are lower bounds.
	Truncated bool `json:"truncated,omitempty"`
}
