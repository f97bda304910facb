package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// fakeEngine answers register with "assigning" (Retry-After 3 s), polls
// with "assigned", and refuses the token "bad" with 401.
type fakeEngine struct {
	mu   sync.Mutex
	reqs []provision.Request
}

func (f *fakeEngine) Register(_ context.Context, req provision.Request) (provision.Result, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	if req.SASToken == "bad" {
		return provision.Result{}, dps.Errorf(dps.CodeUnauthorizedDevice, "Unauthorized")
	}
	return provision.Result{
		Operation:  &dps.RegistrationOperationStatus{OperationID: "op-1", Status: dps.StatusAssigning},
		RetryAfter: 3 * time.Second,
	}, nil
}

func (f *fakeEngine) OperationStatus(_ context.Context, req provision.Request, opID string) (provision.Result, error) {
	if opID != "op-1" {
		e := dps.Errorf(dps.CodeThrottled, "Slow down")
		e.RetryAfter = 5 * time.Second
		return provision.Result{}, e
	}
	return provision.Result{Operation: &dps.RegistrationOperationStatus{
		OperationID: opID, Status: dps.StatusAssigned,
		RegistrationState: &dps.DeviceRegistrationState{RegistrationID: req.RegistrationID, Status: dps.StatusAssigned, AssignedHub: "hub", DeviceID: req.RegistrationID},
	}}, nil
}

// dial serves one connection of s over a pipe and opens an AMQP client
// session with the device's two links.
func dial(t *testing.T, s *Server, user, token string) (*goamqp.Sender, *goamqp.Receiver) {
	t.Helper()
	return dialCredit(t, s, user, token, 0)
}

// dialCredit is dial with the receiver's credit option (-1: manual).
func dialCredit(t *testing.T, s *Server, user, token string, credit int32) (*goamqp.Sender, *goamqp.Receiver) {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serveConn(server, TransportAMQP, nil)
	}()
	t.Cleanup(func() {
		client.Close()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := goamqp.NewConn(ctx, client, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(user, token)})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	props := map[string]any{"com.microsoft:api-version": "2019-03-31"}
	recv, err := sess.NewReceiver(ctx, "0ne00000001/registrations/dev-1", &goamqp.ReceiverOptions{Properties: props, Credit: credit})
	if err != nil {
		t.Fatal(err)
	}
	send, err := sess.NewSender(ctx, "0ne00000001/registrations/dev-1", &goamqp.SenderOptions{Properties: props})
	if err != nil {
		t.Fatal(err)
	}
	return send, recv
}

func request(t *testing.T, send *goamqp.Sender, recv *goamqp.Receiver, props map[string]any, body []byte) (*goamqp.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := goamqp.NewMessage(body)
	m.Properties = &goamqp.MessageProperties{CorrelationID: "cid-1"}
	m.ApplicationProperties = props
	if err := send.Send(ctx, m, nil); err != nil {
		return nil, err
	}
	return recv.Receive(ctx, nil)
}

func TestRegisterAndPoll(t *testing.T) {
	eng := &fakeEngine{}
	s, err := New(eng, Options{})
	if err != nil {
		t.Fatal(err)
	}
	send, recv := dial(t, s, "0ne00000001/registrations/dev-1", "token")

	ans, err := request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-register"},
		[]byte(`{"registrationId":"dev-1","payload":{"a":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ans.Properties == nil || ans.Properties.CorrelationID != "cid-1" {
		t.Errorf("correlation id: %+v", ans.Properties)
	}
	if ans.ApplicationProperties["retry-after"] != "3" || ans.ApplicationProperties["Retry-After"] != "3" {
		t.Errorf("retry-after: %v", ans.ApplicationProperties)
	}
	var op dps.RegistrationOperationStatus
	if err := json.Unmarshal(ans.GetData(), &op); err != nil || op.Status != dps.StatusAssigning || op.OperationID != "op-1" {
		t.Fatalf("register answer %s: %v", ans.GetData(), err)
	}
	eng.mu.Lock()
	req := eng.reqs[0]
	eng.mu.Unlock()
	if req.IDScope != "0ne00000001" || req.RegistrationID != "dev-1" || req.SASToken != "token" ||
		req.APIVersion != "2019-03-31" || string(req.Payload) != `{"a":1}` || req.Transport != TransportAMQP {
		t.Errorf("engine request: %+v", req)
	}

	ans, err = request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": "op-1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ans.GetData(), &op); err != nil || op.Status != dps.StatusAssigned || op.RegistrationState.AssignedHub != "hub" {
		t.Fatalf("poll answer %s: %v", ans.GetData(), err)
	}
	if _, ok := ans.ApplicationProperties["retry-after"]; ok {
		t.Errorf("a terminal answer carries retry-after: %v", ans.ApplicationProperties)
	}

	// A throttled poll: rejected, the error JSON as description, the
	// retry-after in the info.
	_, err = request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": "other"}, nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != "com.microsoft:device-container-throttled" || ae.Info["retry-after"] != "5" {
		t.Fatalf("throttled poll: %v", err)
	}
	var body dps.Error
	if json.Unmarshal([]byte(ae.Description), &body) != nil || body.ErrorCode != dps.CodeThrottled || body.TrackingID == "" {
		t.Errorf("error description %q", ae.Description)
	}

	// Unknown operation types and missing operation ids are 400s.
	_, err = request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-get-registration"}, nil)
	if !errors.As(err, &ae) || ae.Condition != "com.microsoft:argument-error" {
		t.Errorf("unknown operation: %v", err)
	}
	_, err = request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus"}, nil)
	if !errors.As(err, &ae) || ae.Condition != "com.microsoft:argument-error" {
		t.Errorf("poll without operation id: %v", err)
	}
}

func TestWrongTokenRejected(t *testing.T) {
	s, err := New(&fakeEngine{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	send, recv := dial(t, s, "0ne00000001/registrations/dev-1", "bad")
	_, err = request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-register"}, nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("wrong token: %v", err)
	}
	var body dps.Error
	if json.Unmarshal([]byte(ae.Description), &body) != nil || body.ErrorCode != dps.CodeUnauthorizedDevice {
		t.Errorf("error description %q", ae.Description)
	}
}

func TestLinkToAnotherRegistrationRefused(t *testing.T) {
	s, err := New(&fakeEngine{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serveConn(server, TransportAMQP, nil)
	}()
	defer func() {
		client.Close()
		<-done
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := goamqp.NewConn(ctx, client, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("0ne00000001/registrations/dev-1", "t")})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.NewSender(ctx, "0ne00000001/registrations/someone-else", nil); err == nil {
		t.Error("a link to another registration than the SASL user's was attached")
	}
	if _, err := sess.NewSender(ctx, "$cbs", nil); err == nil {
		t.Error("a link to a node that is no registration was attached")
	}
}

func TestShutdownRefusesNewRequests(t *testing.T) {
	s, err := New(&fakeEngine{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	send, recv := dial(t, s, "0ne00000001/registrations/dev-1", "token")
	s.mu.Lock()
	s.closing = true // as Close sets it, without closing the connection yet
	s.mu.Unlock()
	_, err = request(t, send, recv, map[string]any{"iotdps-operation-type": "iotdps-register"}, nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondInternalError || ae.Info["retry-after"] != "1" {
		t.Fatalf("request during shutdown: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// A device that grants credit for the answer only after its request is
// settled (as Qpid Proton's blocking client does) gets the settlement
// first, then the answer.
func TestSettlementDoesNotWaitForCredit(t *testing.T) {
	s, err := New(&fakeEngine{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	send, recv := dialCredit(t, s, "0ne00000001/registrations/dev-1", "token", -1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := goamqp.NewMessage(nil)
	m.Properties = &goamqp.MessageProperties{CorrelationID: "cid-2"}
	m.ApplicationProperties = map[string]any{"iotdps-operation-type": "iotdps-register"}
	if err := send.Send(ctx, m, nil); err != nil {
		t.Fatalf("the request was not settled without credit: %v", err)
	}
	if err := recv.IssueCredit(1); err != nil {
		t.Fatal(err)
	}
	ans, err := recv.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Properties == nil || ans.Properties.CorrelationID != "cid-2" {
		t.Errorf("answer properties %+v", ans.Properties)
	}
}
