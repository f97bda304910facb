package amqp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// Seeds: a SASL PLAIN exchange, an open, a begin, an attach, a transfer.
func seedFrames(t testing.TB) [][]byte {
	mk := func(typ byte, p marshaler, payload []byte) []byte {
		b, err := appendFrame(nil, typ, 0, p, payload)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	msg, err := MarshalMessage(&Message{
		Properties:            Properties{CorrelationID: "c1", MessageID: UUID{1}},
		ApplicationProperties: map[string]any{"iotdps-operation-type": "iotdps-register"},
		Data:                  [][]byte{[]byte(`{"registrationId":"d"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	rc := uint16(0)
	id := uint32(0)
	return [][]byte{
		mk(frameSASL, rawPerf{descSASLInit, []any{Symbol("PLAIN"), []byte("\x00s/registrations/d\x00SharedAccessSignature sr=x"), "host"}}, nil),
		mk(frameAMQP, &open{ContainerID: "c", MaxFrameSize: 65536, IdleTimeout: 1000}, nil),
		mk(frameAMQP, &begin{RemoteChannel: &rc, NextOutgoingID: 1, IncomingWindow: 10, OutgoingWindow: 10}, nil),
		mk(frameAMQP, &attach{Name: "l", Role: roleSender, Target: &terminus{raw: Described{uint64(descTarget), []any{"s/registrations/d"}}}}, nil),
		mk(frameAMQP, &transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{1}}, msg),
		msg,
	}
}

// rawPerf marshals an arbitrary described list.
type rawPerf struct {
	code uint64
	l    []any
}

func (r rawPerf) marshal(b []byte) ([]byte, error) { return Marshal(b, Described{r.code, r.l}) }

// FuzzUnmarshal: the type decoder never panics, never allocates beyond
// its input's bounds, and whatever it decodes encodes and decodes again.
func FuzzUnmarshal(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s[8:])
	}
	f.Add([]byte{0xf0, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, _, err := Unmarshal(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not wrapping ErrMalformed: %v", err)
			}
			return
		}
		enc, err := Marshal(nil, v)
		if err != nil {
			return // e.g. arrays of types the encoder does not write
		}
		if _, _, err := Unmarshal(enc); err != nil {
			t.Fatalf("re-encoding %#v gives undecodable % x: %v", v, enc, err)
		}
	})
}

// FuzzReadFrame: the frame decoder rejects or parses, never panics, and
// honours its size bound.
func FuzzReadFrame(f *testing.F) {
	for _, s := range seedFrames(f)[:5] {
		f.Add(s)
	}
	f.Add([]byte{0, 0, 0, 8, 2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for range 8 {
			fr, err := readFrame(r, 4096)
			if err != nil {
				return
			}
			if fr.Performative != nil {
				code, _ := descriptorCode(fr.Performative)
				_, _ = fieldsOf(fr.Performative, code)
			}
		}
	})
}

// FuzzUnmarshalMessage: message sections decode or fail cleanly.
func FuzzUnmarshalMessage(f *testing.F) {
	f.Add(seedFrames(f)[5])
	// A twin request as IoT Hub's device SDKs send it: message annotations.
	twin, err := MarshalMessage(&Message{
		MessageAnnotations: map[Symbol]any{"operation": "PATCH", "resource": "/properties/reported"},
		Properties:         Properties{CorrelationID: "c1"},
		Data:               [][]byte{[]byte(`{"a":1}`)},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(twin)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := UnmarshalMessage(b)
		if err != nil {
			return
		}
		_ = m.Body()
		_, _ = MarshalMessage(m)
	})
}

// rw is a SASL peer: reads come from the fuzzer, writes are dropped.
type rw struct{ io.Reader }

func (rw) Write(p []byte) (int, error) { return len(p), nil }

// FuzzSASL: the SASL negotiation with any client bytes ends, with an
// outcome or an error, and never panics.
func FuzzSASL(f *testing.F) {
	seeds := seedFrames(f)
	f.Add(seeds[0])
	f.Add(append(append([]byte{}, seeds[0]...), header(protoAMQP)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		servers := []SASLServer{
			PlainServer(nil),
			{Name: "EXTERNAL", New: func(string) SASLMechanism { return &External{} }},
			{Name: "CHALLENGE", New: func(string) SASLMechanism { return &challenger{} }},
		}
		_, _, _ = negotiateSASL(rw{bytes.NewReader(b)}, servers)
	})
}

// challenger asks for three responses, like the TPM mechanism will.
type challenger struct{ n int }

func (c *challenger) Step([]byte) ([]byte, bool, error) {
	c.n++
	return []byte{byte(c.n)}, c.n > 3, nil
}

// fuzzConn is a net.Conn reading the fuzzer's bytes and dropping writes.
type fuzzConn struct{ r *bytes.Reader }

func (c fuzzConn) Read(p []byte) (int, error)          { return c.r.Read(p) }
func (c fuzzConn) Write(p []byte) (int, error)         { return len(p), nil }
func (c fuzzConn) Close() error                        { return nil }
func (c fuzzConn) LocalAddr() net.Addr                 { return &net.TCPAddr{} }
func (c fuzzConn) RemoteAddr() net.Addr                { return &net.TCPAddr{} }
func (c fuzzConn) SetDeadline(time.Time) error         { return nil }
func (c fuzzConn) SetReadDeadline(time.Time) error     { return nil }
func (c fuzzConn) SetWriteDeadline(time.Time) error    { return nil }
func (fuzzHandler) Open(*Conn) (LinkHandler, error)    { return fuzzHandler{}, nil }
func (fuzzHandler) Attach(*Link) error                 { return nil }
func (fuzzHandler) Message(context.Context, *Delivery) {}
func (fuzzHandler) Detach(*Link)                       {}
func (fuzzHandler) Close(error)                        {}

type fuzzHandler struct{}

// FuzzServeConn: the whole connection machine (headers, SASL, open,
// sessions, links, transfers) with any client bytes ends without panic.
func FuzzServeConn(f *testing.F) {
	var all []byte
	all = append(all, header(protoSASL)...)
	seeds := seedFrames(f)
	all = append(all, seeds[0]...)
	all = append(all, header(protoAMQP)...)
	for _, s := range seeds[1:5] {
		all = append(all, s...)
	}
	f.Add(all)
	f.Add(append(header(protoAMQP), seeds[1]...))
	s := NewServer(Options{
		Handler:     fuzzHandler{},
		SASL:        []SASLServer{PlainServer(nil)},
		AllowNoSASL: true,
		Logger:      nil,
	})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = s.ServeConn(context.Background(), fuzzConn{bytes.NewReader(b)})
	})
}
