// Package tlsmux shares one TCP listener among several TLS servers: it
// reads each connection's ClientHello, without answering it, and hands
// the connection — with the bytes it read put back — to whichever server
// the server name (SNI) belongs to. dpsd uses it to serve its built-in
// hubs on the node's own address and ports, next to the provisioning
// service.
package tlsmux

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/connlimit"
)

// maxHello bounds the bytes read while looking for the server name; a
// ClientHello is one TLS record of at most 16 KiB plus its header.
const maxHello = 16<<10 + 5

// errStop ends the look at a ClientHello once its server name is known.
var errStop = errors.New("tlsmux: server name read")

// ServerName reads the TLS ClientHello at the start of c, within timeout,
// and returns its server name ("" when there is none, or when c does not
// start with a TLS handshake) and a connection that reads the same bytes
// again from the start. Nothing is written to c.
func ServerName(c net.Conn, timeout time.Duration) (string, net.Conn) {
	name, rc, _ := peek(c, timeout)
	return name, rc
}

// peek is ServerName, and also reports whether the client sent nothing at
// all before the look ended (within timeout, or by closing).
func peek(c net.Conn, timeout time.Duration) (name string, rc net.Conn, silent bool) {
	var buf bytes.Buffer
	rec := &recorder{Conn: c, r: io.TeeReader(io.LimitReader(c, maxHello), &buf)}
	cfg := &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		name = hi.ServerName
		return nil, errStop
	}}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	_ = tls.Server(rec, cfg).HandshakeContext(ctx)
	cancel()
	_ = c.SetReadDeadline(time.Time{})
	return name, &replayConn{Conn: c, r: io.MultiReader(&buf, c)}, buf.Len() == 0
}

// recorder is the connection the throw-away TLS server sees: it reads
// through the recording reader and swallows every write (the alert that
// ends the throw-away handshake must not reach the client).
type recorder struct {
	net.Conn
	r io.Reader
}

func (c *recorder) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *recorder) Write(p []byte) (int, error) { return len(p), nil }
func (c *recorder) Close() error                { return nil }

// replayConn reads the recorded bytes, then the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Divert decides where a connection goes by its server name ("" for
// none): a non-nil function takes the connection over (and must close it,
// or give it back to the listener it is passed with Deliver); nil leaves
// it to the listener's own server.
type Divert func(serverName string) func(net.Conn, *Listener)

// Listener is a net.Listener whose Accept returns the connections Divert
// left to it.
type Listener struct {
	inner   net.Listener
	divert  Divert
	active  func() bool
	timeout time.Duration
	log     *slog.Logger
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
}

// Split starts accepting from inner. Each connection's ClientHello is read
// (within timeout) in a goroutine of its own, so a slow client delays no
// other; connections divert does not take come out of the returned
// listener's Accept. While active (when not nil) reports false, nothing
// is read: every connection goes straight to Accept.
func Split(inner net.Listener, divert Divert, active func() bool, timeout time.Duration, log *slog.Logger) *Listener {
	l := &Listener{inner: inner, divert: divert, active: active, timeout: timeout, log: log, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.run()
	return l
}

func (l *Listener) run() {
	for {
		c, err := connlimit.Accept(l.inner, l.log, "tlsmux")
		if err != nil { // closed
			l.Close()
			return
		}
		go l.route(c)
	}
}

func (l *Listener) route(c net.Conn) {
	if l.active != nil && !l.active() {
		l.Deliver(c)
		return
	}
	name, rc, silent := peek(c, l.timeout)
	if silent {
		// Nothing arrived within the handshake's bound (or the client
		// left): the TLS server behind would only wait that long again.
		c.Close()
		return
	}
	if serve := l.divert(name); serve != nil {
		serve(rc, l)
		return
	}
	l.Deliver(rc)
}

// Deliver queues c for Accept; it waits until Accept takes it, or closes
// it if the listener closes first.
func (l *Listener) Deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next connection not diverted.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes the inner listener.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		err = l.inner.Close()
		close(l.done)
	})
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Prepend returns a connection that reads b, then c: a connection whose
// first bytes were read to decide where it goes.
func Prepend(c net.Conn, b []byte) net.Conn {
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(b), c)}
}

// TLSReplayConn is a server-side TLS connection whose first bytes, read
// to decide where it goes, are read again; it still answers for its TLS
// state.
type TLSReplayConn struct {
	*tls.Conn
	r io.Reader
}

// PrependTLS returns tc reading b first.
func PrependTLS(tc *tls.Conn, b []byte) *TLSReplayConn {
	return &TLSReplayConn{Conn: tc, r: io.MultiReader(bytes.NewReader(b), tc)}
}

func (c *TLSReplayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
