package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/internal/eventhub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/testenv"
)

// TestHubTelemetrySurvivesCrash kills dpsd with SIGKILL right after
// devices' telemetry was acknowledged (MQTT PUBACK) and checks that the
// restarted node has every message, through the hub's REST API (the CLI)
// and through its Event Hubs-compatible endpoint, with the same sequence
// numbers and offsets as before the crash.
func TestHubTelemetrySurvivesCrash(t *testing.T) {
	srv := startServerIn(t, "127.0.24")
	const hub, perDevice = "e2e-hub", 15
	devices := []string{"crash-1", "crash-2", "crash-3"}
	for _, d := range devices {
		dpsdCLI(t, srv, "hub", "device-identity", "create", "-n", hub, "-d", d)
	}
	sent := map[string]bool{}
	for _, d := range devices {
		token := strings.TrimSpace(dpsdCLI(t, srv, "hub", "generate-sas-token", "-n", hub, "-d", d, "--duration", "1h"))
		c := connectSASDevice(t, srv, d, token)
		for i := range perDevice {
			mid := fmt.Sprintf("%s-%02d", d, i)
			pub := c.Publish("devices/"+d+"/messages/events/$.mid="+mid, 1, false, "payload "+mid)
			if !pub.WaitTimeout(15*time.Second) || pub.Error() != nil {
				t.Fatalf("publish %s: not acknowledged: %v", mid, pub.Error())
			}
			sent[mid] = true
		}
		// The connection stays open: the kill ends it.
	}
	before := readEventHub(t, srv, len(sent))

	srv.Kill(t)
	n, err := testenv.StartNode(t, testenv.NodeOptions{IP: srv.IP, DataDir: srv.DataDir, Args: []string{
		"--hostname", srv.IP,
		"--https-addr", net.JoinHostPort(srv.IP, "443"),
		"--mqtt-addr", net.JoinHostPort(srv.IP, "8883"),
		"--amqp-addr", net.JoinHostPort(srv.IP, "5671"),
		"--log-level", "debug",
	}})
	if err != nil {
		t.Fatal(err)
	}
	n.StopOnCleanup(t, logTailOnError)
	srv.Node = n

	var listed []struct {
		SequenceNumber   int64             `json:"sequenceNumber"`
		SystemProperties map[string]string `json:"systemProperties"`
		Body             string            `json:"body"`
	}
	if err := json.Unmarshal([]byte(dpsdCLI(t, srv, "hub", "messages", "-n", hub, "-o", "json")), &listed); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range listed {
		mid := m.SystemProperties["messageId"]
		if m.Body != "payload "+mid || before[mid].offset != fmt.Sprint(m.SequenceNumber) {
			t.Errorf("after the crash the hub lists %s with body %q and sequence number %d; before it, offset %s", mid, m.Body, m.SequenceNumber, before[mid].offset)
		}
		got[mid] = true
	}
	for mid := range sent {
		if !got[mid] {
			t.Errorf("acknowledged message %s lost in the crash", mid)
		}
	}
	after := readEventHub(t, srv, len(sent))
	for mid, b := range before {
		if a := after[mid]; a != b {
			t.Errorf("event %s: before the crash %+v, after it %+v", mid, b, a)
		}
	}

	// Numbering goes on past what was given before the crash.
	token := strings.TrimSpace(dpsdCLI(t, srv, "hub", "generate-sas-token", "-n", hub, "-d", devices[0], "--duration", "1h"))
	c := connectSASDevice(t, srv, devices[0], token)
	if pub := c.Publish("devices/"+devices[0]+"/messages/events/$.mid=late", 1, false, "payload late"); !pub.WaitTimeout(15*time.Second) || pub.Error() != nil {
		t.Fatalf("publish after the restart: %v", pub.Error())
	}
	late := readEventHub(t, srv, len(sent)+1)["late"]
	for mid, b := range before {
		if b.partition == late.partition && b.sequence >= late.sequence {
			t.Errorf("after the restart a new event got sequence number %d in partition %d, which %s had", late.sequence, late.partition, mid)
		}
	}
}

// connectSASDevice connects a device to the server's hub over MQTT with a
// SAS token.
func connectSASDevice(t *testing.T, srv *dpsdServer, id, token string) paho.Client {
	t.Helper()
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + net.JoinHostPort(srv.IP, "8883")).
		SetClientID(id).
		SetUsername(srv.Hub + "/" + id + "/?api-version=2021-04-12").
		SetPassword(token).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: srv.roots(t), ServerName: srv.Hub})
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("device %s: connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// ehEvent is where an event is on the Event Hubs-compatible endpoint.
type ehEvent struct {
	partition int
	sequence  int64
	offset    string
}

// readEventHub reads every partition of the server's hub's Event
// Hubs-compatible endpoint from its start, want events in all, and
// returns them by message id.
func readEventHub(t *testing.T, srv *dpsdServer, want int) map[string]ehEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := goamqp.Dial(ctx, "amqps://"+net.JoinHostPort(srv.IP, "5671"), &goamqp.ConnOptions{
		HostName: srv.Hub, TLSConfig: &tls.Config{RootCAs: srv.roots(t), ServerName: srv.Hub}, SASLType: goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		t.Fatalf("event hub: %v", err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	in, err := sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"})
	if err != nil {
		t.Fatal(err)
	}
	var cs struct {
		ConnectionString string `json:"connectionString"`
	}
	if err := json.Unmarshal([]byte(dpsdCLI(t, srv, "hub", "show", "-n", "e2e-hub", "-o", "json")), &cs); err != nil {
		t.Fatal(err)
	}
	parsed, err := sas.ParseConnectionString(cs.ConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	audience := "sb://" + srv.Hub + "/e2e-hub"
	tok, err := sas.New(url.QueryEscape(audience), parsed.SharedAccessKeyName, parsed.SharedAccessKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	m := goamqp.NewMessage(nil)
	m.Value = tok
	reply := "cbs-reply"
	m.Properties = &goamqp.MessageProperties{MessageID: "put-1", ReplyTo: &reply}
	m.ApplicationProperties = map[string]any{"operation": "put-token", "name": audience, "type": "servicebus.windows.net:sastoken"}
	if err := out.Send(ctx, m, nil); err != nil {
		t.Fatal(err)
	}
	ans, err := in.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := ans.ApplicationProperties["status-code"].(int32); code != 202 {
		t.Fatalf("put-token: %d", code)
	}
	events := map[string]ehEvent{}
	// Each partition is read until the wait for its next event times
	// out; the total is checked after.
	for p := range eventhub.DefaultPartitions {
		r, err := sess.NewReceiver(ctx, fmt.Sprintf("e2e-hub/ConsumerGroups/$Default/Partitions/%d", p),
			&goamqp.ReceiverOptions{Credit: 100, Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter("amqp.annotation.x-opt-offset > '-1'")}})
		if err != nil {
			t.Fatalf("partition %d: %v", p, err)
		}
		for len(events) < want {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			ev, err := r.Receive(rctx, nil)
			rcancel()
			if err != nil {
				break
			}
			_ = r.AcceptMessage(ctx, ev)
			if ev.Properties == nil {
				t.Fatalf("partition %d: an event without properties", p)
			}
			mid, _ := ev.Properties.MessageID.(string)
			seq, _ := ev.Annotations["x-opt-sequence-number"].(int64)
			off, _ := ev.Annotations["x-opt-offset"].(string)
			events[mid] = ehEvent{partition: p, sequence: seq, offset: off}
		}
		_ = r.Close(ctx)
	}
	if len(events) != want {
		t.Fatalf("the Event Hubs-compatible endpoint has %d events, want %d", len(events), want)
	}
	return events
}
