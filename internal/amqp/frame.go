package amqp

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Frame types (part 2, 2.3).
const (
	frameAMQP = 0x00
	frameSASL = 0x01
)

// minMaxFrameSize is the smallest max-frame-size a peer may announce.
const minMaxFrameSize = 512

// protocol ids of the 8-byte header: "AMQP" id major minor revision.
const (
	protoAMQP = 0
	protoTLS  = 2
	protoSASL = 3
)

// header returns the protocol header for id, version 1.0.0.
func header(id byte) []byte { return []byte{'A', 'M', 'Q', 'P', id, 1, 0, 0} }

// readHeader reads a protocol header and returns its id. A header of
// another protocol or version is an error.
func readHeader(r io.Reader) (byte, error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, err
	}
	if string(h[:4]) != "AMQP" {
		return 0, malformed("not an AMQP protocol header: % x", h)
	}
	if h[5] != 1 || h[6] != 0 || h[7] != 0 {
		return h[4], malformed("unsupported AMQP version %d.%d.%d", h[5], h[6], h[7])
	}
	return h[4], nil
}

// A frame is one AMQP or SASL frame: its type, channel and the body that
// follows the (possibly extended) header. An empty body is a heartbeat.
type frame struct {
	Type    byte
	Channel uint16
	// Performative is the decoded described value at the start of the
	// body; nil for a heartbeat.
	Performative any
	// Payload is what follows the performative (transfer frames only).
	Payload []byte
}

// readFrame reads one frame of at most max bytes (header included).
func readFrame(r io.Reader, max uint32) (*frame, error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(h[:4])
	doff := uint32(h[4]) * 4
	if size < 8 || doff < 8 || doff > size {
		return nil, malformed("frame size %d, data offset %d", size, doff)
	}
	if size > max {
		return nil, malformed("frame of %d bytes exceeds the maximum %d", size, max)
	}
	buf := make([]byte, size-8)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parseFrame(h[5], binary.BigEndian.Uint16(h[6:]), buf[doff-8:])
}

// parseFrame decodes a frame body.
func parseFrame(typ byte, channel uint16, body []byte) (*frame, error) {
	f := &frame{Type: typ, Channel: channel}
	if typ != frameAMQP && typ != frameSASL {
		return nil, malformed("frame type 0x%02x", typ)
	}
	if len(body) == 0 {
		return f, nil
	}
	v, rest, err := Unmarshal(body)
	if err != nil {
		return nil, err
	}
	if _, ok := descriptorCode(v); !ok {
		return nil, malformed("frame body is a %T, not a performative", v)
	}
	f.Performative = v
	f.Payload = rest
	return f, nil
}

// appendFrame appends a frame holding performative p and payload to b.
func appendFrame(b []byte, typ byte, channel uint16, p marshaler, payload []byte) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 2, typ, byte(channel>>8), byte(channel))
	if p != nil {
		var err error
		if b, err = p.marshal(b); err != nil {
			return nil, fmt.Errorf("amqp: encode frame: %w", err)
		}
	}
	b = append(b, payload...)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b, nil
}
