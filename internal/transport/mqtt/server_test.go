package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

func decodeOp(t *testing.T, pk packets.Packet) dps.RegistrationOperationStatus {
	t.Helper()
	var op dps.RegistrationOperationStatus
	if err := json.Unmarshal(pk.Payload, &op); err != nil {
		t.Fatalf("response payload %q is not an operation: %v", pk.Payload, err)
	}
	return op
}

func decodeErr(t *testing.T, pk packets.Packet) dps.Error {
	t.Helper()
	var e dps.Error
	if err := json.Unmarshal(pk.Payload, &e); err != nil {
		t.Fatalf("response payload %q is not an error body: %v", pk.Payload, err)
	}
	return e
}

// TestRegisterAndPoll walks the Node/Python flow packet by packet: CONNACK
// without session, SUBACK granting 1, PUBACK before each response, $rid
// first, retry-after on 202 only.
func TestRegisterAndPoll(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))

	// Python connects with clean=false; there must still be no session.
	ack := rc.connect(connectOpts{clientID: "dev-1", username: testUsername("dev-1"), password: testSAS, clean: false, keepalive: 60})
	if ack.ReasonCode != 0 || ack.SessionPresent {
		t.Fatalf("CONNACK code %#x sessionPresent %v, want 0/false", ack.ReasonCode, ack.SessionPresent)
	}
	suback := rc.subscribe(20964, packets.Subscription{Filter: ResponseFilter, Qos: 1})
	if len(suback.ReasonCodes) != 1 || suback.ReasonCodes[0] != 1 {
		t.Fatalf("SUBACK granted %v, want [1]", suback.ReasonCodes)
	}

	const rid = "50c76282-0fdc-4bf7-a505-7fe5600ecb0d"
	res := rc.request(20965, registerTopic(rid), `{"registrationId":"dev-1","payload":{"modelId":"dtmi:x;1"}}`)
	if want := "$dps/registrations/res/202/?$rid=" + rid + "&retry-after=3"; res.TopicName != want {
		t.Fatalf("register response topic %q, want %q", res.TopicName, want)
	}
	op := decodeOp(t, res)
	if op.Status != dps.StatusAssigning || op.OperationID == "" {
		t.Fatalf("register answer %+v", op)
	}
	req := fp.lastRequest(t)
	want := provision.Request{
		IDScope: testScope, RegistrationID: "dev-1", SASToken: testSAS, APIVersion: "2019-03-31",
		Transport: TransportMQTT, Payload: json.RawMessage(`{"modelId":"dtmi:x;1"}`),
	}
	if req.IDScope != want.IDScope || req.RegistrationID != want.RegistrationID || req.SASToken != want.SASToken ||
		req.APIVersion != want.APIVersion || req.Transport != want.Transport || string(req.Payload) != string(want.Payload) ||
		!strings.HasPrefix(req.RemoteAddr, "127.0.0.1:") || req.PeerCertificates != nil {
		t.Fatalf("engine request %+v, want %+v", req, want)
	}

	// First poll: still assigning, retry-after 1.5 s rounded up.
	res = rc.request(20966, statusTopic("4c8c6365", op.OperationID), " ")
	if want := "$dps/registrations/res/202/?$rid=4c8c6365&retry-after=2"; res.TopicName != want {
		t.Fatalf("poll response topic %q, want %q", res.TopicName, want)
	}
	if op2 := decodeOp(t, res); op2.Status != dps.StatusAssigning || op2.RegistrationState == nil {
		t.Fatalf("first poll answer %+v", op2)
	}
	// Second poll: assigned, 200, no retry-after.
	res = rc.request(20967, statusTopic("6ed4077b", op.OperationID), " ")
	if want := "$dps/registrations/res/200/?$rid=6ed4077b"; res.TopicName != want {
		t.Fatalf("poll response topic %q, want %q", res.TopicName, want)
	}
	op3 := decodeOp(t, res)
	if op3.Status != dps.StatusAssigned || op3.RegistrationState.AssignedHub != "hub-1.example.net" {
		t.Fatalf("second poll answer %+v", op3)
	}
	if got := fp.opIDs; len(got) != 2 || got[0] != op.OperationID {
		t.Fatalf("engine saw operation ids %v", got)
	}
}

// TestCSDKStyle covers the C SDK: keep-alive 0, QoS 0 requests, integer
// $rid, the register JSON sent again on polls, and percent-encoded query
// values (Python).
func TestCSDKStyle(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	ack := rc.connect(connectOpts{clientID: "dev-c", username: testScope + "/registrations/dev-c/api-version=2021-06-01&ClientVersion=1.15.0", password: testSAS, clean: true})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK code %#x", ack.ReasonCode)
	}
	rc.subscribe(1, packets.Subscription{Filter: ResponseFilter, Qos: 1})

	body := `{"registrationId":"dev-c"}`
	rc.publish(0, 0, registerTopic("2"), body)
	res := rc.response() // no PUBACK for QoS 0: the response comes first
	if want := "$dps/registrations/res/202/?$rid=2&retry-after=3"; res.TopicName != want {
		t.Fatalf("topic %q, want %q", res.TopicName, want)
	}
	op := decodeOp(t, res)
	if got := fp.lastRequest(t).APIVersion; got != "2021-06-01" {
		t.Fatalf("api version %q", got)
	}

	// The operation id percent-encoded, as Python sends it.
	encoded := strings.ReplaceAll(op.OperationID, ".", "%2E")
	for i, wantStatus := range []string{"202", "200"} {
		rc.publish(0, 0, statusTopic("3", encoded), body)
		res = rc.response()
		if !strings.HasPrefix(res.TopicName, "$dps/registrations/res/"+wantStatus+"/?$rid=3") {
			t.Fatalf("poll %d topic %q, want status %s", i, res.TopicName, wantStatus)
		}
	}
	if got := fp.opIDs[0]; got != op.OperationID {
		t.Fatalf("engine saw operation id %q, want %q", got, op.OperationID)
	}
}

func TestRegisterPayloads(t *testing.T) {
	tests := []struct {
		name        string
		body        string
		wantPayload string // "" means nil
		wantStatus  string
	}{
		{"empty (C#)", "", "", "202"},
		{"space", " ", "", "202"},
		{"payload null (Python)", `{"payload": null, "registrationId": "dev-p"}`, "", "202"},
		{"C# payload only", `{"payload":{"a":1}}`, `{"a":1}`, "202"},
		{"other registration id ignored", `{"registrationId":"someone-else","payload":{"b":2}}`, `{"b":2}`, "202"},
		{"not JSON", `{"payload":`, "", "400"},
	}
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	rc.connectDevice("dev-p")
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fp.mu.Lock()
			fp.requests = nil
			fp.mu.Unlock()
			res := rc.request(uint16(100+i), registerTopic("r"), tt.body)
			if !strings.HasPrefix(res.TopicName, "$dps/registrations/res/"+tt.wantStatus+"/") {
				t.Fatalf("topic %q, want status %s", res.TopicName, tt.wantStatus)
			}
			if tt.wantStatus != "202" {
				if e := decodeErr(t, res); e.ErrorCode != dps.CodeBadRequest || e.Message == "" {
					t.Fatalf("error body %+v", e)
				}
				return
			}
			req := fp.lastRequest(t)
			if req.RegistrationID != "dev-p" {
				t.Fatalf("registration id %q, want the CONNECT's", req.RegistrationID)
			}
			if string(req.Payload) != tt.wantPayload || (tt.wantPayload == "" && req.Payload != nil) {
				t.Fatalf("payload %q, want %q", req.Payload, tt.wantPayload)
			}
		})
	}
}

func TestEngineErrors(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantTopic string
		wantCode  int
	}{
		{"unauthorized", dps.Errorf(dps.CodeUnauthorizedDevice, "Unauthorized."), "$dps/registrations/res/401/?$rid=9", dps.CodeUnauthorizedDevice},
		{"throttled with hint", &dps.Error{ErrorCode: dps.CodeThrottled, Message: "slow down", RetryAfter: 2500 * time.Millisecond}, "$dps/registrations/res/429/?$rid=9&retry-after=3", dps.CodeThrottled},
		{"unavailable without hint", dps.Errorf(dps.CodeServiceUnavailable, "down"), "$dps/registrations/res/503/?$rid=9", dps.CodeServiceUnavailable},
		{"not found", dps.Errorf(dps.CodeEnrollmentNotFound, "no enrollment"), "$dps/registrations/res/404/?$rid=9", dps.CodeEnrollmentNotFound},
		{"plain error hidden", errors.New("database on fire"), "$dps/registrations/res/500/?$rid=9", dps.CodeInternal},
		{"wrapped dps error", errors.Join(errors.New("ctx"), dps.Errorf(dps.CodeUnauthorized, "no")), "$dps/registrations/res/401/?$rid=9", dps.CodeUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fp := &fakeProvisioner{register: func(context.Context, provision.Request) (provision.Result, error) {
				return provision.Result{}, tt.err
			}}
			ts := startServer(t, fp, Options{})
			rc := newRawClient(t, ts.dialTLS(t, nil))
			rc.connectDevice("dev-e")
			res := rc.request(1, registerTopic("9"), "")
			if res.TopicName != tt.wantTopic {
				t.Fatalf("topic %q, want %q", res.TopicName, tt.wantTopic)
			}
			e := decodeErr(t, res)
			if e.ErrorCode != tt.wantCode || e.Message == "" || e.TrackingID == "" || e.TimestampUTC.IsZero() {
				t.Fatalf("error body %s", res.Payload)
			}
			if strings.Contains(string(res.Payload), "fire") {
				t.Fatalf("internal error text leaked: %s", res.Payload)
			}
		})
	}
}

func TestEngineAnswers(t *testing.T) {
	tests := []struct {
		name      string
		status    func(context.Context, provision.Request, string) (provision.Result, error)
		wantTopic string
	}{
		{"assigning with zero retry", func(_ context.Context, _ provision.Request, id string) (provision.Result, error) {
			return provision.Result{Operation: &dps.RegistrationOperationStatus{OperationID: id, Status: dps.StatusAssigning}}, nil
		}, "$dps/registrations/res/202/?$rid=x&retry-after=0"},
		{"failed is terminal", func(_ context.Context, _ provision.Request, id string) (provision.Result, error) {
			return provision.Result{Operation: &dps.RegistrationOperationStatus{OperationID: id, Status: dps.StatusFailed,
				RegistrationState: &dps.DeviceRegistrationState{Status: dps.StatusFailed, ErrorCode: 400209}}}, nil
		}, "$dps/registrations/res/200/?$rid=x"},
		{"disabled is terminal", func(_ context.Context, _ provision.Request, id string) (provision.Result, error) {
			return provision.Result{Operation: &dps.RegistrationOperationStatus{OperationID: id, Status: dps.StatusDisabled}, RetryAfter: time.Second}, nil
		}, "$dps/registrations/res/200/?$rid=x"},
		{"no operation is an internal error", func(context.Context, provision.Request, string) (provision.Result, error) {
			return provision.Result{}, nil
		}, "$dps/registrations/res/500/?$rid=x"},
		{"panic is an internal error", func(context.Context, provision.Request, string) (provision.Result, error) {
			panic("boom")
		}, "$dps/registrations/res/500/?$rid=x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, &fakeProvisioner{status: tt.status}, Options{})
			rc := newRawClient(t, ts.dialTLS(t, nil))
			rc.connectDevice("dev-a")
			res := rc.request(1, statusTopic("x", "op-1"), " ")
			if res.TopicName != tt.wantTopic {
				t.Fatalf("topic %q, want %q", res.TopicName, tt.wantTopic)
			}
			if !json.Valid(res.Payload) {
				t.Fatalf("payload %q is not JSON", res.Payload)
			}
		})
	}
}

// TestResponseOnlyToAskingClient connects two devices subscribed to the
// same filter and checks that neither sees the other's answers.
func TestResponseOnlyToAskingClient(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	a := newRawClient(t, ts.dialTLS(t, nil))
	a.connectDevice("dev-a")
	b := newRawClient(t, ts.dialTLS(t, nil))
	b.connectDevice("dev-b")
	// A third connection with the same registration id must not take
	// over or disturb the first.
	a2 := newRawClient(t, ts.dialTLS(t, nil))
	a2.connectDevice("dev-a")

	res := a.request(1, registerTopic("ra"), "")
	op := decodeOp(t, res)
	if !strings.HasSuffix(op.OperationID, ".dev-a") {
		t.Fatalf("a got %q", op.OperationID)
	}
	a.request(2, statusTopic("ra2", op.OperationID), " ")

	// Server writes on one connection are ordered, so if anything had
	// been sent to b or a2 it would arrive before the PINGRESP.
	for name, rc := range map[string]*rawClient{"b": b, "a2": a2} {
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if pk := rc.mustRecv(packets.Pingresp); pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("%s: unexpected packet", name)
		}
	}
	res = b.request(3, registerTopic("rb"), "")
	if !strings.Contains(res.TopicName, "$rid=rb") || !strings.HasSuffix(decodeOp(t, res).OperationID, ".dev-b") {
		t.Fatalf("b got %q %s", res.TopicName, res.Payload)
	}
	// a is still connected and got nothing of b's.
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	a.mustRecv(packets.Pingresp)
}

func TestSubscribe(t *testing.T) {
	ts := startServer(t, &fakeProvisioner{}, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	ack := rc.connect(connectOpts{clientID: "dev-s", username: testUsername("dev-s"), password: testSAS, clean: true})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	suback := rc.subscribe(5,
		packets.Subscription{Filter: ResponseFilter, Qos: 2},
		packets.Subscription{Filter: "$dps/registrations/res/202/#", Qos: 1},
		packets.Subscription{Filter: "#", Qos: 1},
		packets.Subscription{Filter: "$SYS/#", Qos: 0},
	)
	want := []byte{1, 0x80, 0x80, 0x80}
	if string(suback.ReasonCodes) != string(want) {
		t.Fatalf("SUBACK granted %v, want %v", suback.ReasonCodes, want)
	}
}

func TestConnectRefused(t *testing.T) {
	tests := []struct {
		name     string
		username string
	}{
		{"no username", ""},
		{"no api-version", testScope + "/registrations/dev-1/ClientVersion=x"},
		{"empty registration id", testScope + "/registrations//api-version=2019-03-31"},
		{"wrong second segment", testScope + "/devices/dev-1/api-version=2019-03-31"},
		{"too few segments", testScope + "/registrations/dev-1"},
	}
	ts := startServer(t, &fakeProvisioner{}, Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := newRawClient(t, ts.dialTLS(t, nil))
			ack := rc.connect(connectOpts{clientID: "dev-1", username: tt.username, password: testSAS, clean: true})
			if ack.ReasonCode != packets.Err3NotAuthorized.Code {
				t.Fatalf("CONNACK code %#x, want %#x", ack.ReasonCode, packets.Err3NotAuthorized.Code)
			}
			if _, err := rc.recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("after refusal: %v, want EOF", err)
			}
		})
	}
}

// TestUnknownTopicDisconnects checks that a QoS 1 publish to a topic DPS
// does not know ends the connection and reaches nobody.
func TestUnknownTopicDisconnects(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	other := newRawClient(t, ts.dialTLS(t, nil))
	other.connectDevice("dev-o")
	rc := newRawClient(t, ts.dialTLS(t, nil))
	rc.connectDevice("dev-u")
	rc.publish(1, 1, "$dps/registrations/res/200/?$rid=1", `{"status":"assigned"}`)
	for {
		pk, err := rc.recv()
		if err != nil {
			break // connection closed, as wanted
		}
		if pk.FixedHeader.Type != packets.Disconnect {
			t.Fatalf("got %s, want the connection closed", packets.PacketNames[pk.FixedHeader.Type])
		}
	}
	other.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	other.mustRecv(packets.Pingresp)
}

func TestX509PeerCertificates(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	devCert := newCert(t, "my-x509-device")
	rc := newRawClient(t, ts.dialTLS(t, &devCert))
	ack := rc.connect(connectOpts{clientID: "my-x509-device", username: testUsername("my-x509-device"), noPass: true, clean: true, keepalive: 180})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	rc.subscribe(1, packets.Subscription{Filter: ResponseFilter, Qos: 1})
	rc.request(2, registerTopic("1"), `{"registrationId":"my-x509-device"}`)
	req := fp.lastRequest(t)
	if req.SASToken != "" || len(req.PeerCertificates) != 1 || req.PeerCertificates[0].Subject.CommonName != "my-x509-device" {
		t.Fatalf("engine request sas=%q certs=%d", req.SASToken, len(req.PeerCertificates))
	}
}

// TestInflightLimit fills a connection's request slots with requests the
// engine holds, checks that one more is answered 429 at once, then lets
// the held ones finish.
func TestInflightLimit(t *testing.T) {
	const limit = 3
	release := make(chan struct{})
	var entered sync.WaitGroup
	entered.Add(limit)
	fp := &fakeProvisioner{}
	fp.register = func(ctx context.Context, req provision.Request) (provision.Result, error) {
		entered.Done()
		select {
		case <-release:
		case <-ctx.Done():
			return provision.Result{}, ctx.Err()
		}
		return provision.Result{Operation: &dps.RegistrationOperationStatus{OperationID: "op", Status: dps.StatusAssigning}, RetryAfter: time.Second}, nil
	}
	ts := startServer(t, fp, Options{MaxInflight: limit})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	rc.connectDevice("dev-l")

	for i := range limit {
		rc.publish(1, uint16(10+i), registerTopic("held"), "")
		rc.mustRecv(packets.Puback)
	}
	entered.Wait()
	res := rc.request(99, registerTopic("extra"), "")
	if want := "$dps/registrations/res/429/?$rid=extra&retry-after=1"; res.TopicName != want {
		t.Fatalf("topic %q, want %q", res.TopicName, want)
	}
	if e := decodeErr(t, res); e.ErrorCode != dps.CodeThrottled {
		t.Fatalf("error body %s", res.Payload)
	}
	close(release)
	for range limit {
		if res := rc.response(); res.TopicName != "$dps/registrations/res/202/?$rid=held&retry-after=1" {
			t.Fatalf("topic %q", res.TopicName)
		}
	}
}

// TestGracefulClose checks that Close lets a request in the engine finish
// and be answered before the connection is closed.
func TestGracefulClose(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	fp := &fakeProvisioner{register: func(context.Context, provision.Request) (provision.Result, error) {
		close(entered)
		<-release
		return provision.Result{Operation: &dps.RegistrationOperationStatus{OperationID: "op", Status: dps.StatusAssigning}}, nil
	}}
	ts := startServer(t, fp, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	rc.connectDevice("dev-g")
	rc.publish(1, 1, registerTopic("g"), "")
	rc.mustRecv(packets.Puback)
	<-entered

	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		closed <- ts.Close(ctx)
	}()
	// Serve returns once the listener is closed, before the drain ends.
	if err := <-ts.serveCh; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	ts.serveCh <- ErrServerClosed // for the cleanup's check
	close(release)
	if res := rc.response(); res.TopicName != "$dps/registrations/res/202/?$rid=g&retry-after=0" {
		t.Fatalf("topic %q", res.TopicName)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for {
		if _, err := rc.recv(); err != nil {
			break
		}
	}
}

func TestCloseGivesUp(t *testing.T) {
	entered := make(chan struct{})
	fp := &fakeProvisioner{register: func(ctx context.Context, _ provision.Request) (provision.Result, error) {
		close(entered)
		<-ctx.Done() // only Close's cancellation ends this
		return provision.Result{}, ctx.Err()
	}}
	ts := startServer(t, fp, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	rc.connectDevice("dev-x")
	rc.publish(1, 1, registerTopic("x"), "")
	rc.mustRecv(packets.Puback)
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ts.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close: %v, want context.Canceled", err)
	}
}
