package eventhub

import (
	"hash/fnv"
	"time"
)

// DefaultPartitions is how many partitions a hub's endpoint has unless
// configured otherwise (Azure's default for a new hub is 4).
const DefaultPartitions = 4

// MaxPartitions bounds the partition count (Azure allows 2 to 32 for
// standard tier hubs; more would only spread a small buffer thinner).
const MaxPartitions = 32

// PartitionOf returns the partition of a device's telemetry among n, a
// stable hash of its id, so each device's events stay in order in one
// partition, as IoT Hub routes them.
func PartitionOf(deviceID string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(deviceID))
	return int(h.Sum32() % uint32(n))
}

// Event is one telemetry message as the endpoint delivers it.
type Event struct {
	// SequenceNumber counts the partition's events from 0.
	SequenceNumber int64
	// Offset increases with each event of a partition; consumers treat
	// it as an opaque string.
	Offset       int64
	EnqueuedTime time.Time
	DeviceID     string
	ModuleID     string
	// The AMQP properties the device set.
	MessageID, CorrelationID, UserID, ContentType, ContentEncoding string
	// Annotations are further message annotations (iothub-interface-id,
	// dt-subject, …), string-valued.
	Annotations map[string]string
	// Properties are the application properties.
	Properties map[string]string
	Body       []byte
}

// PartitionInfo is what the $management node tells of a partition.
type PartitionInfo struct {
	// BeginSequenceNumber is the oldest event's kept; -1 when the
	// partition never had one.
	BeginSequenceNumber int64
	// LastSequenceNumber and LastOffset are the newest event's; -1 when
	// the partition never had one.
	LastSequenceNumber int64
	LastOffset         int64
	LastEnqueuedTime   time.Time
	// Empty says the partition keeps no events.
	Empty bool
}

// Source is the telemetry of one hub as its endpoint reads it.
type Source interface {
	// Name is the Event Hubs-compatible name (the EntityPath).
	Name() string
	// CreatedAt is when the hub was created.
	CreatedAt() time.Time
	// Partitions is the partition count.
	Partitions() int
	// CheckToken verifies the signature of a SAS token and that its
	// policy may read telemetry (ServiceConnect), and returns its expiry.
	// The token's audience is checked by the caller.
	CheckToken(token string) (time.Time, error)
	// Partition describes partition p.
	Partition(p int) PartitionInfo
	// Events returns up to max events of partition p, oldest first,
	// whose sequence numbers are at least from, and a channel closed
	// when the hub enqueues its next event.
	Events(p int, from int64, max int) ([]Event, <-chan struct{})
}

// Resolver returns the hub whose Event Hubs-compatible name is entity and
// which host (as the client wrote it, maybe with a port) names, or nil.
// An empty host matches any hub of that name; an empty entity, the hub
// whose host name host is.
type Resolver func(host, entity string) Source
