package multinode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/internal/eventhub"
)

// eventReader opens a receiver on partition p of the hub's Event
// Hubs-compatible endpoint on node n, as an Event Hubs consumer does,
// with selector filter.
func (hc *hubCluster) eventReader(t *testing.T, n *node, p int, filter string) *goamqp.Receiver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	audience := "sb://" + hc.host + "/" + hc.name
	sess := hc.serviceSession(t, ctx, n, url.QueryEscape(audience), audience, "Event Hubs")
	r, err := sess.NewReceiver(ctx, fmt.Sprintf("%s/ConsumerGroups/$Default/Partitions/%d", hc.name, p),
		&goamqp.ReceiverOptions{Credit: 100, Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter(filter)}})
	if err != nil {
		t.Fatalf("partition %d on %s: %v", p, n.name, err)
	}
	return r
}

// event is what a test checks of an Event Hubs event.
type event struct {
	body     string
	sequence int64
	offset   string
}

// nextEvents receives k events from r.
func nextEvents(t *testing.T, r *goamqp.Receiver, k int, what string) []event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	var out []event
	for len(out) < k {
		m, err := r.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("%s: %d of %d events, then %v: %v", what, len(out), k, err, out)
		}
		_ = r.AcceptMessage(ctx, m)
		seq, _ := m.Annotations["x-opt-sequence-number"].(int64)
		off, _ := m.Annotations["x-opt-offset"].(string)
		out = append(out, event{body: string(m.GetData()), sequence: seq, offset: off})
	}
	return out
}

// sendTelemetry publishes a message of the device cl connects, and
// returns once the node acknowledged it (stored it).
func sendTelemetry(t *testing.T, cl paho.Client, id, body string) {
	t.Helper()
	if tok := cl.Publish("devices/"+id+"/messages/events/", 1, false, body); !tok.WaitTimeout(liveWait) || tok.Error() != nil {
		t.Fatalf("device %s: telemetry %q: %v", id, body, tok.Error())
	}
}

// listed is `dpsd hub messages` on node n: the bodies, oldest first, and
// the sequence numbers.
func (hc *hubCluster) listed(t *testing.T, n *node) ([]string, []int64) {
	t.Helper()
	var msgs []struct {
		SequenceNumber int64  `json:"sequenceNumber"`
		Body           string `json:"body"`
	}
	if err := json.Unmarshal([]byte(hc.cli(t, n, "hub", "messages", "-n", hc.name, "-o", "json")), &msgs); err != nil {
		t.Fatal(err)
	}
	var bodies []string
	var seqs []int64
	for _, m := range msgs {
		bodies, seqs = append(bodies, m.Body), append(seqs, m.SequenceNumber)
	}
	return bodies, seqs
}

// TestHubTelemetryAcrossNodes runs a built-in hub on two nodes over
// PostgreSQL with devices on both sending to one Event Hubs partition: an
// Event Hubs consumer on node B receives the messages sent through A
// live, in one order with consecutive sequence numbers; one resuming from
// a sequence number gets exactly the rest; `dpsd hub messages` on either
// node lists the hub's whole telemetry; devices sending at once through
// both nodes get one order, the same on both; and the hub's bound (20 messages
// here) applies to the hub's messages as a whole, not per node.
func TestHubTelemetryAcrossNodes(t *testing.T) {
	const keep = 20
	hc := startHubCluster(t, fmt.Sprintf("DPSD_HUB_TELEMETRY_MESSAGES=%d", keep))
	a, b := hc.nodes[0], hc.nodes[1]

	// Two devices in one partition, one connected to each node.
	idA := "mn-tel-a"
	p := eventhub.PartitionOf(idA, eventhub.DefaultPartitions)
	idB := ""
	for i := range 100 {
		if id := fmt.Sprintf("mn-tel-b%d", i); eventhub.PartitionOf(id, eventhub.DefaultPartitions) == p {
			idB = id
			break
		}
	}
	if idB == "" {
		t.Fatal("no device id of the same partition")
	}
	clA, _ := hc.mqttDevice(t, a, idA, hc.device(t, a, idA))
	clB, _ := hc.mqttDevice(t, b, idB, hc.device(t, a, idB))

	live := hc.eventReader(t, b, p, "amqp.annotation.x-opt-offset > '@latest'")
	var want []string
	for i := range 5 {
		for _, d := range []struct {
			cl paho.Client
			id string
		}{{clA, idA}, {clB, idB}} {
			body := fmt.Sprintf("%s-%d", d.id, i)
			sendTelemetry(t, d.cl, d.id, body)
			want = append(want, body)
		}
	}
	got := nextEvents(t, live, len(want), "events on B")
	prevOffset := int64(-1)
	for i, e := range got {
		off, _ := strconv.ParseInt(e.offset, 10, 64)
		if e.body != want[i] || (i > 0 && (e.sequence != got[i-1].sequence+1 || off <= prevOffset)) {
			t.Fatalf("the consumer on B received, in order:\n%v\nwant the bodies %v with consecutive sequence numbers and rising offsets", got, want)
		}
		prevOffset = off
	}

	// Resuming after the fourth event gets exactly the rest.
	resumed := hc.eventReader(t, b, p, fmt.Sprintf("amqp.annotation.x-opt-sequence-number > '%d'", got[3].sequence))
	if rest := nextEvents(t, resumed, len(got)-4, "events after a resume on B"); !slices.Equal(rest, got[4:]) {
		t.Fatalf("resumed after sequence number %d: %v; want %v", got[3].sequence, rest, got[4:])
	}
	// On A too, from the start.
	if fromA := nextEvents(t, hc.eventReader(t, a, p, "amqp.annotation.x-opt-offset > '-1'"), len(got), "events on A"); !slices.Equal(fromA, got) {
		t.Fatalf("the consumer on A received %v; on B %v", fromA, got)
	}

	// Both nodes list the whole telemetry.
	for _, n := range []*node{a, b} {
		if bodies, _ := hc.listed(t, n); !slices.Equal(bodies, want) {
			t.Fatalf("dpsd hub messages on %s lists %v; want %v", n.name, bodies, want)
		}
	}

	// Both devices at once, through their own nodes: the nodes' commits
	// meet, and every event still comes once, in one order, with
	// consecutive sequence numbers, the same on both nodes (fewer than
	// the bound, so a live consumer cannot fall behind what is dropped).
	liveA := hc.eventReader(t, a, p, "amqp.annotation.x-opt-offset > '@latest'")
	liveB := hc.eventReader(t, b, p, "amqp.annotation.x-opt-offset > '@latest'")
	const burst = 8
	done := make(chan struct{}, 2)
	for _, d := range []struct {
		cl paho.Client
		id string
	}{{clA, idA}, {clB, idB}} {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range burst {
				if tok := d.cl.Publish("devices/"+d.id+"/messages/events/", 1, false, fmt.Sprintf("%s-burst-%d", d.id, i)); !tok.WaitTimeout(liveWait) || tok.Error() != nil {
					t.Errorf("device %s: burst %d: %v", d.id, i, tok.Error())
					return
				}
			}
		}()
	}
	<-done
	<-done
	onA := nextEvents(t, liveA, 2*burst, "the burst on A")
	onB := nextEvents(t, liveB, 2*burst, "the burst on B")
	if !slices.Equal(onA, onB) {
		t.Fatalf("the burst on A:\n%v\non B:\n%v", onA, onB)
	}
	for i, e := range onB {
		if i > 0 && e.sequence != onB[i-1].sequence+1 {
			t.Fatalf("the burst's sequence numbers are not consecutive: %v", onB)
		}
	}
	if onB[0].sequence != got[len(got)-1].sequence+1 {
		t.Fatalf("the burst starts at sequence number %d after %d", onB[0].sequence, got[len(got)-1].sequence)
	}
	for _, e := range onB {
		want = append(want, e.body)
	}

	// Past the bound: both keep the hub's newest 20, whichever node took
	// them.
	for i := 5; i < 15; i++ {
		for _, d := range []struct {
			cl paho.Client
			id string
		}{{clA, idA}, {clB, idB}} {
			body := fmt.Sprintf("%s-%d", d.id, i)
			sendTelemetry(t, d.cl, d.id, body)
			want = append(want, body)
		}
	}
	want = want[len(want)-keep:]
	for _, n := range []*node{a, b} {
		var bodies []string
		for deadline := time.Now().Add(liveWait); ; time.Sleep(200 * time.Millisecond) {
			if bodies, _ = hc.listed(t, n); slices.Equal(bodies, want) || time.Now().After(deadline) {
				break
			}
		}
		if !slices.Equal(bodies, want) {
			t.Fatalf("dpsd hub messages on %s lists %v; want the hub's newest %d: %v", n.name, bodies, keep, want)
		}
	}
}
