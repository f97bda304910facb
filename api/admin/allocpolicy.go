package admin

import "time"

// AllocationPolicy is an in-process custom allocation policy: a CEL
// expression that an enrollment or group selects with
// customAllocationDefinition.webhookUrl "policy:NAME". It is the body of
// GET /dpsd/allocationPolicies/{name} and of the list's items.
type AllocationPolicy struct {
	Name string `json:"name"`
	// Expression is the policy's CEL source.
	Expression             string     `json:"expression"`
	Description            string     `json:"description,omitempty"`
	ETag                   string     `json:"etag,omitempty"`
	CreatedDateTimeUTC     *time.Time `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC *time.Time `json:"lastUpdatedDateTimeUtc,omitempty"`
}

// AllocationPolicyDefinition is the body of PUT
// /dpsd/allocationPolicies/{name} and of POST /dpsd/allocationPolicies:
// the policy's source and an optional description (and, for POST, its
// name).
type AllocationPolicyDefinition struct {
	Name        string `json:"name,omitempty"`
	Expression  string `json:"expression"`
	Description string `json:"description,omitempty"`
}
