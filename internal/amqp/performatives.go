package amqp

import (
	"fmt"
)

// Descriptor codes of the performatives, SASL frames, delivery states and
// message sections this package reads or writes (part 2 to part 5).
const (
	descError       = 0x1d
	descOpen        = 0x10
	descBegin       = 0x11
	descAttach      = 0x12
	descFlow        = 0x13
	descTransfer    = 0x14
	descDisposition = 0x15
	descDetach      = 0x16
	descEnd         = 0x17
	descClose       = 0x18

	descReceived = 0x23
	descAccepted = 0x24
	descRejected = 0x25
	descReleased = 0x26
	descModified = 0x27
	descSource   = 0x28
	descTarget   = 0x29

	descSASLMechanisms = 0x40
	descSASLInit       = 0x41
	descSASLChallenge  = 0x42
	descSASLResponse   = 0x43
	descSASLOutcome    = 0x44

	descHeader                = 0x70
	descDeliveryAnnotations   = 0x71
	descMessageAnnotations    = 0x72
	descProperties            = 0x73
	descApplicationProperties = 0x74
	descData                  = 0x75
	descSequence              = 0x76
	descValue                 = 0x77
	descFooter                = 0x78
)

// Link roles as the attach and disposition performatives carry them.
const (
	roleSender   = false
	roleReceiver = true
)

// Settle modes (part 2, 2.8.2 and 2.8.3).
const (
	SenderSettleUnsettled = 0
	SenderSettleSettled   = 1
	SenderSettleMixed     = 2
	ReceiverSettleFirst   = 0
	ReceiverSettleSecond  = 1
)

// Error is an AMQP error: a condition such as "amqp:unauthorized-access",
// a description and optional information. It travels in close, end,
// detach and the rejected delivery state.
type Error struct {
	Condition   Symbol
	Description string
	Info        *Map
}

func (e *Error) Error() string {
	if e.Description == "" {
		return string(e.Condition)
	}
	return fmt.Sprintf("%s: %s", e.Condition, e.Description)
}

// Conditions this package and its users send.
const (
	ErrInternal            Symbol = "amqp:internal-error"
	ErrNotFound            Symbol = "amqp:not-found"
	ErrUnauthorized        Symbol = "amqp:unauthorized-access"
	ErrDecode              Symbol = "amqp:decode-error"
	ErrResourceLimit       Symbol = "amqp:resource-limit-exceeded"
	ErrNotAllowed          Symbol = "amqp:not-allowed"
	ErrInvalidField        Symbol = "amqp:invalid-field"
	ErrNotImplemented      Symbol = "amqp:not-implemented"
	ErrIllegalState        Symbol = "amqp:illegal-state"
	ErrFramingError        Symbol = "amqp:connection:framing-error"
	ErrConnectionForced    Symbol = "amqp:connection:forced"
	ErrMessageSizeExceeded Symbol = "amqp:link:message-size-exceeded"
	ErrTransferLimit       Symbol = "amqp:link:transfer-limit-exceeded"
	ErrWindowViolation     Symbol = "amqp:session:window-violation"
	ErrUnattachedHandle    Symbol = "amqp:session:unattached-handle"
	ErrHandleInUse         Symbol = "amqp:session:handle-in-use"
)

func (e *Error) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descError), trim([]any{e.Condition, nilIfEmpty(e.Description), mapOrNil(e.Info)})})
}

func decodeError(v any) (*Error, error) {
	if v == nil {
		return nil, nil
	}
	f, err := fieldsOf(v, descError)
	if err != nil {
		return nil, err
	}
	e := &Error{}
	if e.Condition, err = f.symbol(0); err != nil {
		return nil, err
	}
	if e.Description, err = f.string(1); err != nil {
		return nil, err
	}
	if e.Info, err = f.mapAt(2); err != nil {
		return nil, err
	}
	return e, nil
}

// fields are the list of a described composite value.
type fields []any

func descriptorCode(v any) (uint64, bool) {
	d, ok := v.(Described)
	if !ok {
		return 0, false
	}
	switch c := d.Descriptor.(type) {
	case uint64:
		return c, true
	case Symbol:
		// The symbolic descriptors of the standard types are
		// "amqp:<name>:list"; nothing we receive uses them, but they
		// are legal. Map the ones this package reads.
		if code, ok := symbolicDescriptors[c]; ok {
			return code, true
		}
	}
	return 0, false
}

var symbolicDescriptors = map[Symbol]uint64{
	"amqp:open:list": descOpen, "amqp:begin:list": descBegin, "amqp:attach:list": descAttach,
	"amqp:flow:list": descFlow, "amqp:transfer:list": descTransfer, "amqp:disposition:list": descDisposition,
	"amqp:detach:list": descDetach, "amqp:end:list": descEnd, "amqp:close:list": descClose,
	"amqp:error:list": descError, "amqp:source:list": descSource, "amqp:target:list": descTarget,
	"amqp:accepted:list": descAccepted, "amqp:rejected:list": descRejected, "amqp:released:list": descReleased,
	"amqp:modified:list": descModified, "amqp:received:list": descReceived,
	"amqp:sasl-mechanisms:list": descSASLMechanisms, "amqp:sasl-init:list": descSASLInit,
	"amqp:sasl-challenge:list": descSASLChallenge, "amqp:sasl-response:list": descSASLResponse,
	"amqp:sasl-outcome:list": descSASLOutcome,
	"amqp:header:list":       descHeader, "amqp:delivery-annotations:map": descDeliveryAnnotations,
	"amqp:message-annotations:map": descMessageAnnotations, "amqp:properties:list": descProperties,
	"amqp:application-properties:map": descApplicationProperties, "amqp:data:binary": descData,
	"amqp:amqp-sequence:list": descSequence, "amqp:amqp-value:*": descValue, "amqp:footer:map": descFooter,
}

func fieldsOf(v any, want uint64) (fields, error) {
	code, ok := descriptorCode(v)
	if !ok || code != want {
		return nil, malformed("want described type 0x%02x, got %T", want, v)
	}
	switch l := v.(Described).Value.(type) {
	case []any:
		return fields(l), nil
	case nil:
		return nil, nil
	}
	return nil, malformed("described type 0x%02x is not a list", want)
}

func (f fields) at(i int) any {
	if i < len(f) {
		return f[i]
	}
	return nil
}

func fieldErr(i int, want string, v any) error {
	return malformed("field %d: want %s, got %T", i, want, v)
}

func (f fields) uint32(i int, def uint32) (uint32, error) {
	switch v := f.at(i).(type) {
	case nil:
		return def, nil
	case uint32:
		return v, nil
	}
	return 0, fieldErr(i, "uint", f.at(i))
}

func (f fields) optUint32(i int) (*uint32, error) {
	if f.at(i) == nil {
		return nil, nil
	}
	v, err := f.uint32(i, 0)
	return &v, err
}

func (f fields) uint16(i int, def uint16) (uint16, error) {
	switch v := f.at(i).(type) {
	case nil:
		return def, nil
	case uint16:
		return v, nil
	}
	return 0, fieldErr(i, "ushort", f.at(i))
}

func (f fields) ubyte(i int, def uint8) (uint8, error) {
	switch v := f.at(i).(type) {
	case nil:
		return def, nil
	case uint8:
		return v, nil
	}
	return 0, fieldErr(i, "ubyte", f.at(i))
}

func (f fields) uint64(i int, def uint64) (uint64, error) {
	switch v := f.at(i).(type) {
	case nil:
		return def, nil
	case uint64:
		return v, nil
	}
	return 0, fieldErr(i, "ulong", f.at(i))
}

func (f fields) bool(i int) (bool, error) {
	switch v := f.at(i).(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	}
	return false, fieldErr(i, "boolean", f.at(i))
}

func (f fields) string(i int) (string, error) {
	switch v := f.at(i).(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	}
	return "", fieldErr(i, "string", f.at(i))
}

func (f fields) symbol(i int) (Symbol, error) {
	switch v := f.at(i).(type) {
	case nil:
		return "", nil
	case Symbol:
		return v, nil
	}
	return "", fieldErr(i, "symbol", f.at(i))
}

func (f fields) binary(i int) ([]byte, error) {
	switch v := f.at(i).(type) {
	case nil:
		return nil, nil
	case []byte:
		return v, nil
	}
	return nil, fieldErr(i, "binary", f.at(i))
}

func (f fields) mapAt(i int) (*Map, error) {
	switch v := f.at(i).(type) {
	case nil:
		return nil, nil
	case *Map:
		return v, nil
	}
	return nil, fieldErr(i, "map", f.at(i))
}

// trim drops trailing nulls, which the encoding lets a sender omit.
func trim(l []any) []any {
	for len(l) > 0 && l[len(l)-1] == nil {
		l = l[:len(l)-1]
	}
	return l
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func mapOrNil(m *Map) any {
	if m == nil || len(m.Pairs) == 0 {
		return nil
	}
	return m
}

// open (part 2, 2.7.1).
type open struct {
	ContainerID  string
	Hostname     string
	MaxFrameSize uint32
	ChannelMax   uint16
	IdleTimeout  uint32 // milliseconds; 0 means none
	Properties   *Map
}

func (p *open) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descOpen), trim([]any{
		p.ContainerID, nilIfEmpty(p.Hostname), p.MaxFrameSize, p.ChannelMax,
		uintOrNil(p.IdleTimeout), nil, nil, nil, nil, mapOrNil(p.Properties),
	})})
}

func uintOrNil(v uint32) any {
	if v == 0 {
		return nil
	}
	return v
}

func decodeOpen(f fields) (*open, error) {
	p := &open{}
	var err error
	if p.ContainerID, err = f.string(0); err != nil {
		return nil, err
	}
	if p.Hostname, err = f.string(1); err != nil {
		return nil, err
	}
	if p.MaxFrameSize, err = f.uint32(2, 1<<32-1); err != nil {
		return nil, err
	}
	if p.ChannelMax, err = f.uint16(3, 65535); err != nil {
		return nil, err
	}
	if p.IdleTimeout, err = f.uint32(4, 0); err != nil {
		return nil, err
	}
	if p.Properties, err = f.mapAt(9); err != nil {
		return nil, err
	}
	return p, nil
}

// begin (part 2, 2.7.2).
type begin struct {
	RemoteChannel  *uint16
	NextOutgoingID uint32
	IncomingWindow uint32
	OutgoingWindow uint32
	HandleMax      uint32
}

func (p *begin) marshal(b []byte) ([]byte, error) {
	var rc any
	if p.RemoteChannel != nil {
		rc = *p.RemoteChannel
	}
	return Marshal(b, Described{uint64(descBegin), trim([]any{
		rc, p.NextOutgoingID, p.IncomingWindow, p.OutgoingWindow, p.HandleMax,
	})})
}

func decodeBegin(f fields) (*begin, error) {
	p := &begin{}
	var err error
	if f.at(0) != nil {
		rc, err := f.uint16(0, 0)
		if err != nil {
			return nil, err
		}
		p.RemoteChannel = &rc
	}
	if p.NextOutgoingID, err = f.uint32(1, 0); err != nil {
		return nil, err
	}
	if p.IncomingWindow, err = f.uint32(2, 0); err != nil {
		return nil, err
	}
	if p.OutgoingWindow, err = f.uint32(3, 0); err != nil {
		return nil, err
	}
	if p.HandleMax, err = f.uint32(4, 1<<32-1); err != nil {
		return nil, err
	}
	return p, nil
}

// terminus is the part of a source or target this package uses: its
// address and a source's filter set. The whole value is kept to echo it
// in the answering attach.
type terminus struct {
	Address string
	Filter  *Map
	raw     any
}

func decodeTerminus(v any, want uint64) (*terminus, error) {
	if v == nil {
		return nil, nil
	}
	f, err := fieldsOf(v, want)
	if err != nil {
		return nil, err
	}
	t := &terminus{raw: v}
	// The address is "*" in the spec (any type); clients send a string.
	switch a := f.at(0).(type) {
	case nil:
	case string:
		t.Address = a
	case Symbol:
		t.Address = string(a)
	default:
		return nil, fieldErr(0, "address", a)
	}
	if want == descSource {
		if t.Filter, err = f.mapAt(7); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// attach (part 2, 2.7.3).
type attach struct {
	Name                 string
	Handle               uint32
	Role                 bool
	SndSettleMode        uint8
	RcvSettleMode        uint8
	Source, Target       *terminus
	InitialDeliveryCount uint32
	MaxMessageSize       uint64
	Properties           *Map
}

func (p *attach) marshal(b []byte) ([]byte, error) {
	var src, tgt any
	if p.Source != nil {
		src = p.Source.raw
	}
	if p.Target != nil {
		tgt = p.Target.raw
	}
	var idc any
	if !p.Role { // sender
		idc = p.InitialDeliveryCount
	}
	var mms any
	if p.MaxMessageSize != 0 {
		mms = p.MaxMessageSize
	}
	return Marshal(b, Described{uint64(descAttach), trim([]any{
		p.Name, p.Handle, p.Role, p.SndSettleMode, p.RcvSettleMode, src, tgt,
		nil, nil, idc, mms, nil, nil, mapOrNil(p.Properties),
	})})
}

func decodeAttach(f fields) (*attach, error) {
	p := &attach{}
	var err error
	if p.Name, err = f.string(0); err != nil {
		return nil, err
	}
	if f.at(1) == nil {
		return nil, malformed("attach without a handle")
	}
	if p.Handle, err = f.uint32(1, 0); err != nil {
		return nil, err
	}
	if p.Role, err = f.bool(2); err != nil {
		return nil, err
	}
	if p.SndSettleMode, err = f.ubyte(3, SenderSettleMixed); err != nil {
		return nil, err
	}
	if p.RcvSettleMode, err = f.ubyte(4, ReceiverSettleFirst); err != nil {
		return nil, err
	}
	if p.Source, err = decodeTerminus(f.at(5), descSource); err != nil {
		return nil, err
	}
	if p.Target, err = decodeTerminus(f.at(6), descTarget); err != nil {
		return nil, err
	}
	if p.InitialDeliveryCount, err = f.uint32(9, 0); err != nil {
		return nil, err
	}
	if p.MaxMessageSize, err = f.uint64(10, 0); err != nil {
		return nil, err
	}
	if p.Properties, err = f.mapAt(13); err != nil {
		return nil, err
	}
	return p, nil
}

// flow (part 2, 2.7.4).
type flow struct {
	NextIncomingID *uint32
	IncomingWindow uint32
	NextOutgoingID uint32
	OutgoingWindow uint32
	Handle         *uint32
	DeliveryCount  *uint32
	LinkCredit     *uint32
	Drain          bool
	Echo           bool
}

func (p *flow) marshal(b []byte) ([]byte, error) {
	l := []any{ptrOrNil(p.NextIncomingID), p.IncomingWindow, p.NextOutgoingID, p.OutgoingWindow,
		ptrOrNil(p.Handle), ptrOrNil(p.DeliveryCount), ptrOrNil(p.LinkCredit), nil, p.Drain, p.Echo}
	return Marshal(b, Described{uint64(descFlow), trim(l)})
}

func ptrOrNil(p *uint32) any {
	if p == nil {
		return nil
	}
	return *p
}

func decodeFlow(f fields) (*flow, error) {
	p := &flow{}
	var err error
	if p.NextIncomingID, err = f.optUint32(0); err != nil {
		return nil, err
	}
	if p.IncomingWindow, err = f.uint32(1, 0); err != nil {
		return nil, err
	}
	if p.NextOutgoingID, err = f.uint32(2, 0); err != nil {
		return nil, err
	}
	if p.OutgoingWindow, err = f.uint32(3, 0); err != nil {
		return nil, err
	}
	if p.Handle, err = f.optUint32(4); err != nil {
		return nil, err
	}
	if p.DeliveryCount, err = f.optUint32(5); err != nil {
		return nil, err
	}
	if p.LinkCredit, err = f.optUint32(6); err != nil {
		return nil, err
	}
	if p.Drain, err = f.bool(8); err != nil {
		return nil, err
	}
	if p.Echo, err = f.bool(9); err != nil {
		return nil, err
	}
	return p, nil
}

// transfer (part 2, 2.7.5). The payload follows the performative in the
// frame body.
type transfer struct {
	Handle        uint32
	DeliveryID    *uint32
	DeliveryTag   []byte
	MessageFormat *uint32
	Settled       bool
	More          bool
	Aborted       bool
}

func (p *transfer) marshal(b []byte) ([]byte, error) {
	var tag any
	if p.DeliveryTag != nil {
		tag = p.DeliveryTag
	}
	return Marshal(b, Described{uint64(descTransfer), trim([]any{
		p.Handle, ptrOrNil(p.DeliveryID), tag, ptrOrNil(p.MessageFormat), p.Settled, p.More,
	})})
}

func decodeTransfer(f fields) (*transfer, error) {
	p := &transfer{}
	var err error
	if f.at(0) == nil {
		return nil, malformed("transfer without a handle")
	}
	if p.Handle, err = f.uint32(0, 0); err != nil {
		return nil, err
	}
	if p.DeliveryID, err = f.optUint32(1); err != nil {
		return nil, err
	}
	if p.DeliveryTag, err = f.binary(2); err != nil {
		return nil, err
	}
	if p.MessageFormat, err = f.optUint32(3); err != nil {
		return nil, err
	}
	if p.Settled, err = f.bool(4); err != nil {
		return nil, err
	}
	if p.More, err = f.bool(5); err != nil {
		return nil, err
	}
	if p.Aborted, err = f.bool(8); err != nil {
		return nil, err
	}
	return p, nil
}

// disposition (part 2, 2.7.6).
type disposition struct {
	Role    bool
	First   uint32
	Last    *uint32
	Settled bool
	State   any // accepted or rejected, as a marshaler
}

func (p *disposition) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descDisposition), trim([]any{
		p.Role, p.First, ptrOrNil(p.Last), p.Settled, p.State,
	})})
}

func decodeDisposition(f fields) (*disposition, error) {
	p := &disposition{}
	var err error
	if p.Role, err = f.bool(0); err != nil {
		return nil, err
	}
	if p.First, err = f.uint32(1, 0); err != nil {
		return nil, err
	}
	if p.Last, err = f.optUint32(2); err != nil {
		return nil, err
	}
	if p.Settled, err = f.bool(3); err != nil {
		return nil, err
	}
	p.State = f.at(4)
	return p, nil
}

// Delivery states a receiver settles with.
type (
	accepted struct{}
	rejected struct{ Error *Error }
)

func (accepted) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descAccepted), []any{}})
}

func (r rejected) marshal(b []byte) ([]byte, error) {
	var e any
	if r.Error != nil {
		e = r.Error
	}
	return Marshal(b, Described{uint64(descRejected), trim([]any{e})})
}

// detach (part 2, 2.7.7).
type detach struct {
	Handle uint32
	Closed bool
	Error  *Error
}

func (p *detach) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descDetach), trim([]any{p.Handle, p.Closed, errOrNil(p.Error)})})
}

func errOrNil(e *Error) any {
	if e == nil {
		return nil
	}
	return e
}

func decodeDetach(f fields) (*detach, error) {
	p := &detach{}
	var err error
	if p.Handle, err = f.uint32(0, 0); err != nil {
		return nil, err
	}
	if p.Closed, err = f.bool(1); err != nil {
		return nil, err
	}
	if p.Error, err = decodeError(f.at(2)); err != nil {
		return nil, err
	}
	return p, nil
}

// end and close (part 2, 2.7.8 and 2.7.9) carry only an error.
type end struct{ Error *Error }

func (p *end) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descEnd), trim([]any{errOrNil(p.Error)})})
}

type closeFrame struct{ Error *Error }

func (p *closeFrame) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descClose), trim([]any{errOrNil(p.Error)})})
}

// SASL frames (part 5, 5.3.3).
type saslMechanisms struct{ Mechanisms []Symbol }

func (p *saslMechanisms) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descSASLMechanisms), []any{p.Mechanisms}})
}

type saslInit struct {
	Mechanism       Symbol
	InitialResponse []byte
	Hostname        string
}

func decodeSASLInit(f fields) (*saslInit, error) {
	p := &saslInit{}
	var err error
	if p.Mechanism, err = f.symbol(0); err != nil {
		return nil, err
	}
	if p.InitialResponse, err = f.binary(1); err != nil {
		return nil, err
	}
	if p.Hostname, err = f.string(2); err != nil {
		return nil, err
	}
	return p, nil
}

type saslChallenge struct{ Challenge []byte }

func (p *saslChallenge) marshal(b []byte) ([]byte, error) {
	c := p.Challenge
	if c == nil {
		c = []byte{}
	}
	return Marshal(b, Described{uint64(descSASLChallenge), []any{c}})
}

// SASL outcome codes.
const (
	saslOK   = 0
	saslAuth = 1
	saslSys  = 2
)

type saslOutcome struct{ Code uint8 }

func (p *saslOutcome) marshal(b []byte) ([]byte, error) {
	return Marshal(b, Described{uint64(descSASLOutcome), []any{p.Code}})
}
