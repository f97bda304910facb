package builtinhub

import (
	"fmt"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/eventhub"
)

// The endpoint's partitions follow the buffer: per-partition sequence
// numbers from 0, and what the buffer drops is gone from the partition
// while its last event is still told.
func TestEventSourceFollowsTheBuffer(t *testing.T) {
	b := newMessageBuffer(4, 0, 0, nil)
	b.setPartitions(2)
	src := eventSource{&Hub{msgs: b}}
	if n := src.Partitions(); n != 2 {
		t.Fatalf("partitions %d", n)
	}
	dev := "dev-a"
	p := eventhub.PartitionOf(dev, 2)
	if info := src.Partition(p); !info.Empty || info.LastSequenceNumber != -1 || info.BeginSequenceNumber != -1 {
		t.Errorf("new partition: %+v", info)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 6 {
		b.add(Message{DeviceID: dev, EnqueuedTime: t0.Add(time.Duration(i) * time.Second), Body: fmt.Sprint(i)})
	}
	// The buffer keeps 4 of the 6: sequence numbers 2 to 5.
	info := src.Partition(p)
	if info.Empty || info.BeginSequenceNumber != 2 || info.LastSequenceNumber != 5 || info.LastOffset != 6 || !info.LastEnqueuedTime.Equal(t0.Add(5*time.Second)) {
		t.Errorf("partition after 6 events, 4 kept: %+v", info)
	}
	evs, _ := src.Events(p, 0, 10)
	if len(evs) != 4 || evs[0].SequenceNumber != 2 || string(evs[0].Body) != "2" || evs[3].SequenceNumber != 5 {
		t.Errorf("events: %+v", evs)
	}
	if evs, _ := src.Events(p, 4, 1); len(evs) != 1 || evs[0].SequenceNumber != 4 {
		t.Errorf("from 4, one: %+v", evs)
	}
	if evs, _ := src.Events(1-p, 0, 10); len(evs) != 0 {
		t.Errorf("the other partition: %+v", evs)
	}
	// Binary bodies come back as sent.
	b.add(Message{DeviceID: dev, Body: "AAE=", BodyEncoding: "base64"})
	if evs, _ := src.Events(p, 6, 1); len(evs) != 1 || string(evs[0].Body) != "\x00\x01" {
		t.Errorf("binary body: %+v", evs)
	}
}
