package admin

import "time"

// LinkedHub is a linked IoT hub, as GET /dpsd/linkedHubs/{name} shows it and
// as stored.
type LinkedHub struct {
	// Name is the hub's host name, taken from its connection string.
	Name string `json:"name"`
	// ConnectionString is the hub's connection string. Answers show the key
	// as "****".
	ConnectionString      string `json:"connectionString"`
	AllocationWeight      int    `json:"allocationWeight"`
	ApplyAllocationPolicy bool   `json:"applyAllocationPolicy"`
	Location              string `json:"location,omitempty"`
	// CACertificates are PEM certificates of the CAs that issued the
	// hub's TLS certificate, for hubs with private certificates: dpsd
	// trusts them, and only them, when it registers devices in the hub and
	// checks its health. Empty means the system roots.
	CACertificates string `json:"caCertificates,omitempty"`

	// Health is what this node's last checks of the hub found; it is not
	// stored, and is absent when health checks are off.
	Health *LinkedHubHealth `json:"health,omitempty"`

	// Set from the store on reads; not part of the stored document.
	ETag                   string     `json:"etag,omitempty"`
	CreatedDateTimeUTC     *time.Time `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC *time.Time `json:"lastUpdatedDateTimeUtc,omitempty"`
}

// LinkedHubDefinition is what a client sends to link or update a hub. On create,
// absent members take their defaults; on update, they keep their current
// values.
type LinkedHubDefinition struct {
	// Name, when given, must be the host name of the hub (read-only, as in
	// Azure's IotHubDefinitionDescription); it lets clients send back what
	// they read.
	Name                  string  `json:"name,omitempty"`
	ConnectionString      string  `json:"connectionString,omitempty"`
	AllocationWeight      *int    `json:"allocationWeight,omitempty"`
	ApplyAllocationPolicy *bool   `json:"applyAllocationPolicy,omitempty"`
	Location              *string `json:"location,omitempty"`
	// CACertificates replaces the hub's CA bundle (PEM); "" on update
	// removes it, so the hub is trusted through the system roots again.
	CACertificates *string `json:"caCertificates,omitempty"`
}

// Health states of a linked hub.
const (
	// HubHealthUnknown: not checked yet (a hub linked a moment ago, or a
	// node that just started). Allocation treats it as healthy.
	HubHealthUnknown = "unknown"
	// HubHealthHealthy: the last check succeeded.
	HubHealthHealthy = "healthy"
	// HubHealthUnhealthy: the last checks failed, as many in a row as the
	// node's threshold; allocation skips the hub while it has others.
	HubHealthUnhealthy = "unhealthy"
)

// LinkedHubHealth is what one node's background checks found about a
// linked hub. Each node checks for itself: what matters to a node's
// allocations is whether that node reaches the hub.
type LinkedHubHealth struct {
	// State is HubHealthUnknown, HubHealthHealthy or HubHealthUnhealthy.
	State string `json:"state"`
	// Since is when the hub entered State.
	Since time.Time `json:"sinceUtc,omitzero"`
	// LastCheck is when the last check ended; LatencyMs how long it took.
	LastCheck time.Time `json:"lastCheckUtc,omitzero"`
	LatencyMs int64     `json:"latencyMs,omitempty"`
	// ConsecutiveFailures counts the failed checks since the last success.
	ConsecutiveFailures int `json:"consecutiveFailures,omitempty"`
	// LastError says why the last failed check failed.
	LastError string `json:"lastError,omitempty"`
}

// LinkedHubKeyRotation is the body of POST
// /dpsd/linkedHubs/{name}/rotateKey: the hub's new connection string
// (same host name; a new key, possibly of another shared access policy).
// dpsd checks the new key against the hub before it replaces the old one,
// unless SkipCheck is set (for a hub that is down while its key changes).
type LinkedHubKeyRotation struct {
	ConnectionString string `json:"connectionString"`
	SkipCheck        bool   `json:"skipCheck,omitempty"`
}
