// Package connlimit caps the connections a node holds open, in total and
// per source address, across all of its listeners: what one client may
// take, and what all of them together may take before the process runs
// out of file descriptors and stops serving everyone.
package connlimit

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Defaults for New.
const (
	// DefaultMaxTotal is the cap on open connections, lowered to three
	// quarters of the process's open-file limit when that is smaller: the
	// rest is for the store, webhooks and hubs.
	DefaultMaxTotal = 10000
	// DefaultMaxPerSource is the cap per source address: far above what
	// one device, or a gateway provisioning many, keeps open at once.
	DefaultMaxPerSource = 512
)

// logEvery spaces the log lines of a cap that keeps being hit.
const logEvery = time.Minute

// Limiter counts the open connections of every listener it wraps. It is
// safe for concurrent use.
type Limiter struct {
	maxTotal, maxPerSource int
	log                    *slog.Logger

	mu      sync.Mutex
	total   int
	sources map[string]int
	refused int       // since the last log line
	logged  time.Time // of the last log line
}

// New returns a Limiter of at most maxTotal connections, maxPerSource from
// one address. Zero means the default; a negative value, no cap.
func New(maxTotal, maxPerSource int, log *slog.Logger) *Limiter {
	if maxTotal == 0 {
		maxTotal = min(DefaultMaxTotal, fileLimit()*3/4)
	}
	if maxPerSource == 0 {
		maxPerSource = DefaultMaxPerSource
	}
	if log == nil {
		log = slog.Default()
	}
	return &Limiter{maxTotal: maxTotal, maxPerSource: maxPerSource, log: log, sources: make(map[string]int)}
}

// MaxTotal is the cap in force on all connections (negative: none).
func (l *Limiter) MaxTotal() int { return l.maxTotal }

// MaxPerSource is the cap in force per source address (negative: none).
func (l *Limiter) MaxPerSource() int { return l.maxPerSource }

// Listener returns inner with its connections counted. A connection over
// a cap is closed as soon as it is accepted, before any TLS or protocol
// work is spent on it; name says which listener in the log.
func (l *Limiter) Listener(inner net.Listener, name string) net.Listener {
	return &listener{Listener: inner, l: l, name: name}
}

type listener struct {
	net.Listener
	l    *Limiter
	name string
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := source(c.RemoteAddr())
		if ln.l.acquire(src, ln.name) {
			return &conn{Conn: c, l: ln.l, src: src}, nil
		}
		c.Close()
	}
}

func source(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

func (l *Limiter) acquire(src, name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var which string
	var limit int
	switch {
	case l.maxTotal >= 0 && l.total >= l.maxTotal:
		which, limit = "total", l.maxTotal
	case l.maxPerSource >= 0 && l.sources[src] >= l.maxPerSource:
		which, limit = "per source address", l.maxPerSource
	default:
		l.total++
		l.sources[src]++
		return true
	}
	l.refused++
	if now := time.Now(); now.Sub(l.logged) >= logEvery {
		l.log.Warn("connection cap reached: refusing new connections",
			"cap", which, "limit", limit, "listener", name, "source", src,
			"refusedSinceLastLine", l.refused)
		l.logged, l.refused = now, 0
	}
	return false
}

func (l *Limiter) release(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.sources[src]--; l.sources[src] <= 0 {
		delete(l.sources, src)
	}
}

// Open returns the number of open connections, in total and from src.
func (l *Limiter) Open(src string) (total, fromSource int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.sources[src]
}

type conn struct {
	net.Conn
	l    *Limiter
	src  string
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

// Accept waits for the next connection on l. A failing Accept that is not
// the listener being closed (running out of file descriptors, say) is
// usually transient: like net/http, Accept logs it and tries again after a
// backoff that doubles from 5 ms up to 1 s, instead of spinning or giving
// up. It returns an error only once l is closed. name says whose listener
// it is in the log.
func Accept(l net.Listener, log *slog.Logger, name string) (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err == nil || errors.Is(err, net.ErrClosed) {
			return c, err
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		log.Warn(name+" accept failed; retrying", "err", err, "backoff", backoff)
		time.Sleep(backoff)
	}
}
