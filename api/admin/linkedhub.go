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
}
