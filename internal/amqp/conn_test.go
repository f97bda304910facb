package amqp_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/internal/amqp"
)

// echo answers every message on the link the peer receives on, with the
// request's correlation id, and rejects messages whose body says "reject".
type echo struct {
	mu     sync.Mutex
	reply  *amqp.Link
	plain  *amqp.Plain
	refuse string // link address to refuse
	closed chan error
}

func (e *echo) Open(c *amqp.Conn) (amqp.LinkHandler, error) {
	_, mech := c.SASL()
	if p, ok := mech.(*amqp.Plain); ok {
		e.plain = p
		if p.Password == "bad" {
			return nil, &amqp.Error{Condition: amqp.ErrUnauthorized, Description: "bad password"}
		}
	}
	return e, nil
}

func (e *echo) Attach(l *amqp.Link) error {
	if l.Address == e.refuse {
		return &amqp.Error{Condition: amqp.ErrNotFound, Description: "no such node"}
	}
	if !l.PeerIsSender {
		e.mu.Lock()
		e.reply = l
		e.mu.Unlock()
	}
	return nil
}

func (e *echo) Message(ctx context.Context, d *amqp.Delivery) {
	if string(d.Message.Body()) == "reject" {
		_ = d.Reject(&amqp.Error{Condition: amqp.ErrUnauthorized, Description: `{"errorCode":401002}`})
		return
	}
	_ = d.Accept()
	e.mu.Lock()
	r := e.reply
	e.mu.Unlock()
	_ = r.Send(ctx, &amqp.Message{
		Properties:            amqp.Properties{CorrelationID: d.Message.Properties.CorrelationID},
		ApplicationProperties: map[string]any{"retry-after": "3"},
		Data:                  [][]byte{append([]byte("echo:"), d.Message.Body()...)},
	})
}

func (e *echo) Detach(*amqp.Link) {}
func (e *echo) Close(err error) {
	if e.closed != nil {
		e.closed <- err
	}
}

func serve(t *testing.T, h amqp.Handler, opts amqp.Options) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	opts.Handler = h
	s := amqp.NewServer(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.ServeConn(ctx, server)
	}()
	t.Cleanup(func() {
		cancel()
		client.Close()
		<-done
	})
	return client
}

func TestRequestResponse(t *testing.T) {
	h := &echo{refuse: "nowhere"}
	nc := serve(t, h, amqp.Options{SASL: []amqp.SASLServer{amqp.PlainServer(nil)}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{
		SASLType:    goamqp.SASLTypePlain("scope/registrations/dev", "token"),
		IdleTimeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.plain == nil || h.plain.Username != "scope/registrations/dev" || h.plain.Password != "token" {
		t.Fatalf("PLAIN credentials: %+v", h.plain)
	}
	props := map[string]any{"com.microsoft:api-version": "2019-03-31"}
	recv, err := sess.NewReceiver(ctx, "scope/registrations/dev", &goamqp.ReceiverOptions{Properties: props})
	if err != nil {
		t.Fatal(err)
	}
	send, err := sess.NewSender(ctx, "scope/registrations/dev", &goamqp.SenderOptions{Properties: props})
	if err != nil {
		t.Fatal(err)
	}
	// Two rounds, one with a body larger than a frame.
	for i, body := range []string{"hello", strings.Repeat("x", 200<<10)} {
		m := goamqp.NewMessage([]byte(body))
		m.Properties = &goamqp.MessageProperties{CorrelationID: "c" + body[:1]}
		if err := send.Send(ctx, m, nil); err != nil {
			t.Fatalf("round %d: send: %v", i, err)
		}
		got, err := recv.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("round %d: receive: %v", i, err)
		}
		if err := recv.AcceptMessage(ctx, got); err != nil {
			t.Fatal(err)
		}
		if string(got.GetData()) != "echo:"+body {
			t.Errorf("round %d: body %.40q", i, got.GetData())
		}
		if got.Properties == nil || got.Properties.CorrelationID != "c"+body[:1] {
			t.Errorf("round %d: properties %+v", i, got.Properties)
		}
		if got.ApplicationProperties["retry-after"] != "3" {
			t.Errorf("round %d: application properties %v", i, got.ApplicationProperties)
		}
	}

	// A rejected delivery reaches the sender with its error.
	err = send.Send(ctx, goamqp.NewMessage([]byte("reject")), nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondUnauthorizedAccess || ae.Description != `{"errorCode":401002}` {
		t.Fatalf("rejected send: %v", err)
	}

	// A refused link; the peer's detach answering the refusal leaves the
	// session and connection in use.
	if _, err := sess.NewSender(ctx, "nowhere", nil); err == nil {
		t.Fatal("attach to a refused address succeeded")
	}
	after, err := sess.NewSender(ctx, "somewhere", nil)
	if err != nil {
		t.Fatalf("attach after a refused link: %v", err)
	}
	if err := after.Send(ctx, goamqp.NewMessage([]byte("reject")), nil); !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("send after a refused link: %v", err)
	}
}

func TestOpenRefused(t *testing.T) {
	nc := serve(t, &echo{}, amqp.Options{SASL: []amqp.SASLServer{amqp.PlainServer(nil)}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("u", "bad")})
	if err == nil {
		// go-amqp may report the close only on the next operation.
		_, err = conn.NewSession(ctx, nil)
		conn.Close()
	}
	if err == nil {
		t.Fatal("a connection the handler refused opened")
	}
}

func TestSASLRefused(t *testing.T) {
	check := func(p *amqp.Plain) error { return amqp.ErrSASLAuth }
	nc := serve(t, &echo{}, amqp.Options{SASL: []amqp.SASLServer{amqp.PlainServer(check)}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("u", "p")}); err == nil {
		t.Fatal("SASL refused, yet the connection opened")
	}
}

func TestNoSASL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Without AllowNoSASL, a peer skipping SASL is told to use it.
	nc := serve(t, &echo{}, amqp.Options{SASL: []amqp.SASLServer{amqp.PlainServer(nil)}})
	if _, err := goamqp.NewConn(ctx, nc, nil); err == nil {
		t.Fatal("connection without SASL opened although SASL is required")
	}
	nc = serve(t, &echo{}, amqp.Options{SASL: []amqp.SASLServer{amqp.PlainServer(nil)}, AllowNoSASL: true})
	conn, err := goamqp.NewConn(ctx, nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

func TestHandshakeTimeout(t *testing.T) {
	nc := serve(t, &echo{}, amqp.Options{HandshakeTimeout: 50 * time.Millisecond})
	// The client says nothing; the server gives up, perhaps after
	// sending its protocol header, and closes: ReadAll ends with EOF
	// long before the read deadline.
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(nc); err != nil {
		t.Fatalf("connection still open after the handshake timeout (read %q): %v", b, err)
	}
}
