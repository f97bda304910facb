package amqp

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// rawPeer drives a server connection with hand-made frames.
type rawPeer struct {
	t  *testing.T
	nc net.Conn
}

func newRawPeer(t *testing.T, opts Options) *rawPeer {
	t.Helper()
	client, server := net.Pipe()
	opts.Handler = blockHandler{}
	s := NewServer(opts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.ServeConn(context.Background(), server)
	}()
	t.Cleanup(func() {
		client.Close()
		<-done
	})
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawPeer{t: t, nc: client}
}

// blockHandler accepts links and holds every message until the
// connection ends, so that credit is not given back.
type blockHandler struct{}

func (blockHandler) Open(*Conn) (LinkHandler, error)          { return blockHandler{}, nil }
func (blockHandler) Attach(*Link) error                       { return nil }
func (blockHandler) Message(ctx context.Context, _ *Delivery) { <-ctx.Done() }
func (blockHandler) Detach(*Link)                             {}
func (blockHandler) Close(error)                              {}

func (p *rawPeer) write(perf marshaler, payload []byte) {
	p.t.Helper()
	b, err := appendFrame(nil, frameAMQP, 0, perf, payload)
	if err != nil {
		p.t.Error(err) // write also runs on other goroutines: no Fatal
		return
	}
	// The server may stop reading once it has closed; later writes fail.
	_, _ = p.nc.Write(b)
}

// open runs the handshake up to an attached sender link with handle 0.
func (p *rawPeer) open() {
	p.t.Helper()
	if _, err := p.nc.Write(header(protoAMQP)); err != nil {
		p.t.Fatal(err)
	}
	if id, err := readHeader(p.nc); err != nil || id != protoAMQP {
		p.t.Fatalf("server header: %d %v", id, err)
	}
	p.write(&open{ContainerID: "raw", MaxFrameSize: 1 << 20}, nil)
	p.expect(descOpen)
	p.write(&begin{NextOutgoingID: 0, IncomingWindow: 100, OutgoingWindow: 100}, nil)
	p.expect(descBegin)
	p.write(&attach{Name: "s", Handle: 0, Role: roleSender, Target: &terminus{raw: Described{uint64(descTarget), []any{"x"}}}}, nil)
	p.expect(descAttach)
	p.expect(descFlow)
}

func (p *rawPeer) expect(code uint64) fields {
	p.t.Helper()
	for {
		f, err := readFrame(p.nc, 1<<20)
		if err != nil {
			p.t.Fatalf("waiting for 0x%02x: %v", code, err)
		}
		if f.Performative == nil {
			continue
		}
		if c, _ := descriptorCode(f.Performative); c == code {
			fl, _ := fieldsOf(f.Performative, code)
			return fl
		}
	}
}

// closeCondition reads until the server's close and returns its condition.
func (p *rawPeer) closeCondition() Symbol {
	p.t.Helper()
	fl := p.expect(descClose)
	e, err := decodeError(fl.at(0))
	if err != nil || e == nil {
		p.t.Fatalf("close without an error: %v", err)
	}
	return e.Condition
}

func TestMessageTooLarge(t *testing.T) {
	p := newRawPeer(t, Options{AllowNoSASL: true, MaxMessageSize: 1000})
	p.open()
	id := uint32(0)
	go p.write(&transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{1}}, bytes.Repeat([]byte{0x40}, 2000))
	if c := p.closeCondition(); c != ErrMessageSizeExceeded {
		t.Errorf("condition %s", c)
	}
}

func TestTransferWithoutCredit(t *testing.T) {
	p := newRawPeer(t, Options{AllowNoSASL: true, LinkCredit: 1})
	p.open()
	go func() {
		for i := uint32(0); i < 2; i++ {
			id := i
			p.write(&transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{byte(i)}, Settled: true}, []byte{0x00, 0x53, 0x77, 0x40})
		}
	}()
	if c := p.closeCondition(); c != ErrTransferLimit {
		t.Errorf("condition %s", c)
	}
}

func TestWrongProtocolHeader(t *testing.T) {
	p := newRawPeer(t, Options{SASL: []SASLServer{PlainServer(nil)}})
	if _, err := p.nc.Write([]byte("AMQP\x00\x02\x00\x00")); err != nil {
		t.Fatal(err)
	}
	id, err := readHeader(p.nc)
	if err != nil || id != protoSASL {
		t.Fatalf("server answered header %d, %v; want its SASL header", id, err)
	}
	if _, err := io.ReadAll(p.nc); err != nil {
		t.Fatalf("the server did not close: %v", err)
	}
}

func TestFrameBeforeOpenRefused(t *testing.T) {
	p := newRawPeer(t, Options{AllowNoSASL: true})
	if _, err := p.nc.Write(header(protoAMQP)); err != nil {
		t.Fatal(err)
	}
	if _, err := readHeader(p.nc); err != nil {
		t.Fatal(err)
	}
	go p.write(&begin{NextOutgoingID: 0, IncomingWindow: 1, OutgoingWindow: 1}, nil)
	if c := p.closeCondition(); c != ErrIllegalState {
		t.Errorf("condition %s", c)
	}
}
