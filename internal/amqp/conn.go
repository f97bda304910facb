package amqp

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Handler receives the connections a Server accepts.
type Handler interface {
	// Open is called once a connection is open (protocol header, SASL,
	// open frames). It returns the handler of the connection's links, or
	// an error (an *Error to choose the condition) to close it.
	Open(c *Conn) (LinkHandler, error)
}

// LinkHandler receives the links and messages of one connection.
type LinkHandler interface {
	// Attach is called when the peer attaches a link. An error (an *Error
	// to choose the condition) refuses the link.
	Attach(l *Link) error
	// Message is called on its own goroutine for each message the peer
	// sends. The delivery is accepted when Message returns unless it was
	// settled before (Accept, Reject). The number of messages in flight
	// on a link is bounded by the credit the server grants.
	Message(ctx context.Context, d *Delivery)
	// Detach is called when a link ends.
	Detach(l *Link)
	// Close is called once when the connection ends.
	Close(err error)
}

// Options configure a Server. Zero values take the defaults.
type Options struct {
	Handler Handler
	// SASL lists the mechanisms offered, in order of preference. With
	// none, the server accepts only peers that skip SASL.
	SASL []SASLServer
	// AllowNoSASL accepts peers that send the plain AMQP header without
	// a SASL layer (devices that authenticate by TLS client certificate).
	AllowNoSASL bool
	// ContainerID is the server's container id; default "dpsd".
	ContainerID string
	// MaxFrameSize bounds the frames the server reads; default 64 KiB.
	MaxFrameSize uint32
	// MaxMessageSize bounds one incoming message; default 256 KiB.
	MaxMessageSize uint64
	// MaxSessions bounds the sessions of one connection; default 4.
	MaxSessions int
	// MaxLinks bounds the links of one session; default 8.
	MaxLinks int
	// LinkCredit is the credit granted to each link the peer sends on:
	// the bound of its messages in flight; default 8.
	LinkCredit uint32
	// HandshakeTimeout bounds the protocol headers, SASL and the open
	// exchange; default 30 s.
	HandshakeTimeout time.Duration
	// IdleTimeout is announced in the open frame: a peer that sends
	// nothing for this long is disconnected; default 2 min.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write; default 30 s.
	WriteTimeout time.Duration
	Logger       *slog.Logger
}

// Server serves AMQP 1.0 connections.
type Server struct {
	opts Options
}

// NewServer returns a server with opts, defaults filled in.
func NewServer(opts Options) *Server {
	if opts.ContainerID == "" {
		opts.ContainerID = "dpsd"
	}
	if opts.MaxFrameSize < minMaxFrameSize {
		opts.MaxFrameSize = 64 << 10
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = 256 << 10
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 4
	}
	if opts.MaxLinks <= 0 {
		opts.MaxLinks = 8
	}
	if opts.LinkCredit == 0 {
		opts.LinkCredit = 8
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 30 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 2 * time.Minute
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Server{opts: opts}
}

// sessionWindow is the incoming window granted to each session; it is
// topped up whenever it falls to half.
const sessionWindow = 1024

// Conn is one AMQP connection.
type Conn struct {
	s      *Server
	nc     net.Conn
	br     *bufio.Reader
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	saslName Symbol
	sasl     SASLMechanism
	hostname string
	// remoteMaxFrame and remoteIdle are the peer's open values.
	remoteMaxFrame uint32
	remoteIdle     time.Duration
	handler        LinkHandler

	wmu sync.Mutex // serializes writes and guards wbuf and hold
	// wbuf collects frames while hold is set: the read loop holds
	// writes while it handles a frame and while more whole frames are
	// buffered, so that the answers to a batch of frames (an attach and
	// its flow, say) leave in one write. Writes from other goroutines
	// flush whatever is pending.
	wbuf []byte
	hold bool

	mu       sync.Mutex
	sessions map[uint16]*session
	closed   bool
	wg       sync.WaitGroup // message handlers
}

type session struct {
	channel              uint16
	nextIncomingID       uint32
	incomingWindow       uint32
	nextOutgoingID       uint32
	remoteIncomingWindow uint32
	nextDeliveryID       uint32
	links                map[uint32]*Link
	// refused are the handles of links the server refused or detached
	// (Link.Detach): the peer's answering detach ends them.
	refused map[uint32]bool
	// awaiting are the server's unsettled deliveries whose outcome a
	// sender waits for (SendUnsettled), by delivery id.
	awaiting map[uint32]awaited
}

// awaited is an unsettled delivery's sender waiting for its outcome.
type awaited struct {
	link *Link
	ch   chan Outcome
}

// Link is one attached link. The peer's role decides what the server
// does on it: it receives messages on links the peer sends on, and sends
// with Send on links the peer receives on.
type Link struct {
	conn *Conn
	sess *session
	// Name is the link name the peer chose.
	Name   string
	handle uint32
	// PeerIsSender reports whether the peer sends on this link.
	PeerIsSender bool
	// Address is the target address (peer sends) or source address (peer
	// receives).
	Address string
	// Properties are the peer's attach properties.
	Properties *Map
	// Filter is the filter set of the source of a link the peer receives
	// on (an Event Hubs receiver's selector filter), nil if none.
	Filter *Map

	sndSettle     uint8
	peerMaxMsg    uint64 // the peer's max-message-size; 0 for none
	credit        uint32
	deliveryCount uint32
	detached      bool
	creditCh      chan struct{} // signalled when credit may have arrived
	gone          chan struct{} // closed when the link ends

	// the delivery being received in several transfer frames
	partial     []byte
	partialID   uint32
	partialOpen bool
	partialSet  bool // settled by the sender
}

// Conn returns the connection of l.
func (l *Link) Conn() *Conn { return l.conn }

// Delivery is one message the peer sent.
type Delivery struct {
	Link    *Link
	Message *Message
	id      uint32
	settled bool // by the sender (pre-settled) or by us
	mu      sync.Mutex
}

// Accept settles the delivery as accepted.
func (d *Delivery) Accept() error { return d.settle(accepted{}) }

// Reject settles the delivery as rejected with e.
func (d *Delivery) Reject(e *Error) error { return d.settle(rejected{Error: e}) }

func (d *Delivery) settle(state marshaler) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return nil
	}
	d.settled = true
	return d.Link.conn.writeFrame(d.Link.sess.channel, &disposition{Role: roleReceiver, First: d.id, Settled: true, State: state}, nil)
}

// NetConn returns the underlying connection (for TLS state and addresses).
func (c *Conn) NetConn() net.Conn { return c.nc }

// SASL returns the mechanism name and the finished mechanism the peer
// authenticated with, or "" and nil when it skipped SASL.
func (c *Conn) SASL() (Symbol, SASLMechanism) { return c.saslName, c.sasl }

// Context is the connection's context: it carries the values of the
// context given to ServeConn and ends with the connection.
func (c *Conn) Context() context.Context { return c.ctx }

// Hostname is the host name the peer named in its open frame.
func (c *Conn) Hostname() string { return c.hostname }

// ServeConn serves one connection until it ends or ctx is done, then
// closes nc. TLS, if any, must already be set up (the handshake may still
// be pending: it runs on the first read under the handshake timeout).
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	c := &Conn{
		s: s, nc: nc, br: bufio.NewReaderSize(nc, 4096),
		log:      s.opts.Logger.With("remote", nc.RemoteAddr().String()),
		ctx:      ctx,
		cancel:   cancel,
		sessions: make(map[uint16]*session),
	}
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		// Shutdown: tell the peer, then unblock the read loop.
		c.closeWith(&Error{Condition: ErrConnectionForced, Description: "the server is shutting down"})
	})
	defer stop()
	err := c.serve()
	c.shutdown(err)
	return err
}

func (c *Conn) serve() error {
	o := &c.s.opts
	if err := c.nc.SetDeadline(time.Now().Add(o.HandshakeTimeout)); err != nil {
		return err
	}
	id, err := readHeader(c.br)
	if err != nil {
		c.rawWrite(header(c.preferredProto()))
		return fmt.Errorf("amqp: protocol header: %w", err)
	}
	switch {
	case id == protoSASL && len(o.SASL) > 0:
		rw := struct {
			io.Reader
			io.Writer
		}{c.br, c.nc}
		name, mech, err := negotiateSASL(rw, o.SASL)
		c.saslName = name
		if err != nil {
			return fmt.Errorf("amqp: SASL %s: %w", name, err)
		}
		c.sasl = mech
		if id, err = readHeader(c.br); err != nil || id != protoAMQP {
			c.rawWrite(header(protoAMQP))
			return fmt.Errorf("amqp: protocol header after SASL: id %d: %v", id, err)
		}
	case id == protoAMQP && o.AllowNoSASL:
	default:
		c.rawWrite(header(c.preferredProto()))
		return fmt.Errorf("amqp: protocol id %d not accepted", id)
	}
	if !c.rawWrite(header(protoAMQP)) {
		return errors.New("amqp: writing the protocol header failed")
	}

	f, err := readFrame(c.br, o.MaxFrameSize)
	if err != nil {
		return fmt.Errorf("amqp: reading open: %w", err)
	}
	ours := &open{
		ContainerID:  o.ContainerID,
		MaxFrameSize: o.MaxFrameSize,
		ChannelMax:   uint16(o.MaxSessions - 1),
		IdleTimeout:  uint32(o.IdleTimeout / time.Millisecond),
	}
	// A close must follow an open (part 2, 2.4.1), so the refusals below
	// send the server's open first.
	of, err := fieldsOf(f.Performative, descOpen)
	if err != nil || f.Type != frameAMQP {
		_ = c.writeFrame(0, ours, nil)
		c.closeWith(&Error{Condition: ErrIllegalState, Description: "the first frame must be open"})
		return fmt.Errorf("amqp: first frame is not open: %v", err)
	}
	op, err := decodeOpen(of)
	if err != nil {
		_ = c.writeFrame(0, ours, nil)
		c.closeWith(&Error{Condition: ErrDecode, Description: err.Error()})
		return err
	}
	c.hostname = op.Hostname
	c.remoteMaxFrame = max(op.MaxFrameSize, minMaxFrameSize)
	c.remoteIdle = time.Duration(op.IdleTimeout) * time.Millisecond
	if err := c.writeFrame(0, ours, nil); err != nil {
		return err
	}
	h, err := o.Handler.Open(c)
	if err != nil {
		c.closeWith(asError(err, ErrUnauthorized))
		return err
	}
	c.handler = h
	if c.remoteIdle > 0 {
		// Half the peer's idle time-out, within bounds: a peer asking
		// for a heartbeat every millisecond does not get one.
		go c.heartbeat(min(max(c.remoteIdle/2, 100*time.Millisecond), time.Minute))
	}
	_ = c.nc.SetWriteDeadline(time.Time{})
	for {
		if err := c.nc.SetReadDeadline(time.Now().Add(o.IdleTimeout)); err != nil {
			return err
		}
		f, err := readFrame(c.br, o.MaxFrameSize)
		if err != nil {
			if errors.Is(err, ErrMalformed) {
				c.closeWith(&Error{Condition: ErrFramingError, Description: err.Error()})
			}
			return err
		}
		c.setHold(true)
		done, err := c.handle(f)
		if done || err != nil || !c.frameBuffered() {
			if ferr := c.release(); ferr != nil && err == nil {
				return ferr
			}
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = &Error{Condition: ErrDecode, Description: err.Error()}
			}
			c.closeWith(e)
			return err
		}
		if done {
			return nil
		}
	}
}

func (c *Conn) preferredProto() byte {
	if len(c.s.opts.SASL) > 0 {
		return protoSASL
	}
	return protoAMQP
}

// asError returns err as an *Error, or one with condition cond.
func asError(err error, cond Symbol) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Condition: cond, Description: err.Error()}
}

func (c *Conn) heartbeat(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			if err := c.writeFrame(0, nil, nil); err != nil {
				return
			}
		}
	}
}

// rawWrite writes b (a protocol header) under the write deadline.
func (c *Conn) rawWrite(b []byte) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = append(c.wbuf, b...)
	return c.flushLocked() == nil
}

// writeFrame writes one AMQP frame, or queues it while the read loop
// holds writes; p nil writes a heartbeat.
func (c *Conn) writeFrame(channel uint16, p marshaler, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b, err := appendFrame(c.wbuf, frameAMQP, channel, p, payload)
	if err != nil {
		return err
	}
	c.wbuf = b
	if c.hold {
		return nil
	}
	return c.flushLocked()
}

// flushLocked writes the pending frames; c.wmu is held.
func (c *Conn) flushLocked() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
	_, err := c.nc.Write(c.wbuf)
	if cap(c.wbuf) > 64<<10 {
		c.wbuf = nil // do not keep a large message's buffer
	} else {
		c.wbuf = c.wbuf[:0]
	}
	return err
}

func (c *Conn) setHold(h bool) {
	c.wmu.Lock()
	c.hold = h
	c.wmu.Unlock()
}

// release ends a hold and writes what it kept.
func (c *Conn) release() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hold = false
	return c.flushLocked()
}

// frameBuffered reports whether a whole frame is already read into the
// buffer, so that handling it will not wait for the network.
func (c *Conn) frameBuffered() bool {
	n := c.br.Buffered()
	if n < 8 {
		return false
	}
	h, err := c.br.Peek(4)
	return err == nil && uint64(n) >= uint64(binary.BigEndian.Uint32(h))
}

// closeWith sends close with e (best effort) once.
func (c *Conn) closeWith(e *Error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	_ = c.writeFrame(0, &closeFrame{Error: e}, nil)
	_ = c.release()
	// Unblock the read loop; the peer's close, if any, is not awaited.
	_ = c.nc.SetReadDeadline(time.Now())
}

func (c *Conn) shutdown(err error) {
	c.cancel()
	c.nc.Close()
	c.mu.Lock()
	var links []*Link
	for _, s := range c.sessions {
		for _, l := range s.links {
			l.markGone()
			links = append(links, l)
		}
	}
	c.sessions = map[uint16]*session{}
	c.mu.Unlock()
	for _, l := range links {
		l.signal()
	}
	c.wg.Wait()
	if c.handler != nil {
		for _, l := range links {
			c.handler.Detach(l)
		}
		c.handler.Close(err)
	}
}

func protoErr(cond Symbol, format string, args ...any) *Error {
	return &Error{Condition: cond, Description: fmt.Sprintf(format, args...)}
}

// handle processes one frame; done reports a closed connection.
func (c *Conn) handle(f *frame) (done bool, err error) {
	if f.Performative == nil {
		return false, nil // heartbeat
	}
	if f.Type != frameAMQP {
		return false, protoErr(ErrIllegalState, "SASL frame on an open connection")
	}
	code, _ := descriptorCode(f.Performative)
	fl, err := fieldsOf(f.Performative, code)
	if err != nil {
		return false, err
	}
	if code == descClose {
		c.mu.Lock()
		already := c.closed
		c.closed = true
		c.mu.Unlock()
		if !already {
			_ = c.writeFrame(0, &closeFrame{}, nil)
		}
		return true, nil
	}
	if code == descBegin {
		return false, c.onBegin(f.Channel, fl)
	}
	c.mu.Lock()
	s := c.sessions[f.Channel]
	c.mu.Unlock()
	if s == nil {
		return false, protoErr(ErrIllegalState, "frame 0x%02x on channel %d without a session", code, f.Channel)
	}
	switch code {
	case descAttach:
		return false, c.onAttach(s, fl)
	case descFlow:
		return false, c.onFlow(s, fl)
	case descTransfer:
		return false, c.onTransfer(s, fl, f.Payload)
	case descDisposition:
		return false, c.onDisposition(s, fl)
	case descDetach:
		return false, c.onDetach(s, fl)
	case descEnd:
		c.endSession(s)
		return false, c.writeFrame(s.channel, &end{}, nil)
	case descOpen:
		return false, protoErr(ErrIllegalState, "second open")
	}
	return false, protoErr(ErrNotImplemented, "performative 0x%02x", code)
}

func (c *Conn) onBegin(channel uint16, fl fields) error {
	b, err := decodeBegin(fl)
	if err != nil {
		return err
	}
	if b.RemoteChannel != nil {
		return protoErr(ErrIllegalState, "begin answering a session the server did not begin")
	}
	c.mu.Lock()
	if _, ok := c.sessions[channel]; ok {
		c.mu.Unlock()
		return protoErr(ErrIllegalState, "channel %d already has a session", channel)
	}
	if int(channel) >= c.s.opts.MaxSessions {
		c.mu.Unlock()
		return protoErr(ErrResourceLimit, "channel %d beyond channel-max %d", channel, c.s.opts.MaxSessions-1)
	}
	s := &session{
		channel:              channel,
		nextIncomingID:       b.NextOutgoingID,
		incomingWindow:       sessionWindow,
		remoteIncomingWindow: b.IncomingWindow,
		links:                make(map[uint32]*Link),
		awaiting:             make(map[uint32]awaited),
	}
	c.sessions[channel] = s
	c.mu.Unlock()
	rc := channel
	return c.writeFrame(channel, &begin{
		RemoteChannel:  &rc,
		NextOutgoingID: 0,
		IncomingWindow: sessionWindow,
		OutgoingWindow: sessionWindow,
		HandleMax:      uint32(c.s.opts.MaxLinks - 1),
	}, nil)
}

func (c *Conn) endSession(s *session) {
	c.mu.Lock()
	delete(c.sessions, s.channel)
	links := make([]*Link, 0, len(s.links))
	for _, l := range s.links {
		l.markGone()
		links = append(links, l)
	}
	s.links = map[uint32]*Link{}
	c.mu.Unlock()
	for _, l := range links {
		l.signal()
		c.handler.Detach(l)
	}
}

func (c *Conn) onAttach(s *session, fl fields) error {
	a, err := decodeAttach(fl)
	if err != nil {
		return err
	}
	c.mu.Lock()
	_, inUse := s.links[a.Handle]
	delete(s.refused, a.Handle)
	c.mu.Unlock()
	if inUse {
		return protoErr(ErrHandleInUse, "handle %d is in use", a.Handle)
	}
	if a.Handle >= uint32(c.s.opts.MaxLinks) {
		return protoErr(ErrResourceLimit, "handle %d beyond handle-max %d", a.Handle, c.s.opts.MaxLinks-1)
	}
	l := &Link{
		conn: c, sess: s, Name: a.Name, handle: a.Handle,
		PeerIsSender:  !a.Role, // false is the sender role
		Properties:    a.Properties,
		sndSettle:     a.SndSettleMode,
		peerMaxMsg:    a.MaxMessageSize,
		deliveryCount: a.InitialDeliveryCount,
		creditCh:      make(chan struct{}, 1),
		gone:          make(chan struct{}),
	}
	if l.PeerIsSender {
		if a.Target != nil {
			l.Address = a.Target.Address
		}
	} else if a.Source != nil {
		l.Address = a.Source.Address
		l.Filter = a.Source.Filter
	}
	reply := &attach{
		Name: a.Name, Handle: a.Handle, Role: !a.Role,
		SndSettleMode: a.SndSettleMode, RcvSettleMode: a.RcvSettleMode,
		Source: a.Source, Target: a.Target,
	}
	if l.PeerIsSender {
		reply.MaxMessageSize = c.s.opts.MaxMessageSize
		l.deliveryCount = a.InitialDeliveryCount
	} else {
		l.deliveryCount = 0
	}
	if herr := c.handler.Attach(l); herr != nil {
		// Refusing a link: attach without the terminus the peer asked
		// for, then detach with the reason (part 2, 2.6.3).
		if l.PeerIsSender {
			reply.Target = nil
		} else {
			reply.Source = nil
		}
		if err := c.writeFrame(s.channel, reply, nil); err != nil {
			return err
		}
		c.mu.Lock()
		if s.refused == nil {
			s.refused = map[uint32]bool{}
		}
		s.refused[a.Handle] = true
		c.mu.Unlock()
		return c.writeFrame(s.channel, &detach{Handle: a.Handle, Closed: true, Error: asError(herr, ErrNotFound)}, nil)
	}
	c.mu.Lock()
	s.links[a.Handle] = l
	c.mu.Unlock()
	if err := c.writeFrame(s.channel, reply, nil); err != nil {
		return err
	}
	if l.PeerIsSender {
		c.mu.Lock()
		l.credit = c.s.opts.LinkCredit
		c.mu.Unlock()
		return c.sendLinkFlow(l)
	}
	return nil
}

// sendLinkFlow tells the peer the credit of a link it sends on, with the
// session's window.
func (c *Conn) sendLinkFlow(l *Link) error {
	c.mu.Lock()
	s := l.sess
	s.incomingWindow = sessionWindow
	nid, dc, cr, h := s.nextIncomingID, l.deliveryCount, l.credit, l.handle
	fr := &flow{
		NextIncomingID: &nid, IncomingWindow: s.incomingWindow,
		NextOutgoingID: s.nextOutgoingID, OutgoingWindow: sessionWindow,
		Handle: &h, DeliveryCount: &dc, LinkCredit: &cr,
	}
	c.mu.Unlock()
	return c.writeFrame(s.channel, fr, nil)
}

func (c *Conn) sendSessionFlow(s *session) error {
	c.mu.Lock()
	s.incomingWindow = sessionWindow
	nid := s.nextIncomingID
	fr := &flow{NextIncomingID: &nid, IncomingWindow: s.incomingWindow, NextOutgoingID: s.nextOutgoingID, OutgoingWindow: sessionWindow}
	c.mu.Unlock()
	return c.writeFrame(s.channel, fr, nil)
}

func (c *Conn) onFlow(s *session, fl fields) error {
	f, err := decodeFlow(fl)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if f.NextIncomingID != nil {
		s.remoteIncomingWindow = *f.NextIncomingID + f.IncomingWindow - s.nextOutgoingID
	} else {
		s.remoteIncomingWindow = f.IncomingWindow
	}
	var l *Link
	if f.Handle != nil {
		l = s.links[*f.Handle]
		if l == nil {
			c.mu.Unlock()
			return protoErr(ErrUnattachedHandle, "flow for handle %d", *f.Handle)
		}
		if !l.PeerIsSender && f.LinkCredit != nil {
			// Part 2, 2.6.7: credit = delivery-count(peer) + link-credit - our delivery-count.
			dc := l.deliveryCount
			if f.DeliveryCount != nil {
				dc = *f.DeliveryCount
			}
			l.credit = dc + *f.LinkCredit - l.deliveryCount
			if f.Drain {
				// Nothing is queued on the server's side: use up the
				// credit and say so.
				l.deliveryCount += l.credit
				l.credit = 0
			}
		}
	}
	echo := f.Echo || (l != nil && f.Drain)
	c.mu.Unlock()
	if l != nil {
		l.signal()
		if echo {
			return c.sendLinkFlow(l)
		}
	} else if f.Echo {
		return c.sendSessionFlow(s)
	}
	return nil
}

func (l *Link) signal() {
	select {
	case l.creditCh <- struct{}{}:
	default:
	}
}

func (c *Conn) onTransfer(s *session, fl fields, payload []byte) error {
	t, err := decodeTransfer(fl)
	if err != nil {
		return err
	}
	c.mu.Lock()
	l := s.links[t.Handle]
	if l == nil || !l.PeerIsSender {
		c.mu.Unlock()
		return protoErr(ErrUnattachedHandle, "transfer on handle %d", t.Handle)
	}
	if s.incomingWindow == 0 {
		c.mu.Unlock()
		return protoErr(ErrWindowViolation, "transfer beyond the session's incoming window")
	}
	s.nextIncomingID++
	s.incomingWindow--
	lowWindow := s.incomingWindow < sessionWindow/2
	if !l.partialOpen {
		if l.credit == 0 {
			c.mu.Unlock()
			return protoErr(ErrTransferLimit, "transfer without link credit")
		}
		if t.DeliveryID == nil {
			c.mu.Unlock()
			return protoErr(ErrInvalidField, "first transfer of a delivery without a delivery-id")
		}
		l.credit--
		l.deliveryCount++
		l.partialOpen, l.partialID, l.partial = true, *t.DeliveryID, nil
	}
	l.partialSet = l.partialSet || t.Settled
	if uint64(len(l.partial))+uint64(len(payload)) > c.s.opts.MaxMessageSize {
		c.mu.Unlock()
		return protoErr(ErrMessageSizeExceeded, "message larger than %d bytes", c.s.opts.MaxMessageSize)
	}
	l.partial = append(l.partial, payload...)
	if t.More && !t.Aborted {
		c.mu.Unlock()
		if lowWindow {
			return c.sendSessionFlow(s)
		}
		return nil
	}
	body, id, settled := l.partial, l.partialID, l.partialSet
	l.partial, l.partialOpen, l.partialSet = nil, false, false
	c.mu.Unlock()
	if lowWindow {
		if err := c.sendSessionFlow(s); err != nil {
			return err
		}
	}
	if t.Aborted {
		return c.replenish(l)
	}
	d := &Delivery{Link: l, id: id, settled: settled}
	m, err := UnmarshalMessage(body)
	if err != nil {
		if err := d.Reject(&Error{Condition: ErrDecode, Description: err.Error()}); err != nil {
			return err
		}
		return c.replenish(l)
	}
	d.Message = m
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.handler.Message(c.ctx, d)
		if err := d.Accept(); err != nil {
			c.log.Debug("amqp: settling a delivery failed", "err", err)
		}
		if err := c.replenish(l); err != nil {
			c.log.Debug("amqp: granting credit failed", "err", err)
		}
	}()
	return nil
}

// replenish gives back the credit one finished delivery used.
func (c *Conn) replenish(l *Link) error {
	c.mu.Lock()
	if l.detached {
		c.mu.Unlock()
		return nil
	}
	l.credit++
	c.mu.Unlock()
	return c.sendLinkFlow(l)
}

func (c *Conn) onDetach(s *session, fl fields) error {
	d, err := decodeDetach(fl)
	if err != nil {
		return err
	}
	c.mu.Lock()
	l := s.links[d.Handle]
	delete(s.links, d.Handle)
	if l != nil {
		l.markGone()
	}
	refused := s.refused[d.Handle]
	delete(s.refused, d.Handle)
	c.mu.Unlock()
	if l == nil && refused {
		return nil // the peer's answer to the server's refusal
	}
	if l == nil {
		return protoErr(ErrUnattachedHandle, "detach of handle %d", d.Handle)
	}
	l.signal()
	c.handler.Detach(l)
	return c.writeFrame(s.channel, &detach{Handle: d.Handle, Closed: true}, nil)
}

// ErrLinkDetached is returned by Send on a link that has ended.
var ErrLinkDetached = errors.New("amqp: link detached")

// Send sends m on l, which must be a link the peer receives on. It waits,
// until ctx ends, for the peer to grant credit.
func (l *Link) Send(ctx context.Context, m *Message) error { return l.send(ctx, m, nil, nil) }

// Outcome is how the peer settled a delivery the server sent (part 3,
// 3.4).
type Outcome int

// The outcomes of a delivery.
const (
	OutcomeAccepted Outcome = iota + 1
	OutcomeRejected
	OutcomeReleased
	OutcomeModified
)

func (o Outcome) String() string {
	switch o {
	case OutcomeAccepted:
		return "accepted"
	case OutcomeRejected:
		return "rejected"
	case OutcomeReleased:
		return "released"
	case OutcomeModified:
		return "modified"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// SendUnsettled sends m on l unsettled, whatever the link's settle mode,
// and returns once it is written (waiting, until ctx ends, for credit).
// The peer's outcome arrives on the returned channel when it settles the
// delivery; a delivery the peer has not settled when the link ends (see
// Done) gets none. IoT Hub's cloud-to-device messages are sent so: the
// device completes, rejects or abandons each.
func (l *Link) SendUnsettled(ctx context.Context, m *Message) (<-chan Outcome, error) {
	ch := make(chan Outcome, 1)
	if err := l.send(ctx, m, nil, ch); err != nil {
		return nil, err
	}
	return ch, nil
}

// Done is closed when the link ends (detached, its session or connection
// ended).
func (l *Link) Done() <-chan struct{} { return l.gone }

// markGone records that l ended and drops the outcomes its unsettled
// deliveries still wait for; c.mu is held.
func (l *Link) markGone() {
	if l.detached {
		return
	}
	l.detached = true
	close(l.gone)
	for id, w := range l.sess.awaiting {
		if w.link == l {
			delete(l.sess.awaiting, id)
		}
	}
}

// onDisposition passes the peer's outcomes of the server's unsettled
// deliveries to their senders; a peer that did not settle (receiver
// settle mode second) gets the server's settlement.
func (c *Conn) onDisposition(s *session, fl fields) error {
	d, err := decodeDisposition(fl)
	if err != nil {
		return err
	}
	if !d.Role { // roleSender: the peer settling its own deliveries
		return nil
	}
	o := outcomeOf(d.State)
	if o == 0 {
		return nil // no terminal outcome yet (received, or none)
	}
	last := d.First
	if d.Last != nil && *d.Last >= d.First && *d.Last-d.First < 1<<16 {
		last = *d.Last
	}
	c.mu.Lock()
	for id := d.First; ; id++ {
		if w, ok := s.awaiting[id]; ok {
			delete(s.awaiting, id)
			w.ch <- o
		}
		if id == last {
			break
		}
	}
	c.mu.Unlock()
	if !d.Settled {
		return c.writeFrame(s.channel, &disposition{Role: roleSender, First: d.First, Last: d.Last, Settled: true, State: d.State}, nil)
	}
	return nil
}

// outcomeOf reads a delivery state; 0 for none or a non-terminal one.
func outcomeOf(state any) Outcome {
	code, ok := descriptorCode(state)
	if !ok {
		return 0
	}
	switch code {
	case descAccepted:
		return OutcomeAccepted
	case descRejected:
		return OutcomeRejected
	case descReleased:
		return OutcomeReleased
	case descModified:
		return OutcomeModified
	}
	return 0
}

// AcceptAndSend settles d as accepted and sends the answer m on l, in one
// write when l has credit; otherwise d is settled at once and m follows
// when the credit comes. The settlement always precedes the answer on
// the wire, as request/response peers expect. If the answer cannot be
// sent, d is still accepted.
func (d *Delivery) AcceptAndSend(ctx context.Context, l *Link, m *Message) error {
	err := l.send(ctx, m, d, nil)
	if err != nil {
		_ = d.Accept()
	}
	return err
}

// send sends m; with await set, unsettled, its outcome going to await.
func (l *Link) send(ctx context.Context, m *Message, settle *Delivery, await chan Outcome) error {
	if l.PeerIsSender {
		return errors.New("amqp: Send on a link the peer sends on")
	}
	body, err := MarshalMessage(m)
	if err != nil {
		return err
	}
	if l.peerMaxMsg > 0 && uint64(len(body)) > l.peerMaxMsg {
		return fmt.Errorf("amqp: message of %d bytes exceeds the peer's maximum of %d", len(body), l.peerMaxMsg)
	}
	c := l.conn
	// Split the message into frames the peer accepts.
	perFrame := int(min(c.remoteMaxFrame, c.s.opts.MaxFrameSize)) - 256
	nframes := uint32(max(1, (len(body)+perFrame-1)/perFrame))
	for {
		c.mu.Lock()
		if l.detached {
			c.mu.Unlock()
			return ErrLinkDetached
		}
		if l.credit > 0 && l.sess.remoteIncomingWindow >= nframes {
			break
		}
		c.mu.Unlock()
		if settle != nil {
			// Settle now rather than after the credit: a peer may
			// grant credit only once its request is settled (Qpid
			// Proton's blocking client does).
			if err := settle.Accept(); err != nil {
				return err
			}
			settle = nil
		}
		select {
		case <-l.creditCh:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrLinkDetached
		}
	}
	s := l.sess
	id := s.nextDeliveryID
	s.nextDeliveryID++
	s.nextOutgoingID += nframes
	s.remoteIncomingWindow -= nframes
	l.credit--
	l.deliveryCount++
	settled := l.sndSettle != SenderSettleUnsettled
	if await != nil {
		settled = false
		s.awaiting[id] = awaited{link: l, ch: await}
	}
	c.mu.Unlock()

	tag := []byte(fmt.Sprintf("%d", id))
	format := uint32(0)
	// Frames of one message must not interleave with other frames on
	// the session's link, so they are written under one lock, in one
	// write with whatever else is pending.
	if settle != nil {
		settle.mu.Lock()
		defer settle.mu.Unlock()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if settle != nil && !settle.settled {
		settle.settled = true
		b, err := appendFrame(c.wbuf, frameAMQP, settle.Link.sess.channel,
			&disposition{Role: roleReceiver, First: settle.id, Settled: true, State: accepted{}}, nil)
		if err != nil {
			return err
		}
		c.wbuf = b
	}
	for i := uint32(0); i < nframes; i++ {
		chunk := body
		if len(chunk) > perFrame {
			chunk = chunk[:perFrame]
		}
		body = body[len(chunk):]
		t := &transfer{Handle: l.handle, Settled: settled, More: i+1 < nframes}
		if i == 0 {
			t.DeliveryID, t.DeliveryTag, t.MessageFormat = &id, tag, &format
		}
		b, err := appendFrame(c.wbuf, frameAMQP, s.channel, t, chunk)
		if err != nil {
			return err
		}
		c.wbuf = b
	}
	return c.flushLocked()
}

// WaitCredit waits until the peer grants credit on l, a link it receives
// on, or until ctx ends or the link does.
func (l *Link) WaitCredit(ctx context.Context) error {
	c := l.conn
	for {
		c.mu.Lock()
		detached, credit := l.detached, l.credit
		c.mu.Unlock()
		switch {
		case detached:
			return ErrLinkDetached
		case credit > 0:
			return nil
		}
		select {
		case <-l.creditCh:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrLinkDetached
		}
	}
}

// Detach ends l from the server's side with e (nil for none): the peer's
// answering detach is expected, and the handler's Detach is called.
func (l *Link) Detach(e *Error) error {
	c := l.conn
	s := l.sess
	c.mu.Lock()
	if l.detached || s.links[l.handle] != l {
		c.mu.Unlock()
		return ErrLinkDetached
	}
	l.detached = true
	delete(s.links, l.handle)
	if s.refused == nil {
		s.refused = map[uint32]bool{}
	}
	s.refused[l.handle] = true
	c.mu.Unlock()
	l.signal()
	err := c.writeFrame(s.channel, &detach{Handle: l.handle, Closed: true, Error: e}, nil)
	c.handler.Detach(l)
	return err
}
