package admin

// The consistency check of registration records and hub identities ("dpsd
// doctor", /dpsd/doctor).

// Problem kinds a check reports.
const (
	// ProblemInterrupted: a registration's work whose owner is gone.
	ProblemInterrupted = "interrupted"
	// ProblemMissing: a record names an identity its hub does not hold.
	ProblemMissing = "missing"
	// ProblemMismatch: the hub holds the identity with other credentials.
	ProblemMismatch = "mismatch"
	// ProblemOrphan: a hub holds an identity no record names.
	ProblemOrphan = "orphan"
	// ProblemUnreachable: a hub could not be asked.
	ProblemUnreachable = "unreachable"
)

// DoctorRequest is the body of POST /dpsd/doctor: what a check may repair.
type DoctorRequest struct {
	Repair bool `json:"repair"`
	Prune  bool `json:"prune"`
}

// Problem is one disagreement between the records and the hubs.
type Problem struct {
	Kind           string `json:"kind"`
	RegistrationID string `json:"registrationId,omitempty"`
	Hub            string `json:"hub,omitempty"`
	DeviceID       string `json:"deviceId,omitempty"`
	Detail         string `json:"detail,omitempty"`
	// Repaired is set when the check fixed it.
	Repaired bool `json:"repaired,omitempty"`
}

// CheckReport is what a consistency check found.
type CheckReport struct {
	Registrations int `json:"registrations"`
	// InProgress counts registrations being worked on, left alone.
	InProgress int `json:"inProgress"`
	// Unverifiable counts assigned records that do not say what identity
	// they put in the hub (written before dpsd kept it).
	Unverifiable int `json:"unverifiable"`
	// HubsListed are the hubs whose identities were compared for orphans.
	HubsListed []string `json:"hubsListed"`
	// Counts are problems by kind.
	Counts   map[string]int `json:"counts"`
	Repaired int            `json:"repaired"`
	Problems []Problem      `json:"problems"`
}

// Total is the number of problems found.
func (r *CheckReport) Total() int {
	n := 0
	for _, c := range r.Counts {
		n += c
	}
	return n
}
