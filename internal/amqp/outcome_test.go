package amqp_test

import (
	"context"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/internal/amqp"
)

// pusher hands the link the peer receives on to the test.
type pusher struct{ links chan *amqp.Link }

func (p *pusher) Open(*amqp.Conn) (amqp.LinkHandler, error) { return p, nil }
func (p *pusher) Attach(l *amqp.Link) error {
	if !l.PeerIsSender {
		p.links <- l
	}
	return nil
}
func (p *pusher) Message(context.Context, *amqp.Delivery) {}
func (p *pusher) Detach(*amqp.Link)                       {}
func (p *pusher) Close(error)                             {}

// TestSendUnsettled: the peer's accept, reject, release and modify reach
// the server's sender, with message annotations carried both ways.
func TestSendUnsettled(t *testing.T) {
	p := &pusher{links: make(chan *amqp.Link, 1)}
	nc := serve(t, p, amqp.Options{AllowNoSASL: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := goamqp.NewConn(ctx, nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The receiver settles first, as the IoT SDKs' do; the mixed sender
	// mode would let the server pre-settle, which SendUnsettled overrides.
	recv, err := sess.NewReceiver(ctx, "/devices/d/messages/devicebound", &goamqp.ReceiverOptions{Credit: 10})
	if err != nil {
		t.Fatal(err)
	}
	l := <-p.links
	for _, tc := range []struct {
		settle func(*goamqp.Message) error
		want   amqp.Outcome
	}{
		{func(m *goamqp.Message) error { return recv.AcceptMessage(ctx, m) }, amqp.OutcomeAccepted},
		{func(m *goamqp.Message) error { return recv.RejectMessage(ctx, m, nil) }, amqp.OutcomeRejected},
		{func(m *goamqp.Message) error { return recv.ReleaseMessage(ctx, m) }, amqp.OutcomeReleased},
		{func(m *goamqp.Message) error {
			return recv.ModifyMessage(ctx, m, &goamqp.ModifyMessageOptions{DeliveryFailed: true})
		}, amqp.OutcomeModified},
	} {
		out, err := l.SendUnsettled(ctx, &amqp.Message{
			MessageAnnotations: map[amqp.Symbol]any{"status": int32(200)},
			Data:               [][]byte{[]byte(tc.want.String())},
		})
		if err != nil {
			t.Fatal(err)
		}
		m, err := recv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetData()) != tc.want.String() || m.Annotations["status"] != int32(200) {
			t.Fatalf("received %q annotations %v", m.GetData(), m.Annotations)
		}
		if err := tc.settle(m); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-out:
			if got != tc.want {
				t.Errorf("outcome %v, want %v", got, tc.want)
			}
		case <-ctx.Done():
			t.Fatalf("no outcome for %v", tc.want)
		}
	}
	// A delivery unsettled when its link ends gets no outcome; Done says so.
	out, err := l.SendUnsettled(ctx, &amqp.Message{Data: [][]byte{[]byte("left")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recv.Receive(ctx, nil); err != nil {
		t.Fatal(err)
	}
	_ = recv.Close(ctx)
	select {
	case <-l.Done():
	case o := <-out:
		t.Fatalf("outcome %v for a delivery never settled", o)
	case <-ctx.Done():
		t.Fatal("the link's end was not signalled")
	}
}
