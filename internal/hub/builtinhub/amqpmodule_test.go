package builtinhub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// amqpClient is a go-amqp connection to a hub's AMQP endpoint with a $cbs
// request/reply pair, as a device or module SDK opens it.
type amqpClient struct {
	t      *testing.T
	host   string
	sess   *goamqp.Session
	cbsOut *goamqp.Sender
	cbsIn  *goamqp.Receiver
}

func dialHubAMQP(t *testing.T, e *env, addr, host string) *amqpClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := goamqp.Dial(ctx, "amqps://"+addr, &goamqp.ConnOptions{
		HostName: host, TLSConfig: e.tlsConfig(host), SASLType: goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return newAMQPClient(t, conn, host)
}

// newAMQPClient opens a session and the $cbs pair on conn, whose tokens
// name the hub by host; conn is closed when the test ends.
func newAMQPClient(t *testing.T, conn *goamqp.Conn, host string) *amqpClient {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &amqpClient{t: t, host: host, sess: sess}
	if c.cbsOut, err = sess.NewSender(ctx, "$cbs", nil); err != nil {
		t.Fatal(err)
	}
	if c.cbsIn, err = sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// putToken puts a token for resource (under the hub's host name), signed
// with key, on $cbs and returns the answer's status code.
func (c *amqpClient) putToken(resource, key string) int32 {
	c.t.Helper()
	aud := c.host + "/" + resource
	tok, err := sas.New(url.QueryEscape(aud), "", key, time.Now().Add(time.Hour))
	if err != nil {
		c.t.Fatal(err)
	}
	m := &goamqp.Message{Value: tok}
	m.Properties = &goamqp.MessageProperties{MessageID: "put-" + resource, ReplyTo: ptr("cbs-reply")}
	m.ApplicationProperties = map[string]any{"operation": "put-token", "name": aud, "type": "azure-devices.net:sastoken"}
	ans := request(c.t, c.cbsOut, c.cbsIn, m)
	code, _ := ans.ApplicationProperties["status-code"].(int32)
	c.t.Logf("put-token %s: %d %v", resource, code, ans.ApplicationProperties["status-description"])
	return code
}

// linkPair attaches a sender and a receiver on addr with the channel
// correlation id and API version the SDKs send.
func (c *amqpClient) linkPair(addr, channel string) (*goamqp.Sender, *goamqp.Receiver, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	props := map[string]any{"com.microsoft:channel-correlation-id": channel, "com.microsoft:api-version": "2020-09-30"}
	snd, err := c.sess.NewSender(ctx, addr, &goamqp.SenderOptions{Properties: props, SettlementMode: goamqp.SenderSettleModeSettled.Ptr()})
	if err != nil {
		return nil, nil, err
	}
	rcv, err := c.sess.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{Properties: props, TargetAddress: "requests"})
	if err != nil {
		return nil, nil, err
	}
	return snd, rcv, nil
}

// twinRequest sends a twin request and returns the answer's status and
// body.
func twinRequest(t *testing.T, snd *goamqp.Sender, rcv *goamqp.Receiver, op, resource, body string) (int32, string, *goamqp.Message) {
	t.Helper()
	m := goamqp.NewMessage([]byte(body))
	m.Annotations = goamqp.Annotations{"operation": op}
	if resource != "" {
		m.Annotations["resource"] = resource
	}
	cid := fmt.Sprintf("%s-%d", op, time.Now().UnixNano())
	m.Properties = &goamqp.MessageProperties{CorrelationID: cid}
	ans := request(t, snd, rcv, m)
	if ans.Properties == nil || ans.Properties.CorrelationID != cid {
		t.Fatalf("%s %s: answer's correlation id %+v, want %q", op, resource, ans.Properties, cid)
	}
	status, _ := ans.Annotations["status"].(int32)
	return status, string(ans.GetData()), ans
}

// TestModuleTwinAndMethodsOverAMQP drives a module's twin and methods
// links with an independent AMQP client (go-amqp), as the C SDK writes
// them (amqps://{host}/devices/{id}/modules/{moduleId}/…): twin GET,
// reported patch, desired updates, a method call with a uuid correlation
// id, answers paired by channel correlation id, and tokens of the device
// refused on the module's links.
func TestModuleTwinAndMethodsOverAMQP(t *testing.T) {
	e, shared := sharedEnvAt(t, "127.0.22.1")
	if _, err := e.m.Create(context.Background(), "amqp-module-hub", builtinhub.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := e.hub("amqp-module-hub")
	createDevice(t, h, "gw-1")
	ctx := context.Background()
	if _, err := h.CreateModule(ctx, &azurehub.Module{DeviceID: "gw-1", ModuleID: "filter", Authentication: &azurehub.Authentication{
		Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: testKey2, SecondaryKey: testKey2},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.UpdateModuleTwin(ctx, "gw-1", "filter", &azurehub.Twin{Properties: &azurehub.TwinProperties{Desired: map[string]any{"threshold": 7}}}, "*"); err != nil {
		t.Fatal(err)
	}
	host := h.Config().HostName
	base := "amqps://" + host + "/devices/gw-1/modules/filter"
	c := dialHubAMQP(t, e, shared.AMQPAddr, host)

	// The device's token does not open its module's links.
	if code := c.putToken("devices/gw-1", testKey1); code != 200 {
		t.Fatalf("device put-token: %d", code)
	}
	_, _, err := c.linkPair(base+"/twin", "twin:0")
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("module twin link with the device's token: %v, want unauthorized-access", err)
	}
	if code := c.putToken("devices/gw-1/modules/filter", testKey1); code != 401 {
		t.Fatalf("module put-token with the device's key: %d, want 401", code)
	}
	if code := c.putToken("devices/gw-1/modules/filter", testKey2); code != 200 {
		t.Fatalf("module put-token: %d", code)
	}

	// Two twin channels on one connection: each gets its own answers.
	snd1, rcv1, err := c.linkPair(base+"/twin", "twin:1")
	if err != nil {
		t.Fatal(err)
	}
	snd2, rcv2, err := c.linkPair(base+"/twin", "twin:2")
	if err != nil {
		t.Fatal(err)
	}
	status, body, _ := twinRequest(t, snd1, rcv1, "GET", "", " ")
	var twin struct {
		Desired  map[string]any `json:"desired"`
		Reported map[string]any `json:"reported"`
	}
	if err := json.Unmarshal([]byte(body), &twin); status != 200 || err != nil || twin.Desired["threshold"] != float64(7) {
		t.Fatalf("GET: %d %s", status, body)
	}
	status, body, ans := twinRequest(t, snd2, rcv2, "PATCH", "/properties/reported", `{"filtered":3}`)
	if status != 204 || ans.Annotations["version"] == nil {
		t.Fatalf("PATCH reported: %d %s %v", status, body, ans.Annotations)
	}
	if tw, err := h.GetModuleTwin(ctx, "gw-1", "filter"); err != nil || fmt.Sprint(tw.Properties.Reported["filtered"]) != "3" {
		t.Fatalf("module twin after the patch: %+v %v", tw, err)
	}
	if tw, err := h.GetTwin(ctx, "gw-1"); err != nil || tw.Properties.Reported["filtered"] != nil {
		t.Fatalf("the device's twin took the module's patch: %+v %v", tw, err)
	}

	// Desired updates on channel 2's receiver once it asks for them.
	if status, body, _ := twinRequest(t, snd2, rcv2, "PUT", "/notifications/twin/properties/desired", " "); status/100 != 2 {
		t.Fatalf("PUT desired notifications: %d %s", status, body)
	}
	if _, err := h.UpdateModuleTwin(ctx, "gw-1", "filter", &azurehub.Twin{Properties: &azurehub.TwinProperties{Desired: map[string]any{"threshold": 9}}}, "*"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	upd, err := rcv2.Receive(rctx, nil)
	if err != nil {
		t.Fatalf("desired update: %v", err)
	}
	_ = rcv2.AcceptMessage(rctx, upd)
	var patch map[string]any
	if err := json.Unmarshal(upd.GetData(), &patch); err != nil || patch["threshold"] != float64(9) || patch["$version"] == nil || upd.Annotations["version"] == nil {
		t.Fatalf("desired update %s %v: %v", upd.GetData(), upd.Annotations, err)
	}

	// A method call: a uuid correlation id, answered with it.
	msnd, mrcv, err := c.linkPair(base+"/methods/deviceBound", "methods:1")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		res *builtinhub.MethodResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := h.InvokeModuleMethod(ctx, "gw-1", "filter", &builtinhub.MethodRequest{MethodName: "reset", Payload: json.RawMessage(`{"level":2}`), ResponseTimeoutInSeconds: 10})
		done <- result{r, err}
	}()
	req, err := mrcv.Receive(rctx, nil)
	if err != nil {
		t.Fatalf("method request: %v", err)
	}
	_ = mrcv.AcceptMessage(rctx, req)
	cid, isUUID := req.Properties.CorrelationID.(goamqp.UUID)
	if !isUUID || req.ApplicationProperties["IoThub-methodname"] != "reset" || string(req.GetData()) != `{"level":2}` {
		t.Fatalf("method request: correlation id %T %v, properties %v, body %s", req.Properties.CorrelationID, req.Properties.CorrelationID, req.ApplicationProperties, req.GetData())
	}
	resp := goamqp.NewMessage([]byte(`{"reset":true}`))
	resp.Properties = &goamqp.MessageProperties{CorrelationID: cid}
	resp.ApplicationProperties = map[string]any{"IoThub-status": int32(200)}
	if err := msnd.Send(rctx, resp, nil); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.res.Status != 200 || string(r.res.Payload) != `{"reset":true}` {
		t.Fatalf("InvokeModuleMethod: %+v %v", r.res, r.err)
	}
	// The device itself has no methods link.
	if _, err := h.InvokeMethod(ctx, "gw-1", &builtinhub.MethodRequest{MethodName: "reset", ResponseTimeoutInSeconds: 5}); err == nil {
		t.Fatal("a method call to the device reached its module's link")
	}
}
